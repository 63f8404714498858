"""Where the panels go (rows on a 24-column grid) and the dashboard document around them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gatekeeper.config import Config
from gatekeeper.observability.dashboard import boxes as b
from gatekeeper.observability.dashboard import panels as p
from gatekeeper.observability.dashboard import queue as q
from gatekeeper.observability.dashboard.grafana import DS, Panel

SCHEMA_VERSION = 39  # Grafana 10.4 / 11.x
UID = "gatekeeper"

# (width, height, the panel's builder): one panel's place in a row.
Cell = tuple[int, int, Callable[[Config], Panel]]

# The dashboard top to bottom: each row's title, then its panels left to right.
# A panel that does not fit the 24 columns starts a new line below the tallest.
ROWS: tuple[tuple[str, tuple[Cell, ...]], ...] = (
    (
        "Admission now",
        (
            (6, 6, p.admission),
            (6, 6, p.why_not),
            (6, 6, p.in_flight),
            (6, 6, p.engine),
            (12, 8, p.generation_elapsed),
            (6, 8, p.generation_progress),
            (6, 8, p.engines),
        ),
    ),
    (
        "Waiting room",
        (
            (8, 8, q.queue_depth),
            (16, 8, q.queue_wait),
            (8, 8, q.eta_error),
            (8, 8, q.jobs),
            (8, 8, q.results_kept),
        ),
    ),
    (
        "Traffic",
        (
            (12, 8, p.requests_per_minute),
            (12, 8, p.rejections_per_minute),
            (12, 6, p.requests_in_range),
            (12, 6, p.rejections_in_range),
            (24, 6, p.refusals_paced),
        ),
    ),
    ("Resources (what admission sees)", ((12, 8, p.cpu), (12, 8, p.memory))),
    (
        "Engine",
        (
            (12, 8, p.generation_duration),
            (12, 8, p.upstream_errors),
            (24, 5, p.alerts_firing),
        ),
    ),
)

# With a job store several boxes share (jobs.store: postgres, issue #21), after the
# waiting room: every box's heartbeat and running jobs, and the whole queue.
BOXES_ROW: tuple[str, tuple[Cell, ...]] = (
    "Boxes",
    ((8, 8, b.heartbeat_age), (8, 8, b.running_per_box), (8, 8, b.whole_queue)),
)


def rows_of(config: Config) -> tuple[tuple[str, tuple[Cell, ...]], ...]:
    """The dashboard's rows for ``config``: the boxes row only with a shared store."""
    if config.jobs.store != "postgres":
        return ROWS
    return (*ROWS[:2], BOXES_ROW, *ROWS[2:])


class Grid:
    """Assigns unique panel ids and grid positions, row by row (24 columns wide)."""

    def __init__(self) -> None:
        self.panels: list[Panel] = []
        self._y = 0
        self._x = 0
        self._row_h = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "id": len(self.panels) + 1,
                "type": "row",
                "title": title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self._y},
            }
        )
        self._y += 1

    def add(self, w: int, h: int, panel: Panel) -> None:
        if self._x + w > 24:
            self._newline()
        panel = {
            "id": len(self.panels) + 1,
            "gridPos": {"h": h, "w": w, "x": self._x, "y": self._y},
            "datasource": dict(DS),
            **panel,
        }
        self.panels.append(panel)
        self._x += w
        self._row_h = max(self._row_h, h)

    def _newline(self) -> None:
        self._y += self._row_h
        self._x = self._row_h = 0


def _instance_variable() -> dict[str, Any]:
    query = "label_values(gatekeeper_build_info, instance)"
    return {
        "name": "instance",
        "label": "Instance",
        "type": "query",
        "datasource": dict(DS),
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,  # on time range change: new instances appear
        "regex": "",
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {},
        "options": [],
        "hide": 0,
        "skipUrlSync": False,
    }


def dashboard(config: Config) -> dict[str, Any]:
    """The Grafana dashboard for ``config``, ready for "Import dashboard"."""
    grid = Grid()
    for title, row in rows_of(config):
        grid.row(title)
        for w, h, build in row:
            grid.add(w, h, build(config))
    a, r = config.admission, config.admission.resources
    used = sorted({panel["type"] for panel in grid.panels if panel["type"] != "row"})
    names = {"stat": "Stat", "timeseries": "Time series", "bargauge": "Bar gauge"}
    return {
        "__inputs": [
            {
                "name": "DS_PROMETHEUS",
                "label": "Prometheus",
                "description": "The Prometheus that scrapes gatekeeper's admin /metrics",
                "type": "datasource",
                "pluginId": "prometheus",
                "pluginName": "Prometheus",
            }
        ],
        "__elements": {},
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.4.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            *({"type": "panel", "id": t, "name": names[t], "version": ""} for t in used),
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": (
            "gatekeeper in front of an AI music engine (generated by `gatekeeper dashboard` "
            f"from rules.yaml: max_in_flight {a.max_in_flight}, expected "
            f"{a.expected_seconds:g} s, cpu reject >{r.cpu_percent.reject_above:g} recover "
            f"<{r.cpu_percent.recover_below:g}, memory reject >{r.memory_percent.reject_above:g}"
            f" recover <{r.memory_percent.recover_below:g})"
        ),
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": grid.panels,
        "refresh": "10s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["gatekeeper", "ai-music", "admission"],
        "templating": {"list": [_instance_variable()]},
        # Generations take 5-15 minutes: three hours shows a dozen of them.
        "time": {"from": "now-3h", "to": "now"},
        "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m"]},
        "timezone": "browser",
        "title": "gatekeeper",
        "uid": UID,
        "version": 1,
        "weekStart": "",
    }
