"""The boxes row: every box sharing the job store, and the whole queue (issue #21).

Present only when the rules say ``jobs.store: postgres`` (``layout``): with a store
of one box these series do not exist and the panels would say "No data". Every box
exports every box's series, so each query takes the highest per ``box`` over the
selected instances (any one instance scraped shows the whole system). Built like
``panels`` (a function of the config per panel, placed by ``layout``).
"""

from __future__ import annotations

from gatekeeper.config import Config
from gatekeeper.observability.dashboard.grafana import Panel, dashed, timeseries
from gatekeeper.observability.dashboard.promql import gauge, sel

STALE_ALERT = "GatekeeperBoxHeartbeatStale"


def _stale_after(config: Config) -> float | None:
    """The heartbeat age the stale-box alert fires above (jobs.lease by default)."""
    rule = next((r for r in config.alerts.rules if r.alert == STALE_ALERT), None)
    return None if rule is None else rule.threshold


def heartbeat_age(config: Config) -> Panel:
    limit = _stale_after(config)
    steps = ((None, "green"), (limit, "red")) if limit is not None else ()
    return timeseries(
        "Heartbeat age per box",
        "Seconds since each box sharing the job store last stamped its heartbeat (boxes.seen,"
        " on the database's clock; each box stamps every second). Above jobs.lease the box "
        "counts as dead: its running jobs are taken over (alert GatekeeperBoxHeartbeatStale).",
        [(f"max by (box) (gatekeeper_box_heartbeat_age_seconds{sel()})", "{{box}}")],
        unit="s",
        custom={"thresholdsStyle": {"mode": "dashed"}},
        steps=steps,
    )


def running_per_box(_config: Config) -> Panel:
    return timeseries(
        "Running jobs per box",
        "Which box runs how many jobs of the shared queue now (gatekeeper_box_running_jobs).",
        [(f"max by (box) (gatekeeper_box_running_jobs{sel()})", "{{box}}")],
        unit="none",
        custom={"lineInterpolation": "stepAfter"},
        decimals=0,
    )


def whole_queue(_config: Config) -> Panel:
    return timeseries(
        "The whole queue",
        "Jobs waiting in the shared queue (every box's) and running on any box; the "
        "'waiting here' line is this box's own waiting room (gatekeeper_queue_depth).",
        [
            (gauge("gatekeeper_shared_queue_depth"), "waiting (all boxes)"),
            (gauge("gatekeeper_shared_queue_running"), "running (all boxes)"),
            (gauge("gatekeeper_queue_depth"), "waiting here"),
        ],
        unit="none",
        custom={"lineInterpolation": "stepAfter"},
        decimals=0,
        overrides=[dashed("waiting here", "blue")],
    )
