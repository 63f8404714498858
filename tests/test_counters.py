"""Counters: one call updates the Prometheus series and the totals /status reads."""

from __future__ import annotations

import pytest

from gatekeeper.app.wiring import create_state
from gatekeeper.config import load_config
from gatekeeper.observability.counters import Counters
from gatekeeper.observability.metrics import Metrics


def sample(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_request_counts_both_views() -> None:
    """A request outcome shows in the labelled counter and in the per-outcome total."""
    m = Metrics()
    c = Counters(m)
    c.request("generate", "admitted")
    c.request("files", "passed")
    c.request("generate", "admitted")
    c.request("generate", "queued")
    assert c.outcomes == {
        "admitted": 2,
        "passed": 1,
        "rejected": 0,
        "blocked": 0,
        "queued": 1,
        "coalesced": 0,
    }
    assert sample(m, "gatekeeper_requests_total", route="generate", outcome="admitted") == 2
    assert sample(m, "gatekeeper_requests_total", route="files", outcome="passed") == 1


def test_rejection_and_upstream_error_count_both_views() -> None:
    """Rejections (by reason) and upstream errors (by kind) are totalled across routes
    and counted per route in Prometheus."""
    m = Metrics()
    c = Counters(m)
    c.rejection("generate", "busy")
    c.rejection("remix", "busy")
    c.upstream_error("generate", "timeout")
    assert c.rejections_by_reason == {"busy": 2}
    assert c.upstream_errors_by_kind == {"timeout": 1}
    assert sample(m, "gatekeeper_rejections_total", route="remix", reason="busy") == 1
    assert sample(m, "gatekeeper_upstream_errors_total", route="generate", kind="timeout") == 1


def test_views_are_copies() -> None:
    """A reader cannot change the totals by mutating what it was given."""
    c = Counters(Metrics())
    c.rejection("generate", "busy")
    view = c.rejections_by_reason
    assert isinstance(view, dict)
    view["busy"] = 99
    assert c.rejections_by_reason == {"busy": 1}


def test_unknown_outcome_is_an_error() -> None:
    """Outcomes are a closed set: a typo fails loudly instead of starting a new total."""
    with pytest.raises(KeyError):
        Counters(Metrics()).request("generate", "admited")


async def test_probe_verdict_is_exported_through_set_upstream_up() -> None:
    """gatekeeper_upstream_up follows AppState.set_upstream_up (0 before any answer)."""
    st = await create_state(load_config(""))
    try:
        assert sample(st.metrics, "gatekeeper_upstream_up") == 0
        st.set_upstream_up(True)
        assert st.upstream_up is True
        assert sample(st.metrics, "gatekeeper_upstream_up") == 1
        st.set_upstream_up(False)
        assert sample(st.metrics, "gatekeeper_upstream_up") == 0
    finally:
        await st.runtime.close()
