"""The status document: what a person (or the frontend) needs to know right now.

One function from live state to a JSON-ready dict, shared by the admin
``/status`` endpoint, the public status path, the CLI and the demo.

``accepting`` and ``reasons`` say what the gate would do with a new generation
now, nothing else. The upstream probe gates admission per engine (issue #11
§1): an engine whose last probe failed gets no new generation, so with several
engines the next job goes to one that answers; with none answering a generation
is refused ``engine_down`` (a queued job waits). Every engine down is also the
warning ``upstream_unavailable``. ``engines`` lists each engine: its state, its
slots and what runs on it. The waiting room's sections (``queue``, ``jobs``)
come from the source (``StatusSource.queue_sections``): the jobs feature sits
above observability and renders its own; they list the running jobs and the
first ``STATUS_ENTRIES`` waiting ones (``?limit=N`` or ``?limit=all``), with
the totals, so the document stays cheap at 10,000 waiting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from gatekeeper.config import Config, Resources, Threshold
from gatekeeper.core.admission import Gate
from gatekeeper.observability.counters import Counters
from gatekeeper.observability.logs import redact_url
from gatekeeper.observability.ungated import UngatedWatch
from gatekeeper.resources.samplers import HOST_SIGNALS, Sample


class StatusSource(Protocol):
    """What the status document reads of the running gatekeeper (the app's state is one)."""

    @property
    def config(self) -> Config: ...

    @property
    def gate(self) -> Gate: ...

    @property
    def counters(self) -> Counters: ...

    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def started_monotonic(self) -> float: ...

    @property
    def upstream_up(self) -> bool | None: ...

    @property
    def host(self) -> Sample | None: ...

    @property
    def alerts_firing(self) -> list[dict[str, Any]]: ...

    @property
    def ungated(self) -> UngatedWatch: ...

    def queue_sections(self, now: float, limit: int | None) -> Mapping[str, Any]:
        """The waiting room's ``queue`` and ``jobs`` sections; empty without one.
        ``queue.entries`` lists the running jobs and the first ``limit`` waiting (None: all)."""


# The waiting jobs a status document lists by default: the first ones, in the order they
# will start (issue #18 §6: listing 10,000 is one ~80 ms event-loop callback). The
# ``limit`` query parameter of /status and of the public status path lists N, or ``all``.
STATUS_ENTRIES = 100


def entries_limit(query: Mapping[str, str]) -> int | None:
    """The ``limit`` query parameter: a count (>= 0), ``all`` (None: every waiting job),
    or absent (``STATUS_ENTRIES``). ValueError, with the text a 400 shows, otherwise."""
    raw = query.get("limit")
    if raw is None:
        return STATUS_ENTRIES
    if raw == "all":
        return None
    if raw.isdigit() and len(raw) <= 9:
        return int(raw)
    raise ValueError(
        f"limit must be a count of waiting jobs to list (0 or more) or all, not {raw!r}"
    )


def status_document(st: StatusSource, limit: int | None = STATUS_ENTRIES) -> dict[str, Any]:
    """The document; ``queue.entries`` lists at most ``limit`` waiting jobs (None: all)."""
    now = st.clock()
    gate = st.gate
    cfg = st.config
    reasons = gate.reasons(now)
    warnings = ["upstream_unavailable"] if st.upstream_up is False else []
    ungated = st.ungated.status()
    if ungated is not None:  # generations passing ungated (observability.ungated)
        warnings.append("ungated_generations")
    rejection = gate.check(now)
    expected = gate.estimator.expected
    res = gate.resources
    r = cfg.admission.resources
    engines = [
        {
            "name": e.name,
            "url": redact_url(e.url),
            "up": gate.engine_up.get(e.name),
            "in_flight": gate.in_flight_on(e.name),
            "max_in_flight": e.max_in_flight,
        }
        for e in cfg.upstream.engines
    ]
    # Engines a reload removed while they run a job: shown until it ends (one renamed,
    # its URL kept, is not: its job counts on its new name).
    removed = dict.fromkeys(gate.unlisted())
    engines += [
        {
            "name": name,
            "url": None,
            "up": gate.engine_up.get(name),
            "in_flight": gate.in_flight_on(name),
            "max_in_flight": 0,
            "removed": True,
        }
        for name in removed
    ]
    return {
        "accepting": not reasons,
        "reasons": reasons,
        "warnings": warnings,
        "in_flight": gate.in_flight,
        "max_in_flight": gate.limits.max_in_flight,
        "running": [
            {
                "route": t.route,
                "engine": t.engine,
                "elapsed_seconds": round(now - t.started_at, 3),
                "expected_seconds": round(expected, 3),
                # What the engine itself reports (a Gradio app's progress frames), or None.
                "progress": None if t.progress is None else round(t.progress, 4),
                "progress_description": t.progress_description,
            }
            for t in gate.running()
        ],
        "retry_after": rejection.retry_after if rejection is not None else None,
        "expected_seconds": round(expected, 3),
        "expected_samples": gate.estimator.samples,
        "cpu_percent": round(res.cpu_percent, 1),
        "memory_percent": round(res.memory_percent, 1),
        # The opt-in readings admission compares (issue #11 §3); None: the signal is absent.
        **{k: _round(getattr(res, k)) for k in _OPT_IN_READINGS},
        "overloaded": {str(k): v for k, v in res.overloaded().items()},
        "thresholds": _thresholds(r),
        "signals": signals_status(st.host),
        "upstream_up": st.upstream_up,
        "engines": engines,
        "draining": gate.draining,
        "counts": dict(st.counters.outcomes),
        "rejections_by_reason": dict(st.counters.rejections_by_reason),
        "uptime_seconds": round(st.clock() - st.started_monotonic, 1),
        "alerts": list(st.alerts_firing),
        # Requests that looked like generations but passed ungated: how many, where, latest.
        "ungated": ungated,
        **st.queue_sections(now, limit),
    }


_OPT_IN_READINGS = (
    "cpu_pressure",
    "memory_pressure",
    "io_pressure",
    "gpu_memory_percent",
    "gpu_utilization_percent",
)


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def _threshold(t: Threshold | None) -> dict[str, Any] | None:
    if t is None:
        return None  # not configured: never a reason to reject
    out: dict[str, Any] = {"reject_above": t.reject_above, "recover_below": t.recover_below}
    line = getattr(t, "line", None)
    if line is not None:
        out["line"] = line
    return out


def _thresholds(r: Resources) -> dict[str, Any]:
    return {
        "cpu_percent": _threshold(r.cpu_percent),
        "memory_percent": _threshold(r.memory_percent),
        "cpu_pressure": _threshold(r.cpu_pressure),
        "memory_pressure": _threshold(r.memory_pressure),
        "io_pressure": _threshold(r.io_pressure),
        "gpu_memory_percent": _threshold(r.gpu.memory_percent),
        "gpu_utilization_percent": _threshold(r.gpu.utilization_percent),
    }


def signals_status(sample: Sample | None) -> dict[str, Any]:
    """Each signal: live (and from where, with its readings) or absent (and why)."""
    if sample is None:  # no monitor (in-process tests that turned it off)
        return {name: {"live": False, "reason": "not sampled"} for name in HOST_SIGNALS}
    out: dict[str, Any] = {}
    for name in HOST_SIGNALS:
        sig = sample.signals.get(name)
        if sig is None or not sig.live:
            out[name] = {"live": False, "reason": sig.reason if sig else "not sampled"}
        else:
            out[name] = {"live": True, "source": sig.source}
    if out["cpu"]["live"]:
        out["cpu"]["percent"] = round(sample.cpu_percent, 1)
    if out["memory"]["live"]:
        out["memory"]["percent"] = round(sample.memory_percent, 1)
    cg = sample.cgroup
    if out["cgroup"]["live"] and cg is not None:
        out["cgroup"].update(
            memory_max_bytes=cg.memory_max,
            memory_used_bytes=cg.memory_used if cg.memory_max is not None else None,
            cpu_limit_cores=cg.cpu_cores,
        )
    if out["psi"]["live"]:
        out["psi"]["avg10"] = {
            resource: {"some": p.some, "full": p.full} for resource, p in sample.pressure.items()
        }
    if out["gpu"]["live"]:
        out["gpu"]["devices"] = [
            {
                "index": d.index,
                "name": d.name,
                "memory_percent": _round(d.memory_percent),
                "utilization_percent": _round(d.utilization_percent),
                "memory_used_bytes": d.memory_used,
                "memory_total_bytes": d.memory_total,
            }
            for d in sample.gpus
        ]
    return out
