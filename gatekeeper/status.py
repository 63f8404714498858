"""The status document: what a person (or the frontend) needs to know right now.

One function from live state to a JSON-ready dict, shared by the admin
``/status`` endpoint, the public status path, the CLI and the demo.

``accepting`` and ``reasons`` say what the gate would do with a new generation
now, nothing else. The upstream probe does not gate admission, on purpose: a
probe can be wrong (a slow health path, a proxy in between), and refusing on
its word would turn a flaky probe into an outage. So an engine that does not
answer its probe is a *warning* (``warnings: ["upstream_unavailable"]``): the
gate still admits, and the request gets 502 ``upstream_unavailable`` if the
engine really is gone.
"""

from __future__ import annotations

from typing import Any

from .jobviews import jobs_status, queue_status
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
    return {
        "accepting": not reasons,
        "reasons": reasons,
        "warnings": warnings,
        "in_flight": gate.in_flight,
        "max_in_flight": gate.limits.max_in_flight,
        "running": [
            {
                "route": t.route,
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
