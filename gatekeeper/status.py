"""The status document: what a person (or the frontend) needs to know right now.

One function from live state to a JSON-ready dict, shared by the admin
``/status`` endpoint, the public status path, the CLI and the demo.
"""

from __future__ import annotations

from typing import Any

from .state import AppState


def status_document(st: AppState) -> dict[str, Any]:
    now = st.clock()
    gate = st.gate
    cfg = st.config
    reasons = gate.reasons(now)
    if st.upstream_up is False:
        reasons.append("upstream_unavailable")
    rejection = gate.check(now)
    expected = gate.estimator.expected
    res = gate.resources
    r = cfg.admission.resources
    return {
        "accepting": not reasons,
        "reasons": reasons,
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
    }
