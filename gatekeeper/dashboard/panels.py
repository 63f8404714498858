"""The gatekeeper panels, row by row: what each shows and the PromQL behind it.

Every panel query returns a series on a live gatekeeper even when nothing is
happening (a panel that says "No data" on a healthy box makes people doubt
it); the end-to-end test evaluates all of them against a real Prometheus.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import Config
from .grafana import (
    bar_options,
    dashed,
    override,
    override_regex,
    stat_options,
    target,
    thresholds,
    timeseries_custom,
    ts_options,
    value_map,
)
from .promql import promql_regex_literal, sel

# Places a panel of width w and height h on the grid (``layout.Grid.add``).
Place = Callable[[int, int, dict[str, Any]], None]

# Quantiles of jobs that take minutes need a window of many jobs, not a rate interval.
DURATION_WINDOW = "1h"

# Admission state codes (the "Admission" stat): the highest applicable wins.
STATE_CODES = (
    (0, "accepting", "green"),
    (1, "busy: generating", "blue"),
    (2, "not accepting: CPU", "orange"),
    (3, "not accepting: memory", "orange"),
    (4, "not accepting: engine down", "red"),
    (5, "not accepting: draining", "purple"),
)


def admission_panels(add: Place, config: Config) -> None:
    busy = f"gatekeeper_in_flight{sel()} >= bool gatekeeper_max_in_flight{sel()}"
    cpu, memory = sel('resource="cpu"'), sel('resource="memory"')
    parts = [
        (busy, 1, "busy"),
        (f"gatekeeper_overloaded{cpu}", 2, "cpu"),
        (f"gatekeeper_overloaded{memory}", 3, "memory"),
        (f"1 - gatekeeper_upstream_up{sel()}", 4, "engine"),
        (f"gatekeeper_draining{sel()}", 5, "draining"),
    ]
    code = " or ".join(
        f'label_replace(({expr}) * {weight}, "why", "{why}", "", "")' for expr, weight, why in parts
    )
    add(
        6,
        6,
        {
            "type": "stat",
            "title": "Admission",
            "description": "Would a new generation be admitted now? Otherwise the most severe "
            "reason: draining > engine down > memory > CPU > busy (a generation is running, "
            "the normal state of a working box).",
            "targets": [target("A", f"max by (instance) ({code})", "{{instance}}")],
            "fieldConfig": {
                "defaults": {
                    "mappings": value_map(*STATE_CODES),
                    "thresholds": thresholds((None, "green"), (1, "blue"), (2, "red")),
                    "color": {"mode": "thresholds"},
                    "unit": "none",
                },
                "overrides": [],
            },
            "options": stat_options(text_mode="value", color_mode="background"),
        },
    )
    reasons = [
        target(chr(65 + i), f"max by (instance) ({expr})", why)
        for i, (expr, _, why) in enumerate(parts)
    ]
    add(
        6,
        6,
        {
            "type": "stat",
            "title": "Why not",
            "description": "Each reason a generation would be turned away (reason codes of "
            "X-Gatekeeper-Reason). CPU and memory follow the hysteresis: over reject_above, "
            "still over until under recover_below.",
            "targets": reasons,
            "fieldConfig": {
                "defaults": {
                    "mappings": value_map((0, "no", "green"), (1, "YES", "orange")),
                    "thresholds": thresholds((None, "green"), (1, "orange")),
                    "color": {"mode": "thresholds"},
                    "unit": "none",
                },
                "overrides": [],
            },
            "options": stat_options(text_mode="value_and_name", color_mode="background"),
        },
    )
    add(
        6,
        6,
        {
            "type": "timeseries",
            "title": "In flight vs limit",
            "description": "Admitted generations running, and admission.max_in_flight "
            f"(configured: {config.admission.max_in_flight}).",
            "targets": [
                target("A", f"max by (instance) (gatekeeper_in_flight{sel()})", "in flight"),
                target("B", f"max by (instance) (gatekeeper_max_in_flight{sel()})", "limit"),
            ],
            "fieldConfig": {
                "defaults": {
                    "custom": timeseries_custom(),
                    "unit": "none",
                    "decimals": 0,
                    "min": 0,
                    "color": {"mode": "palette-classic"},
                },
                "overrides": [dashed("limit", "red")],
            },
            "options": ts_options(),
        },
    )
    add(
        6,
        6,
        {
            "type": "stat",
            "title": "Engine",
            "description": "Periodic probe of the upstream (upstream.probe): any HTTP answer "
            "is up. Also drives /readyz.",
            "targets": [
                target("A", f"max by (instance) (gatekeeper_upstream_up{sel()})", "{{instance}}")
            ],
            "fieldConfig": {
                "defaults": {
                    "mappings": value_map((1, "up", "green"), (0, "DOWN", "red")),
                    "thresholds": thresholds((None, "red"), (1, "green")),
                    "color": {"mode": "thresholds"},
                    "unit": "none",
                },
                "overrides": [],
            },
            "options": stat_options(text_mode="value", color_mode="background"),
        },
    )


def generation_panels(add: Place, config: Config) -> None:
    elapsed = f"max by (instance) (gatekeeper_generation_elapsed_seconds{sel()})"
    expected = f"max by (instance) (gatekeeper_generation_expected_seconds{sel()})"
    running = f"max by (instance) (gatekeeper_in_flight{sel()} > bool 0)"
    add(
        16,
        8,
        {
            "type": "timeseries",
            "title": "Running generation: elapsed vs expected",
            "description": "Age of the oldest running generation (0 when idle) and the current "
            "estimate of a generation's duration: the median of the last 20 completed ones, "
            f"starting from admission.expected_seconds ({config.admission.expected_seconds:g} "
            "s). Retry-After is expected - elapsed.",
            "targets": [
                target("A", elapsed, "elapsed"),
                target("B", expected, "expected"),
            ],
            "fieldConfig": {
                "defaults": {
                    "custom": timeseries_custom(lineInterpolation="linear"),
                    "unit": "s",
                    "min": 0,
                    "color": {"mode": "palette-classic"},
                },
                "overrides": [dashed("expected", "yellow")],
            },
            "options": ts_options(),
        },
    )
    add(
        8,
        8,
        {
            "type": "bargauge",
            "title": "Running generation: progress",
            "description": "elapsed / expected of the oldest running generation, and the time "
            "left (both 0 when idle). Over 100 % means it overruns the estimate.",
            "targets": [
                target("A", f"100 * {elapsed} / {expected}", "progress"),
                target(
                    "B",
                    f"clamp_min({expected} - {elapsed}, 0) * {running}",
                    "time left",
                ),
            ],
            "fieldConfig": {
                "defaults": {
                    "min": 0,
                    "thresholds": thresholds((None, "blue"), (100, "orange")),
                    "color": {"mode": "thresholds"},
                },
                "overrides": [
                    override("progress", unit="percent", max=100),
                    override("time left", unit="s", max=config.admission.expected_seconds),
                ],
            },
            "options": {
                "orientation": "horizontal",
                "displayMode": "basic",
                "showUnfilled": True,
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "valueMode": "color",
                "namePlacement": "top",
                "minVizWidth": 8,
                "minVizHeight": 16,
                "sizing": "auto",
            },
        },
    )


def traffic_panels(add: Place) -> None:
    per_min = "rate({metric}{sel}[$__rate_interval])) * 60"
    add(
        12,
        8,
        {
            "type": "timeseries",
            "title": "Requests per minute by route and outcome",
            "description": "admitted (generations started), passed (forwarded without "
            "admission), rejected (busy, cpu, memory, draining, 413...), blocked (block routes).",
            "targets": [
                target(
                    "A",
                    "sum by (route, outcome) ("
                    + per_min.format(metric="gatekeeper_requests_total", sel=sel()),
                    "{{route}} {{outcome}}",
                )
            ],
            "fieldConfig": {
                "defaults": {
                    "custom": timeseries_custom(lineInterpolation="linear"),
                    "unit": "short",
                    "min": 0,
                    "color": {"mode": "palette-classic"},
                },
                "overrides": [
                    override_regex(".* rejected", "orange"),
                    override_regex(".* blocked", "red"),
                    override_regex(".* admitted", "green"),
                ],
            },
            "options": ts_options(),
        },
    )
    add(
        12,
        8,
        {
            "type": "timeseries",
            "title": "Turned away per minute by reason",
            "description": "Rejections by reason code (the X-Gatekeeper-Reason header): busy, "
            "cpu, memory, draining, blocked, body_too_large, bad_request, ...",
            "targets": [
                target(
                    "A",
                    "sum by (reason) ("
                    + per_min.format(metric="gatekeeper_rejections_total", sel=sel()),
                    "{{reason}}",
                )
            ],
            "fieldConfig": {
                "defaults": {
                    "custom": timeseries_custom(
                        lineInterpolation="linear", stacking={"mode": "normal", "group": "A"}
                    ),
                    "unit": "short",
                    "min": 0,
                    "color": {"mode": "palette-classic"},
                },
                "overrides": [],
            },
            "options": ts_options(),
        },
    )
    add(
        12,
        6,
        {
            "type": "bargauge",
            "title": "Requests in the time range",
            "targets": [
                target(
                    "A",
                    "sum by (outcome) (round(increase(gatekeeper_requests_total"
                    f"{sel()}[$__range])))",
                    "{{outcome}}",
                )
            ],
            "fieldConfig": {
                "defaults": {
                    "unit": "short",
                    "decimals": 0,
                    "min": 0,
                    "thresholds": thresholds((None, "blue")),
                    "color": {"mode": "thresholds"},
                },
                "overrides": [],
            },
            "options": bar_options(),
        },
    )
    add(
        12,
        6,
        {
            "type": "bargauge",
            "title": "Turned away in the time range, by reason",
            "targets": [
                target(
                    "A",
                    "sum by (reason) (round(increase(gatekeeper_rejections_total"
                    f"{sel()}[$__range])))",
                    "{{reason}}",
                )
            ],
            "fieldConfig": {
                "defaults": {
                    "unit": "short",
                    "decimals": 0,
                    "min": 0,
                    "thresholds": thresholds((None, "orange")),
                    "color": {"mode": "thresholds"},
                },
                "overrides": [],
            },
            "options": bar_options(),
        },
    )


def resource_panels(add: Place, config: Config) -> None:
    res = config.admission.resources
    for key, label, th in (
        ("cpu", "CPU", res.cpu_percent),
        ("memory", "Memory", res.memory_percent),
    ):
        resource = sel(f'resource="{key}"')
        add(
            12,
            8,
            {
                "type": "timeseries",
                "title": f"{label} % (reject above {th.reject_above:g}, "
                f"recover below {th.recover_below:g})",
                "description": f"The {key} reading admission uses (source: {res.source}). "
                f"Over {th.reject_above:g} % generations are rejected with reason '{key}' "
                f"until it falls under {th.recover_below:g} % "
                f"(admission.resources.{key}_percent in rules.yaml). "
                "The shaded band is the hysteresis.",
                "targets": [
                    target("A", f"max by (instance) (gatekeeper_{key}_percent{sel()})", label),
                    target(
                        "B",
                        f"100 * max by (instance) (gatekeeper_overloaded{resource})",
                        "overloaded",
                    ),
                ],
                "fieldConfig": {
                    "defaults": {
                        "custom": timeseries_custom(
                            lineInterpolation="linear",
                            fillOpacity=0,
                            thresholdsStyle={"mode": "line+area"},
                        ),
                        "unit": "percent",
                        "min": 0,
                        "max": 100,
                        "thresholds": thresholds(
                            (None, "transparent"),
                            (th.recover_below, "rgba(255, 152, 48, 0.25)"),
                            (th.reject_above, "rgba(242, 73, 92, 0.35)"),
                        ),
                        "color": {"mode": "palette-classic"},
                    },
                    "overrides": [
                        {
                            "matcher": {"id": "byName", "options": "overloaded"},
                            "properties": [
                                {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
                                {"id": "custom.fillOpacity", "value": 15},
                                {"id": "custom.lineWidth", "value": 0},
                                {"id": "custom.lineInterpolation", "value": "stepAfter"},
                            ],
                        }
                    ],
                },
                "options": ts_options(),
            },
        )


def engine_panels(add: Place, config: Config) -> None:
    admit = [r.name for r in config.routes if r.action == "admit"]
    routes = "|".join(promql_regex_literal(n) for n in admit) if admit else ".+"
    bucket = (
        "sum by (le, route) (increase(gatekeeper_upstream_request_duration_seconds_bucket"
        + sel(f'route=~"{routes}"', 'code=~"2.."')
        + f"[{DURATION_WINDOW}]))"
    )
    add(
        12,
        8,
        {
            "type": "timeseries",
            "title": f"Generation duration p50 / p95 (trailing {DURATION_WINDOW})",
            "description": "From the gatekeeper_upstream_request_duration_seconds histogram "
            f"(buckets up to 1800 s) of the admit routes ({', '.join(admit) or 'none'}), "
            "successful answers only, over the trailing window; and the estimate gatekeeper "
            "uses for Retry-After.",
            "targets": [
                target("A", f"histogram_quantile(0.5, {bucket})", "p50 {{route}}"),
                target("B", f"histogram_quantile(0.95, {bucket})", "p95 {{route}}"),
                target(
                    "C",
                    f"max by (instance) (gatekeeper_generation_expected_seconds{sel()})",
                    "estimate",
                ),
            ],
            "fieldConfig": {
                "defaults": {
                    "custom": timeseries_custom(lineInterpolation="linear"),
                    "unit": "s",
                    "min": 0,
                    "color": {"mode": "palette-classic"},
                },
                "overrides": [dashed("estimate", "yellow")],
            },
            "options": ts_options(),
        },
    )
    add(
        12,
        8,
        {
            "type": "timeseries",
            "title": "Upstream errors per minute by kind, and engine up",
            "description": "connect / timeout / pool / protocol failures talking to the engine, "
            "and clients that left mid-request (client_disconnect), per minute; 'engine up' "
            "is the probe (1 = up).",
            "targets": [
                target(
                    "A",
                    "sum by (kind) (rate(gatekeeper_upstream_errors_total"
                    f"{sel()}[$__rate_interval])) * 60",
                    "{{kind}}",
                ),
                target("B", f"max by (instance) (gatekeeper_upstream_up{sel()})", "engine up"),
            ],
            "fieldConfig": {
                "defaults": {
                    "custom": timeseries_custom(lineInterpolation="linear"),
                    "unit": "short",
                    "min": 0,
                    "color": {"mode": "palette-classic"},
                },
                "overrides": [
                    {
                        "matcher": {"id": "byName", "options": "engine up"},
                        "properties": [
                            {"id": "custom.fillOpacity", "value": 0},
                            {"id": "custom.lineInterpolation", "value": "stepAfter"},
                            {"id": "custom.axisPlacement", "value": "right"},
                            {"id": "max", "value": 1},
                            {"id": "color", "value": {"mode": "fixed", "fixedColor": "green"}},
                        ],
                    }
                ],
            },
            "options": ts_options(),
        },
    )
    # Issue #4 exports gatekeeper_alerts_firing{alertname, severity}; the fallback keeps
    # the panel meaningful ("none") on a gatekeeper without alert rules.
    firing = f"max by (alertname, severity) (gatekeeper_alerts_firing{sel()})"
    add(
        24,
        5,
        {
            "type": "stat",
            "title": "Alerts firing",
            "description": "gatekeeper's own alert rules (alerts: in rules.yaml): 1 while an "
            "alert fires. Details: the admin status page or Alertmanager.",
            "targets": [
                target(
                    "A",
                    f"sum(gatekeeper_alerts_firing{sel()}) or vector(0)",
                    "firing",
                ),
                target(
                    "B",
                    f'{firing} or on() label_replace(vector(0), "alertname", "none", "", "")',
                    "{{alertname}} {{severity}}",
                ),
            ],
            "fieldConfig": {
                "defaults": {
                    "thresholds": thresholds((None, "green"), (1, "red")),
                    "color": {"mode": "thresholds"},
                    "unit": "none",
                    "decimals": 0,
                },
                "overrides": [],
            },
            "options": stat_options(text_mode="value_and_name", color_mode="background"),
        },
    )
