"""Metric series exist at 0 before their first event, so rate()/increase() count it (issue #3)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest

from gatekeeper.app import create_state
from gatekeeper.config import load_config
from gatekeeper.metrics import Metrics
from gatekeeper.reload import Reloader

RULES = """
routes:
  - name: generate
    match: {methods: [POST], path: /generate}
    action: admit
  - name: batch-generate
    match: {methods: [POST], path: /batch-generate}
    action: block
  - name: files
    match: {path: /files/**}
    action: pass
"""


def sample(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_prime_routes_creates_the_usual_series_at_zero() -> None:
    """Admit routes get admitted/rejected and the four admission reasons; block routes
    blocked; admit and pass routes every upstream error kind; nothing is counted."""
    m = Metrics()
    m.prime_routes([("generate", "admit"), ("batch", "block"), ("files", "pass")])
    req = "gatekeeper_requests_total"
    rej = "gatekeeper_rejections_total"
    err = "gatekeeper_upstream_errors_total"
    assert sample(m, req, route="generate", outcome="admitted") == 0
    assert sample(m, req, route="generate", outcome="rejected") == 0
    for reason in ("busy", "cpu", "memory", "draining"):
        assert sample(m, rej, route="generate", reason=reason) == 0
    assert sample(m, req, route="batch", outcome="blocked") == 0
    assert sample(m, rej, route="batch", reason="blocked") == 0
    assert sample(m, req, route="files", outcome="passed") == 0
    for kind in ("connect", "timeout", "pool", "protocol", "client_disconnect"):
        assert sample(m, err, route="generate", kind=kind) == 0
        assert sample(m, err, route="files", kind=kind) == 0
        assert sample(m, err, route="batch", kind=kind) is None
    assert sample(m, req, route="files", outcome="admitted") is None


async def test_state_primes_configured_routes_and_the_default_route(tmp_path: Path) -> None:
    """A new gatekeeper exports its routes' series (and the unmatched 'default' pass
    route's) before any request; after a reload the new routes' too."""
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    st = await create_state(load_config(RULES, source=str(path)))
    rl = Reloader(st, str(path))
    try:
        text = generate_latest(st.metrics.registry).decode()
        assert 'gatekeeper_requests_total{outcome="admitted",route="generate"} 0.0' in text
        assert 'gatekeeper_rejections_total{reason="blocked",route="batch-generate"} 0.0' in text
        assert 'gatekeeper_requests_total{outcome="passed",route="default"} 0.0' in text
        remix = "  - name: remix\n    match: {methods: [POST], path: /remix}\n    action: admit\n"
        path.write_text(RULES + remix)
        assert (await rl.reload("test")).ok
        assert sample(st.metrics, "gatekeeper_rejections_total", route="remix", reason="busy") == 0
        assert (
            sample(st.metrics, "gatekeeper_requests_total", route="remix", outcome="admitted") == 0
        )
    finally:
        await rl.close()
        await st.runtime.close()
