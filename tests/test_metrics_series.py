"""Metric series exist at 0 before their first event, so rate()/increase() count it (issue #3)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from prometheus_client import generate_latest

from gatekeeper.app.wiring import create_state
from gatekeeper.config import load_config
from gatekeeper.lifecycle.reload import Reloader
from gatekeeper.observability.metrics import Metrics

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


def test_prime_routes_creates_the_queue_series_at_zero() -> None:
    """A queue route gets every gated outcome, the admission and the queue reasons, a
    jobs series per state, its coalesced counter and its wait histogram; other routes
    get none of the queue's series."""
    m = Metrics()
    m.prime_routes([("generate", "queue"), ("remix", "admit")])
    req = "gatekeeper_requests_total"
    rej = "gatekeeper_rejections_total"
    for outcome in ("admitted", "rejected"):
        assert sample(m, req, route="generate", outcome=outcome) == 0
    assert sample(m, req, route="generate", outcome="passed") is None
    assert sample(m, req, route="generate", outcome="blocked") is None
    for reason in ("busy", "cpu", "memory", "draining", "queue_full", "queue_timeout"):
        assert sample(m, rej, route="generate", reason=reason) == 0
    assert sample(m, rej, route="generate", reason="client_limit") == 0
    for state in ("queued", "running", "done", "failed", "cancelled", "expired"):
        assert sample(m, "gatekeeper_jobs_total", route="generate", state=state) == 0
        assert sample(m, "gatekeeper_jobs_total", route="remix", state=state) is None
    assert sample(m, "gatekeeper_coalesced_total", route="generate") == 0
    assert sample(m, "gatekeeper_coalesced_total", route="remix") is None
    assert sample(m, "gatekeeper_queue_wait_seconds_count", route="generate") == 0
    assert sample(m, rej, route="remix", reason="queue_full") is None
    assert sample(m, "gatekeeper_upstream_errors_total", route="generate", kind="timeout") == 0


def test_queue_wait_and_eta_error_buckets() -> None:
    """The wait histogram resolves waits up to an hour; the ETA error one ratios to 5."""
    m = Metrics()
    m.queue_wait.labels("generate").observe(1000)
    m.eta_error.observe(0.15)
    wait = "gatekeeper_queue_wait_seconds_bucket"
    assert sample(m, wait, route="generate", le="900.0") == 0
    assert sample(m, wait, route="generate", le="1200.0") == 1
    assert sample(m, wait, route="generate", le="3600.0") == 1
    eta = "gatekeeper_eta_error_ratio_bucket"
    assert (sample(m, eta, le="0.1"), sample(m, eta, le="0.2"), sample(m, eta, le="5.0")) == (
        0,
        1,
        1,
    )
    m.jobs.labels("generate", "done").inc()
    m.coalesced.labels("generate").inc()
    assert sample(m, "gatekeeper_jobs_total", route="generate", state="done") == 1
    assert sample(m, "gatekeeper_coalesced_total", route="generate") == 1


class FakeJobs:
    """What ``JobService`` gives the gauges: depth, the oldest wait at a time, kept bytes."""

    floor = SimpleNamespace(free=None)  # no free-space sample yet
    db = SimpleNamespace(detached=None)  # the job database at its path

    def __init__(self, depth: int, oldest_arrival: float | None, results: int):
        self._depth, self.oldest_arrival, self.results = depth, oldest_arrival, results

    def depth(self) -> int:
        return self._depth

    def oldest_wait(self, now: float) -> float:
        return 0.0 if self.oldest_arrival is None else now - self.oldest_arrival

    def results_bytes(self) -> int:
        return self.results


async def test_queue_gauges_read_the_waiting_room_at_scrape_time() -> None:
    """An empty waiting room reads 0 and the limits their defaults; with waiters, a
    scrape reads its depth, the oldest wait at the state's clock and the
    kept results' bytes as they are then."""
    now = [500.0]
    st = await create_state(load_config(RULES), clock=lambda: now[0], metrics=Metrics())
    try:
        m = st.metrics

        def gauges() -> tuple[float | None, ...]:
            return tuple(
                sample(m, "gatekeeper_" + name)
                for name in (
                    "queue_depth",
                    "queue_capacity",
                    "queue_oldest_wait_seconds",
                    "queue_max_wait_seconds",
                    "results_bytes",
                )
            )

        real = st.jobs
        assert real is not None and real.depth() == 0
        assert gauges() == (0, 20, 0, 1800, 0)
        jobs = FakeJobs(3, oldest_arrival=440.0, results=12345)
        st.jobs = jobs  # type: ignore[assignment]
        assert gauges() == (3, 20, 60, 1800, 12345)
        now[0] += 30
        jobs._depth, jobs.results = 2, 99
        assert gauges() == (2, 20, 90, 1800, 99)
        assert sample(m, "gatekeeper_eta_error_ratio_count") == 0  # exported before any job
        st.jobs = real
    finally:
        await st.runtime.close()


def test_resource_signal_series_exist_from_the_start() -> None:
    """Every resource reason has its gatekeeper_overloaded series at 0, and an admit
    route its rejection series for the PSI and GPU reasons (issue #11 §3)."""
    m = Metrics()
    m.prime_routes([("generate", "admit")])
    for reason in (
        "cpu",
        "memory",
        "cpu_pressure",
        "memory_pressure",
        "io_pressure",
        "gpu_memory",
        "gpu_utilization",
    ):
        assert sample(m, "gatekeeper_overloaded", resource=reason) == 0
        rej = "gatekeeper_rejections_total"
        assert sample(m, rej, route="generate", reason=reason) == 0


async def test_signal_series_follow_the_monitor(tmp_path: Path) -> None:
    """gatekeeper_signal_live per signal; PSI and GPU series born with their first
    reading (file source), cgroup limits 0 when there is none."""
    from gatekeeper.observability.gauges import host_publisher
    from gatekeeper.resources.samplers import file_sampler

    f = tmp_path / "res.json"
    f.write_text(
        '{"cpu_percent": 1, "memory_percent": 2, "io_pressure": {"some": 3, "full": 1.5},'
        ' "gpu_memory_percent": 70}'
    )
    st = await create_state(load_config(RULES, source=str(tmp_path / "rules.yaml")))
    try:
        m = st.metrics
        assert sample(m, "gatekeeper_signal_live", signal="psi") == 0
        assert sample(m, "gatekeeper_pressure_avg10_percent", resource="io", line="some") is None
        host_publisher(st)(file_sampler(str(f))())
        assert sample(m, "gatekeeper_signal_live", signal="psi") == 1
        assert sample(m, "gatekeeper_signal_live", signal="cgroup") == 0
        assert sample(m, "gatekeeper_pressure_avg10_percent", resource="io", line="full") == 1.5
        assert sample(m, "gatekeeper_gpu_memory_percent", device="0") == 70
        util = sample(m, "gatekeeper_gpu_utilization_percent", device="0")
        assert util is not None and util != util  # NaN: the file gave no utilisation
        assert sample(m, "gatekeeper_cgroup_memory_max_bytes") == 0
        assert sample(m, "gatekeeper_cgroup_cpu_limit_cores") == 0
    finally:
        await st.runtime.close()
