"""The gatekeeper panels: what each shows and the PromQL behind it.

Each panel is a function of the config (those that do not read it still take
it, so that ``layout.ROWS`` can treat them alike). Where a panel goes is
``layout``'s business; how Grafana spells it is ``grafana``'s.

Every panel query returns a series on a live gatekeeper even when nothing is
happening (a panel that says "No data" on a healthy box makes people doubt
it); the end-to-end test evaluates all of them against a real Prometheus.
The waiting room's panels are ``queue``'s.
"""

from __future__ import annotations

from gatekeeper.config import Config, Threshold
from gatekeeper.observability.dashboard.grafana import (
    Panel,
    bargauge,
    colored,
    dashed,
    fixed,
    override,
    stat,
    timeseries,
)
from gatekeeper.observability.dashboard.promql import (
    DURATION_WINDOW,
    gauge,
    in_range,
    per_minute,
    routes_regex,
    sel,
    signal,
)

# Admission state codes (the "Admission" stat): the highest applicable wins.
STATE_CODES = (
    (0, "accepting", "green"),
    (1, "busy: generating", "blue"),
    (2, "not accepting: CPU (or CPU pressure, GPU busy)", "orange"),
    (3, "not accepting: memory (or memory/io pressure, GPU memory)", "orange"),
    # Every engine fails its probe: no generation starts (engine_down), queued jobs wait.
    (4, "not accepting: engine down", "red"),
    (5, "not accepting: draining", "purple"),
)

# Why a generation would be turned away now: (0/1 expression, state code, reason).
_REASONS = (
    (f"gatekeeper_in_flight{sel()} >= bool gatekeeper_max_in_flight{sel()}", 1, "busy"),
    ("gatekeeper_overloaded" + sel('resource="cpu"'), 2, "cpu"),
    ("gatekeeper_overloaded" + sel('resource="memory"'), 3, "memory"),
    # The opt-in signals (issue #11 §3): 0 while absent or without a threshold.
    ("gatekeeper_overloaded" + sel('resource="cpu_pressure"'), 2, "cpu_pressure"),
    ("gatekeeper_overloaded" + sel('resource="memory_pressure"'), 3, "memory_pressure"),
    ("gatekeeper_overloaded" + sel('resource="io_pressure"'), 3, "io_pressure"),
    ("gatekeeper_overloaded" + sel('resource="gpu_memory"'), 3, "gpu_memory"),
    ("gatekeeper_overloaded" + sel('resource="gpu_utilization"'), 2, "gpu_utilization"),
    (f"1 - gatekeeper_upstream_up{sel()}", 4, "engine"),
    (f"gatekeeper_draining{sel()}", 5, "draining"),
)

_ELAPSED = signal("generation_elapsed_seconds")
_EXPECTED = gauge("gatekeeper_generation_expected_seconds")
_RUNNING = f"max by (instance) (gatekeeper_in_flight{sel()} > bool 0)"


# --------------------------------------------------------------------------- admission now


def admission(_config: Config) -> Panel:
    code = " or ".join(
        f'label_replace(({expr}) * {weight}, "why", "{why}", "", "")'
        for expr, weight, why in _REASONS
    )
    return stat(
        "Admission",
        "Would a new generation be admitted now? Otherwise the most severe "
        "reason: draining > engine down (no engine answers its probe) > memory > "
        "CPU > busy (a generation is running, the normal state of a working box).",
        [(f"max by (instance) ({code})", "{{instance}}")],
        mappings=STATE_CODES,
        steps=((None, "green"), (1, "blue"), (2, "red")),
    )


def why_not(_config: Config) -> Panel:
    return stat(
        "Why not",
        "Each reason a generation would be turned away (reason codes of "
        "X-Gatekeeper-Reason). CPU and memory follow the hysteresis: over reject_above, "
        "still over until under recover_below.",
        [(f"max by (instance) ({expr})", why) for expr, _, why in _REASONS],
        mappings=((0, "no", "green"), (1, "YES", "orange")),
        steps=((None, "green"), (1, "orange")),
        text_mode="value_and_name",
    )


def in_flight(config: Config) -> Panel:
    return timeseries(
        "In flight vs limit",
        "Admitted generations running, and admission.max_in_flight "
        f"(configured: {config.admission.max_in_flight}).",
        [
            (signal("in_flight"), "in flight"),
            (gauge("gatekeeper_max_in_flight"), "limit"),
        ],
        unit="none",
        custom={"lineInterpolation": "stepAfter"},
        decimals=0,
        overrides=[dashed("limit", "red")],
    )


def engine(_config: Config) -> Panel:
    return stat(
        "Engine",
        "Periodic probe of the upstream (upstream.probe): any HTTP answer is up. "
        "Also drives /readyz.",
        [(signal("upstream_up"), "{{instance}}")],
        mappings=((1, "up", "green"), (0, "DOWN", "red")),
        steps=((None, "red"), (1, "green")),
    )


def engines(config: Config) -> Panel:
    names = ", ".join(f"{e.name} ({e.max_in_flight})" for e in config.upstream.engines)
    return timeseries(
        "Engines: running vs slots",
        "Generations running on each engine (gatekeeper_engine_in_flight) and its own "
        f"slots (upstream.engines[].max_in_flight; configured: {names}). An engine down "
        "(gatekeeper_engine_up 0) is drawn at -1: it gets no new generation.",
        [
            (f"max by (engine) (gatekeeper_engine_in_flight{sel()})", "{{engine}} running"),
            (f"max by (engine) (gatekeeper_engine_max_in_flight{sel()})", "{{engine}} slots"),
            (f"-1 * (1 - min by (engine) (gatekeeper_engine_up{sel()}))", "{{engine}} down"),
        ],
        unit="none",
        custom={"lineInterpolation": "stepAfter"},
        decimals=0,
    )


def generation_elapsed(config: Config) -> Panel:
    return timeseries(
        "Running generation: elapsed vs expected",
        "Age of the oldest running generation (0 when idle) and the current "
        "estimate of a generation's duration: the median of the last 20 completed ones, "
        f"starting from admission.expected_seconds ({config.admission.expected_seconds:g} "
        "s). Retry-After is expected - elapsed.",
        [(_ELAPSED, "elapsed"), (_EXPECTED, "expected")],
        unit="s",
        overrides=[dashed("expected", "yellow")],
    )


def generation_progress(config: Config) -> Panel:
    return bargauge(
        "Running generation: progress",
        "elapsed / expected of the oldest running generation, and the time "
        "left (both 0 when idle). Over 100 % means it overruns the estimate.",
        [
            (f"100 * {_ELAPSED} / {_EXPECTED}", "progress"),
            (f"clamp_min({_EXPECTED} - {_ELAPSED}, 0) * {_RUNNING}", "time left"),
        ],
        steps=((None, "blue"), (100, "orange")),
        overrides=[
            override("progress", {"unit": "percent", "max": 100}),
            override("time left", {"unit": "s", "max": config.admission.expected_seconds}),
        ],
        display_mode="basic",
        name_placement="top",
    )


# --------------------------------------------------------------------------- traffic


def requests_per_minute(_config: Config) -> Panel:
    return timeseries(
        "Requests per minute by route and outcome",
        "admitted (generations started), passed (forwarded without "
        "admission), rejected (busy, cpu, memory, draining, 413...), blocked (block routes).",
        [(per_minute("route, outcome", "gatekeeper_requests_total"), "{{route}} {{outcome}}")],
        unit="short",
        overrides=[
            colored(".* rejected", "orange"),
            colored(".* blocked", "red"),
            colored(".* admitted", "green"),
        ],
    )


def rejections_per_minute(_config: Config) -> Panel:
    return timeseries(
        "Turned away per minute by reason",
        "Rejections by reason code (the X-Gatekeeper-Reason header): busy, "
        "cpu, memory, draining, blocked, body_too_large, bad_request, ...",
        [(per_minute("reason", "gatekeeper_rejections_total"), "{{reason}}")],
        unit="short",
        custom={"stacking": {"mode": "normal", "group": "A"}},
    )


def refusals_paced(_config: Config) -> Panel:
    return timeseries(
        "Refusals answered later per minute (retry storm paced)",
        "Past limits.refusal_pacing.rate refusals a second, each refusal waits its turn"
        " (at most max_delay) before its answer, so clients retrying at once are slowed"
        " to the pace instead of taking the engine's CPU. Above 0: someone is flooding"
        " (runbook: a flood of refused requests).",
        [(f"sum(rate(gatekeeper_refusals_paced_total{sel()}[$__rate_interval])) * 60", "paced")],
        unit="short",
    )


def requests_in_range(_config: Config) -> Panel:
    return _counted("Requests in the time range", "gatekeeper_requests_total", "outcome", "blue")


def rejections_in_range(_config: Config) -> Panel:
    return _counted(
        "Turned away in the time range, by reason",
        "gatekeeper_rejections_total",
        "reason",
        "orange",
    )


def _counted(title: str, counter: str, label: str, color: str) -> Panel:
    """Whole counts of ``counter`` in the time range, one bar per value of ``label``."""
    return bargauge(
        title,
        None,
        [(in_range(label, counter), "{{" + label + "}}")],
        steps=((None, color),),
        unit="short",
        decimals=0,
    )


# --------------------------------------------------------------------------- resources


def cpu(config: Config) -> Panel:
    return _resource(config, "cpu", "CPU", config.admission.resources.cpu_percent)


def memory(config: Config) -> Panel:
    return _resource(config, "memory", "Memory", config.admission.resources.memory_percent)


def _resource(config: Config, key: str, label: str, th: Threshold) -> Panel:
    """The reading admission uses for ``key``, with the hysteresis band drawn on it."""
    overloaded = gauge("gatekeeper_overloaded", f'resource="{key}"')
    return timeseries(
        f"{label} % (reject above {th.reject_above:g}, recover below {th.recover_below:g})",
        f"The {key} reading admission uses (source: {config.admission.resources.source}). "
        f"Over {th.reject_above:g} % generations are rejected with reason '{key}' "
        f"until it falls under {th.recover_below:g} % "
        f"(admission.resources.{key}_percent in rules.yaml). "
        "The shaded band is the hysteresis.",
        [
            (signal(f"{key}_percent"), label),
            (f"100 * {overloaded}", "overloaded"),
        ],
        unit="percent",
        custom={"fillOpacity": 0, "thresholdsStyle": {"mode": "line+area"}},
        maximum=100,
        steps=(
            (None, "transparent"),
            (th.recover_below, "rgba(255, 152, 48, 0.25)"),
            (th.reject_above, "rgba(242, 73, 92, 0.35)"),
        ),
        overrides=[
            override(
                "overloaded",
                {
                    "color": fixed("red"),
                    "custom.fillOpacity": 15,
                    "custom.lineWidth": 0,
                    "custom.lineInterpolation": "stepAfter",
                },
            )
        ],
    )


# --------------------------------------------------------------------------- engine


def generation_duration(config: Config) -> Panel:
    # Every route that generates (admit, queue, gradio: Route.generates) is timed the same.
    admit = [r.name for r in config.routes if r.generates]
    routes = routes_regex(admit)
    bucket = (
        "sum by (le, route) (increase(gatekeeper_upstream_request_duration_seconds_bucket"
        + sel(f'route=~"{routes}"', 'code=~"2.."')
        + f"[{DURATION_WINDOW}]))"
    )
    return timeseries(
        f"Generation duration p50 / p95 (trailing {DURATION_WINDOW})",
        "From the gatekeeper_upstream_request_duration_seconds histogram "
        f"(buckets up to 1800 s) of the gated routes ({', '.join(admit) or 'none'}), "
        "successful answers only, over the trailing window; and the estimate gatekeeper "
        "uses for Retry-After.",
        [
            (f"histogram_quantile(0.5, {bucket})", "p50 {{route}}"),
            (f"histogram_quantile(0.95, {bucket})", "p95 {{route}}"),
            (_EXPECTED, "estimate"),
        ],
        unit="s",
        overrides=[dashed("estimate", "yellow")],
    )


def upstream_errors(_config: Config) -> Panel:
    return timeseries(
        "Upstream errors per minute by kind, and engine up",
        "connect / timeout / pool / protocol failures talking to the engine, "
        "and clients that left mid-request (client_disconnect), per minute; 'engine up' "
        "is the probe (1 = up).",
        [
            (per_minute("kind", "gatekeeper_upstream_errors_total"), "{{kind}}"),
            (signal("upstream_up"), "engine up"),
        ],
        unit="short",
        overrides=[
            override(
                "engine up",
                {
                    "custom.fillOpacity": 0,
                    "custom.lineInterpolation": "stepAfter",
                    "custom.axisPlacement": "right",
                    "max": 1,
                    "color": fixed("green"),
                },
            )
        ],
    )


def alerts_firing(_config: Config) -> Panel:
    # Issue #4 exports gatekeeper_alerts_firing{alertname, severity}; the fallback keeps
    # the panel meaningful ("none") on a gatekeeper without alert rules.
    firing = f"max by (alertname, severity) (gatekeeper_alerts_firing{sel()})"
    return stat(
        "Alerts firing",
        "gatekeeper's own alert rules (alerts: in rules.yaml): 1 while an "
        "alert fires. Details: the admin status page or Alertmanager.",
        [
            (f"sum(gatekeeper_alerts_firing{sel()}) or vector(0)", "firing"),
            (
                f'{firing} or on() label_replace(vector(0), "alertname", "none", "", "")',
                "{{alertname}} {{severity}}",
            ),
        ],
        steps=((None, "green"), (1, "red")),
        decimals=0,
        text_mode="value_and_name",
    )
