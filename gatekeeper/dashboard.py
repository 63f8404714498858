"""The Grafana dashboard, generated from the rules (issue #3 §4).

A pure function, config in, dict out: ``dashboard(config)`` is what
``gatekeeper dashboard`` prints and what ``dashboards/gatekeeper.json`` holds
for the default ``rules.yaml`` (a test fails when that file is stale).
Generating it means the CPU and memory panels draw the reject and recover
thresholds the gate actually uses, and the duration quantiles cover exactly
the routes that ``admit`` generations.

The JSON is in Grafana's export format for "Dashboards → New → Import":
``__inputs`` declares the Prometheus datasource as ``DS_PROMETHEUS`` (the
importer asks which datasource to use and substitutes ``${DS_PROMETHEUS}``
everywhere), ``__requires`` lists Grafana 10+ and the panel plugins, and the
``instance`` template variable (``label_values(gatekeeper_build_info,
instance)``) filters every query with ``{instance=~"$instance"}``.

Every panel query returns a series on a live gatekeeper even when nothing is
happening (a panel that says "No data" on a healthy box makes people doubt
it); the end-to-end test evaluates all of them against a real Prometheus.
"""

from __future__ import annotations

from typing import Any

from .config import Config

SCHEMA_VERSION = 39  # Grafana 10.4 / 11.x
UID = "gatekeeper"
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
SEL = 'instance=~"$instance"'
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

_RE2_SPECIAL = set(r"\.+*?()|[]{}^$")


def promql_regex_literal(text: str) -> str:
    """``text`` as an exact-match RE2 regex, escaped for a PromQL double-quoted string."""
    escaped = "".join("\\" + c if c in _RE2_SPECIAL else c for c in text)
    return escaped.replace("\\", "\\\\").replace('"', '\\"')


def _sel(*matchers: str) -> str:
    return "{" + ",".join((SEL, *matchers)) + "}"


def _target(ref: str, expr: str, legend: str, **extra: Any) -> dict[str, Any]:
    return {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend, **extra}


def _thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


def _value_map(*entries: tuple[int, str, str]) -> list[dict[str, Any]]:
    options = {
        str(value): {"text": text, "color": color, "index": i}
        for i, (value, text, color) in enumerate(entries)
    }
    return [{"type": "value", "options": options}]


def _timeseries_custom(**over: Any) -> dict[str, Any]:
    custom: dict[str, Any] = {
        "drawStyle": "line",
        "lineInterpolation": "stepAfter",
        "lineWidth": 2,
        "fillOpacity": 10,
        "showPoints": "never",
        "spanNulls": True,
        "stacking": {"mode": "none", "group": "A"},
        "thresholdsStyle": {"mode": "off"},
        "axisSoftMin": 0,
    }
    custom.update(over)
    return custom


class _Layout:
    """Assigns unique panel ids and grid positions, row by row (24 columns wide)."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
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

    def add(self, w: int, h: int, panel: dict[str, Any]) -> None:
        if self._x + w > 24:
            self._newline()
        panel = {
            "id": len(self.panels) + 1,
            "gridPos": {"h": h, "w": w, "x": self._x, "y": self._y},
            "datasource": DS,
            **panel,
        }
        self.panels.append(panel)
        self._x += w
        self._row_h = max(self._row_h, h)

    def _newline(self) -> None:
        self._y += self._row_h
        self._x = self._row_h = 0


def _admission_panels(lay: _Layout, config: Config) -> None:
    busy = f"gatekeeper_in_flight{_sel()} >= bool gatekeeper_max_in_flight{_sel()}"
    cpu, memory = _sel('resource="cpu"'), _sel('resource="memory"')
    parts = [
        (busy, 1, "busy"),
        (f"gatekeeper_overloaded{cpu}", 2, "cpu"),
        (f"gatekeeper_overloaded{memory}", 3, "memory"),
        (f"1 - gatekeeper_upstream_up{_sel()}", 4, "engine"),
        (f"gatekeeper_draining{_sel()}", 5, "draining"),
    ]
    code = " or ".join(
        f'label_replace(({expr}) * {weight}, "why", "{why}", "", "")' for expr, weight, why in parts
    )
    lay.add(
        6,
        6,
        {
            "type": "stat",
            "title": "Admission",
            "description": "Would a new generation be admitted now? Otherwise the most severe "
            "reason: draining > engine down > memory > CPU > busy (a generation is running, "
            "the normal state of a working box).",
            "targets": [_target("A", f"max by (instance) ({code})", "{{instance}}")],
            "fieldConfig": {
                "defaults": {
                    "mappings": _value_map(*STATE_CODES),
                    "thresholds": _thresholds((None, "green"), (1, "blue"), (2, "red")),
                    "color": {"mode": "thresholds"},
                    "unit": "none",
                },
                "overrides": [],
            },
            "options": _stat_options(text_mode="value", color_mode="background"),
        },
    )
    reasons = [
        _target(chr(65 + i), f"max by (instance) ({expr})", why)
        for i, (expr, _, why) in enumerate(parts)
    ]
    lay.add(
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
                    "mappings": _value_map((0, "no", "green"), (1, "YES", "orange")),
                    "thresholds": _thresholds((None, "green"), (1, "orange")),
                    "color": {"mode": "thresholds"},
                    "unit": "none",
                },
                "overrides": [],
            },
            "options": _stat_options(text_mode="value_and_name", color_mode="background"),
        },
    )
    lay.add(
        6,
        6,
        {
            "type": "timeseries",
            "title": "In flight vs limit",
            "description": "Admitted generations running, and admission.max_in_flight "
            f"(configured: {config.admission.max_in_flight}).",
            "targets": [
                _target("A", f"max by (instance) (gatekeeper_in_flight{_sel()})", "in flight"),
                _target("B", f"max by (instance) (gatekeeper_max_in_flight{_sel()})", "limit"),
            ],
            "fieldConfig": {
                "defaults": {
                    "custom": _timeseries_custom(),
                    "unit": "none",
                    "decimals": 0,
                    "min": 0,
                    "color": {"mode": "palette-classic"},
                },
                "overrides": [_dashed("limit", "red")],
            },
            "options": _ts_options(),
        },
    )
    lay.add(
        6,
        6,
        {
            "type": "stat",
            "title": "Engine",
            "description": "Periodic probe of the upstream (upstream.probe): any HTTP answer "
            "is up. Also drives /readyz.",
            "targets": [
                _target("A", f"max by (instance) (gatekeeper_upstream_up{_sel()})", "{{instance}}")
            ],
            "fieldConfig": {
                "defaults": {
                    "mappings": _value_map((1, "up", "green"), (0, "DOWN", "red")),
                    "thresholds": _thresholds((None, "red"), (1, "green")),
                    "color": {"mode": "thresholds"},
                    "unit": "none",
                },
                "overrides": [],
            },
            "options": _stat_options(text_mode="value", color_mode="background"),
        },
    )


def _generation_panels(lay: _Layout, config: Config) -> None:
    elapsed = f"max by (instance) (gatekeeper_generation_elapsed_seconds{_sel()})"
    expected = f"max by (instance) (gatekeeper_generation_expected_seconds{_sel()})"
    running = f"max by (instance) (gatekeeper_in_flight{_sel()} > bool 0)"
    lay.add(
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
                _target("A", elapsed, "elapsed"),
                _target("B", expected, "expected"),
            ],
            "fieldConfig": {
                "defaults": {
                    "custom": _timeseries_custom(lineInterpolation="linear"),
                    "unit": "s",
                    "min": 0,
                    "color": {"mode": "palette-classic"},
                },
                "overrides": [_dashed("expected", "yellow")],
            },
            "options": _ts_options(),
        },
    )
    lay.add(
        8,
        8,
        {
            "type": "bargauge",
            "title": "Running generation: progress",
            "description": "elapsed / expected of the oldest running generation, and the time "
            "left (both 0 when idle). Over 100 % means it overruns the estimate.",
            "targets": [
                _target("A", f"100 * {elapsed} / {expected}", "progress"),
                _target(
                    "B",
                    f"clamp_min({expected} - {elapsed}, 0) * {running}",
                    "time left",
                ),
            ],
            "fieldConfig": {
                "defaults": {
                    "min": 0,
                    "thresholds": _thresholds((None, "blue"), (100, "orange")),
                    "color": {"mode": "thresholds"},
                },
                "overrides": [
                    _override("progress", unit="percent", max=100),
                    _override("time left", unit="s", max=config.admission.expected_seconds),
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


def _traffic_panels(lay: _Layout) -> None:
    per_min = "rate({metric}{sel}[$__rate_interval])) * 60"
    lay.add(
        12,
        8,
        {
            "type": "timeseries",
            "title": "Requests per minute by route and outcome",
            "description": "admitted (generations started), passed (forwarded without "
            "admission), rejected (busy, cpu, memory, draining, 413...), blocked (block routes).",
            "targets": [
                _target(
                    "A",
                    "sum by (route, outcome) ("
                    + per_min.format(metric="gatekeeper_requests_total", sel=_sel()),
                    "{{route}} {{outcome}}",
                )
            ],
            "fieldConfig": {
                "defaults": {
                    "custom": _timeseries_custom(lineInterpolation="linear"),
                    "unit": "short",
                    "min": 0,
                    "color": {"mode": "palette-classic"},
                },
                "overrides": [
                    _override_regex(".* rejected", "orange"),
                    _override_regex(".* blocked", "red"),
                    _override_regex(".* admitted", "green"),
                ],
            },
            "options": _ts_options(),
        },
    )
    lay.add(
        12,
        8,
        {
            "type": "timeseries",
            "title": "Turned away per minute by reason",
            "description": "Rejections by reason code (the X-Gatekeeper-Reason header): busy, "
            "cpu, memory, draining, blocked, body_too_large, bad_request, ...",
            "targets": [
                _target(
                    "A",
                    "sum by (reason) ("
                    + per_min.format(metric="gatekeeper_rejections_total", sel=_sel()),
                    "{{reason}}",
                )
            ],
            "fieldConfig": {
                "defaults": {
                    "custom": _timeseries_custom(
                        lineInterpolation="linear", stacking={"mode": "normal", "group": "A"}
                    ),
                    "unit": "short",
                    "min": 0,
                    "color": {"mode": "palette-classic"},
                },
                "overrides": [],
            },
            "options": _ts_options(),
        },
    )
    lay.add(
        12,
        6,
        {
            "type": "bargauge",
            "title": "Requests in the time range",
            "targets": [
                _target(
                    "A",
                    "sum by (outcome) (round(increase(gatekeeper_requests_total"
                    f"{_sel()}[$__range])))",
                    "{{outcome}}",
                )
            ],
            "fieldConfig": {
                "defaults": {
                    "unit": "short",
                    "decimals": 0,
                    "min": 0,
                    "thresholds": _thresholds((None, "blue")),
                    "color": {"mode": "thresholds"},
                },
                "overrides": [],
            },
            "options": _bar_options(),
        },
    )
    lay.add(
        12,
        6,
        {
            "type": "bargauge",
            "title": "Turned away in the time range, by reason",
            "targets": [
                _target(
                    "A",
                    "sum by (reason) (round(increase(gatekeeper_rejections_total"
                    f"{_sel()}[$__range])))",
                    "{{reason}}",
                )
            ],
            "fieldConfig": {
                "defaults": {
                    "unit": "short",
                    "decimals": 0,
                    "min": 0,
                    "thresholds": _thresholds((None, "orange")),
                    "color": {"mode": "thresholds"},
                },
                "overrides": [],
            },
            "options": _bar_options(),
        },
    )


def _resource_panels(lay: _Layout, config: Config) -> None:
    res = config.admission.resources
    for key, label, th in (
        ("cpu", "CPU", res.cpu_percent),
        ("memory", "Memory", res.memory_percent),
    ):
        resource = _sel(f'resource="{key}"')
        lay.add(
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
                    _target("A", f"max by (instance) (gatekeeper_{key}_percent{_sel()})", label),
                    _target(
                        "B",
                        f"100 * max by (instance) (gatekeeper_overloaded{resource})",
                        "overloaded",
                    ),
                ],
                "fieldConfig": {
                    "defaults": {
                        "custom": _timeseries_custom(
                            lineInterpolation="linear",
                            fillOpacity=0,
                            thresholdsStyle={"mode": "line+area"},
                        ),
                        "unit": "percent",
                        "min": 0,
                        "max": 100,
                        "thresholds": _thresholds(
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
                "options": _ts_options(),
            },
        )


def _engine_panels(lay: _Layout, config: Config) -> None:
    admit = [r.name for r in config.routes if r.action == "admit"]
    routes = "|".join(promql_regex_literal(n) for n in admit) if admit else ".+"
    bucket = (
        "sum by (le, route) (increase(gatekeeper_upstream_request_duration_seconds_bucket"
        + _sel(f'route=~"{routes}"', 'code=~"2.."')
        + f"[{DURATION_WINDOW}]))"
    )
    lay.add(
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
                _target("A", f"histogram_quantile(0.5, {bucket})", "p50 {{route}}"),
                _target("B", f"histogram_quantile(0.95, {bucket})", "p95 {{route}}"),
                _target(
                    "C",
                    f"max by (instance) (gatekeeper_generation_expected_seconds{_sel()})",
                    "estimate",
                ),
            ],
            "fieldConfig": {
                "defaults": {
                    "custom": _timeseries_custom(lineInterpolation="linear"),
                    "unit": "s",
                    "min": 0,
                    "color": {"mode": "palette-classic"},
                },
                "overrides": [_dashed("estimate", "yellow")],
            },
            "options": _ts_options(),
        },
    )
    lay.add(
        12,
        8,
        {
            "type": "timeseries",
            "title": "Upstream errors per minute by kind, and engine up",
            "description": "connect / timeout / pool / protocol failures talking to the engine, "
            "and clients that left mid-request (client_disconnect), per minute; 'engine up' "
            "is the probe (1 = up).",
            "targets": [
                _target(
                    "A",
                    "sum by (kind) (rate(gatekeeper_upstream_errors_total"
                    f"{_sel()}[$__rate_interval])) * 60",
                    "{{kind}}",
                ),
                _target("B", f"max by (instance) (gatekeeper_upstream_up{_sel()})", "engine up"),
            ],
            "fieldConfig": {
                "defaults": {
                    "custom": _timeseries_custom(lineInterpolation="linear"),
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
            "options": _ts_options(),
        },
    )
    # Issue #4 exports gatekeeper_alerts_firing{alertname, severity}; the fallback keeps
    # the panel meaningful ("none") on a gatekeeper without alert rules.
    firing = f"max by (alertname, severity) (gatekeeper_alerts_firing{_sel()})"
    lay.add(
        24,
        5,
        {
            "type": "stat",
            "title": "Alerts firing",
            "description": "gatekeeper's own alert rules (alerts: in rules.yaml): 1 while an "
            "alert fires. Details: the admin status page or Alertmanager.",
            "targets": [
                _target(
                    "A",
                    f"sum(gatekeeper_alerts_firing{_sel()}) or vector(0)",
                    "firing",
                ),
                _target(
                    "B",
                    f'{firing} or on() label_replace(vector(0), "alertname", "none", "", "")',
                    "{{alertname}} {{severity}}",
                ),
            ],
            "fieldConfig": {
                "defaults": {
                    "thresholds": _thresholds((None, "green"), (1, "red")),
                    "color": {"mode": "thresholds"},
                    "unit": "none",
                    "decimals": 0,
                },
                "overrides": [],
            },
            "options": _stat_options(text_mode="value_and_name", color_mode="background"),
        },
    )


def _stat_options(*, text_mode: str, color_mode: str) -> dict[str, Any]:
    return {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "orientation": "auto",
        "textMode": text_mode,
        "colorMode": color_mode,
        "graphMode": "none",
        "justifyMode": "auto",
        "wideLayout": True,
        "showPercentChange": False,
    }


def _bar_options() -> dict[str, Any]:
    return {
        "orientation": "horizontal",
        "displayMode": "gradient",
        "showUnfilled": True,
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "valueMode": "color",
        "namePlacement": "auto",
        "minVizWidth": 8,
        "minVizHeight": 16,
        "sizing": "auto",
    }


def _ts_options() -> dict[str, Any]:
    return {
        "legend": {"showLegend": True, "displayMode": "list", "placement": "bottom", "calcs": []},
        "tooltip": {"mode": "multi", "sort": "none"},
    }


def _override(name: str, **props: Any) -> dict[str, Any]:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": k, "value": v} for k, v in props.items()],
    }


def _override_regex(pattern: str, color: str) -> dict[str, Any]:
    return {
        "matcher": {"id": "byRegexp", "options": pattern},
        "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": color}}],
    }


def _dashed(name: str, color: str) -> dict[str, Any]:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            {"id": "custom.fillOpacity", "value": 0},
            {"id": "color", "value": {"mode": "fixed", "fixedColor": color}},
        ],
    }


def _instance_variable() -> dict[str, Any]:
    query = "label_values(gatekeeper_build_info, instance)"
    return {
        "name": "instance",
        "label": "Instance",
        "type": "query",
        "datasource": DS,
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
    lay = _Layout()
    lay.row("Admission now")
    _admission_panels(lay, config)
    _generation_panels(lay, config)
    lay.row("Traffic")
    _traffic_panels(lay)
    lay.row("Resources (what admission sees)")
    _resource_panels(lay, config)
    lay.row("Engine")
    _engine_panels(lay, config)
    a, r = config.admission, config.admission.resources
    used = sorted({p["type"] for p in lay.panels if p["type"] != "row"})
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
        "panels": lay.panels,
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
