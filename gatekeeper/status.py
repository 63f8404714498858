"""The status document: what a person (or the frontend) needs to know right now.

One function from live state to a JSON-ready dict, shared by the admin
``/status`` endpoint, the public status path, the CLI and the demo.

``accepting`` and ``reasons`` say what the gate would do with a new generation
now, nothing else. The upstream probe gates admission per engine (issue #11
§1): an engine whose last probe failed gets no new generation, so with several
engines the next job goes to one that answers; with none answering a generation
is refused ``engine_down`` (a queued job waits). Every engine down is also the
warning ``upstream_unavailable``. ``engines`` lists each engine: its state, its
slots and what runs on it.
"""

from __future__ import annotations

from typing import Any

from .jobviews import jobs_status, queue_status
from .logs import redact_url
from .state import AppState


def status_document(st: AppState) -> dict[str, Any]:
    now = st.clock()
    gate = st.gate
    cfg = st.config
    reasons = gate.reasons(now)
    warnings = ["upstream_unavailable"] if st.upstream_up is False else []
    rejection = gate.check(now)
    expected = gate.estimator.expected
    res = gate.resources
    r = cfg.admission.resources
    running_on = {e.name: 0 for e in cfg.upstream.engines}
    for t in gate.running():
        running_on[t.engine] = running_on.get(t.engine, 0) + 1
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
    listed = {e.name for e in cfg.upstream.engines}
    for name in running_on:  # removed by a reload, finishing its job
        if name not in listed:
            engines.append(
                {
                    "name": name,
                    "url": None,
                    "up": gate.engine_up.get(name),
                    "in_flight": gate.in_flight_on(name),
                    "max_in_flight": 0,
                    "removed": True,
                }
            )
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
            }
            for t in gate.running()
        ],
        "retry_after": rejection.retry_after if rejection is not None else None,
        "expected_seconds": round(expected, 3),
        "expected_samples": gate.estimator.samples,
        "cpu_percent": round(res.cpu_percent, 1),
        "memory_percent": round(res.memory_percent, 1),
        "overloaded": {"cpu": res.cpu_overloaded, "memory": res.memory_overloaded},
        "thresholds": {
            "cpu_percent": {
                "reject_above": r.cpu_percent.reject_above,
                "recover_below": r.cpu_percent.recover_below,
            },
            "memory_percent": {
                "reject_above": r.memory_percent.reject_above,
                "recover_below": r.memory_percent.recover_below,
            },
        },
        "upstream_up": st.upstream_up,
        "engines": engines,
        "draining": gate.draining,
        "counts": dict(st.counters.outcomes),
        "rejections_by_reason": dict(st.counters.rejections_by_reason),
        "uptime_seconds": round(st.clock() - st.started_monotonic, 1),
        "alerts": list(st.alerts_firing),
        **(
            {"queue": queue_status(st.jobs, now), "jobs": jobs_status(st.jobs)}
            if st.jobs is not None
            else {}
        ),
    }
