"""The gauges that mirror live state, pointed at it once and read at scrape time.

A gauge set by hand is only as true as the last code path that remembered to
set it; ``set_function`` makes a scrape read the gate, the monitor's view, the
probe's verdict, the reload flag and the waiting room as they are at that instant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Protocol

from gatekeeper.config import Engine
from gatekeeper.core.admission import Gate
from gatekeeper.core.vocab import RESOURCE_REASONS, AdmitReason
from gatekeeper.observability.alerts.inputs import (
    Boxes,
    Readings,
    queue_bounds,
    queue_depth,
    queue_oldest_wait,
    results_bytes,
    state_db_detached,
    state_free_bytes,
)
from gatekeeper.observability.metrics import Metrics
from gatekeeper.resources.samplers import HOST_SIGNALS, Sample


class Mirrored(Readings, Protocol):
    """What the gauges mirror: the alert inputs' readings, the clock and the host sample
    (``host_publisher`` keeps the monitor's last one here). The app's state is one."""

    host: Sample | None

    @property
    def metrics(self) -> Metrics: ...

    @property
    def clock(self) -> Callable[[], float]: ...


def wire_gauges(st: Mirrored) -> None:
    """Point the state-mirroring gauges of ``st.metrics`` at ``st``."""
    m, gate = st.metrics, st.gate

    def oldest_elapsed() -> float:
        elapsed = gate.elapsed(st.clock())
        return max(elapsed) if elapsed else 0.0

    def oldest_progress() -> float:
        reported = [t.progress for t in gate.running() if t.progress is not None]
        return reported[0] if reported else 0.0

    m.in_flight.set_function(lambda: gate.in_flight)
    m.generation_progress.set_function(oldest_progress)
    m.max_in_flight.set_function(lambda: gate.limits.max_in_flight)
    m.generation_elapsed.set_function(oldest_elapsed)
    m.generation_expected.set_function(lambda: gate.estimator.expected)
    m.cpu_percent.set_function(lambda: gate.resources.cpu_percent)
    m.memory_percent.set_function(lambda: gate.resources.memory_percent)
    for reason in RESOURCE_REASONS:
        m.overloaded.labels(reason).set_function(partial(_overloaded, st, reason))
    for name in HOST_SIGNALS:
        m.signal_live.labels(name).set_function(partial(_live, st, name))
    m.cgroup_memory_max.set_function(
        lambda: float(st.host.cgroup.memory_max or 0) if st.host and st.host.cgroup else 0.0
    )
    m.cgroup_cpu_limit.set_function(
        lambda: float(st.host.cgroup.cpu_cores or 0) if st.host and st.host.cgroup else 0.0
    )
    m.upstream_up.set_function(lambda: float(st.upstream_up is True))
    m.draining.set_function(lambda: float(gate.draining))
    m.config_reload_failed.set_function(lambda: float(st.config_reload_failed))
    m.queue_depth.set_function(lambda: queue_depth(st))
    m.queue_capacity.set_function(lambda: queue_bounds(st)[0])
    m.queue_oldest_wait.set_function(lambda: queue_oldest_wait(st, st.clock()))
    m.queue_max_wait.set_function(lambda: queue_bounds(st)[1])
    m.results_bytes.set_function(lambda: results_bytes(st))
    m.state_free_bytes.set_function(lambda: _or_nan(state_free_bytes(st)))
    m.state_db_detached.set_function(lambda: state_db_detached(st))
    wire_engine_gauges(m, gate, st.config.upstream.engines)


def wire_engine_gauges(m: Metrics, gate: Gate, engines: Iterable[Engine]) -> None:
    """The per-engine series of ``engines``, the current ones (at start and after each
    reload: a removed engine's series go, an added one's come at 0)."""
    engines = tuple(engines)
    names = {e.name for e in engines}
    for family in (m.engine_up, m.engine_in_flight, m.engine_max_in_flight):
        for labels in [s.labels["engine"] for s in _samples(family)]:
            if labels not in names:
                family.remove(labels)
    for e in engines:
        up, in_flight = _readers(gate, e.name)
        m.engine_up.labels(e.name).set_function(up)
        m.engine_in_flight.labels(e.name).set_function(in_flight)
        m.engine_max_in_flight.labels(e.name).set(e.max_in_flight)
        m.engine_admitted.labels(e.name)


def box_gauges(m: Metrics, boxes: Boxes, clock: Callable[[], float]) -> Callable[[], None]:
    """Point the shared store's gauges (issue #21) at ``boxes``; returns what to call
    after each read of the boxes, which gives each box that came its series and takes
    those of the boxes that went (stopped, or their rows deleted)."""
    m.shared_queue_depth.set_function(lambda: _or_nan(boxes.queued))
    m.shared_queue_running.set_function(lambda: _or_nan(boxes.running))

    def age(box: str) -> float:
        return boxes.ages(clock()).get(box, float("nan"))

    def running(box: str) -> float:
        return float(boxes.running_on().get(box, 0))

    def follow() -> None:
        ids = set(boxes.ages(clock()))
        for family in (m.box_heartbeat_age, m.box_running_jobs):
            for gone in {s.labels["box"] for s in _samples(family)} - ids:
                family.remove(gone)
        for box in ids:
            m.box_heartbeat_age.labels(box).set_function(partial(age, box))
            m.box_running_jobs.labels(box).set_function(partial(running, box))

    return follow


def _readers(gate: Gate, name: str) -> tuple[Callable[[], float], Callable[[], float]]:
    return (lambda: float(gate.engine_up.get(name) is True)), (lambda: gate.in_flight_on(name))


def _samples(family: Any) -> list[Any]:
    return [s for metric in family.collect() for s in metric.samples]


def _or_nan(v: float | None) -> float:
    return float("nan") if v is None else v


def _overloaded(st: Mirrored, reason: AdmitReason) -> float:
    return float(st.gate.resources.overloaded()[reason])


def _live(st: Mirrored, name: str) -> float:
    sig = st.host.signals.get(name) if st.host is not None else None
    return float(sig is not None and sig.live)


def host_publisher(st: Mirrored) -> Callable[[Sample], None]:
    """The monitor's ``on_sample``: keep the sample on ``st`` (``/status``) and give each
    PSI line and GPU device its series the first time it is read. A series is born only
    for what this box has: no ``gatekeeper_gpu_memory_percent`` on a box without NVML;
    one that goes away later reads NaN."""
    m = st.metrics
    wired: set[tuple[str, ...]] = set()
    nan = float("nan")

    def pressure(resource: str, line: str) -> float:
        p = st.host.pressure.get(resource) if st.host is not None else None
        v = p.line(line) if p is not None else None
        return nan if v is None else v

    def gpu(index: int, what: str) -> float:
        for d in st.host.gpus if st.host is not None else ():
            if d.index == index:
                v = getattr(d, what)
                return nan if v is None else float(v)
        return nan

    def publish(sample: Sample) -> None:
        st.host = sample
        for resource, p in sample.pressure.items():
            for line in ("some", "full"):
                if p.line(line) is not None and ("psi", resource, line) not in wired:
                    wired.add(("psi", resource, line))
                    m.pressure.labels(resource, line).set_function(
                        partial(pressure, resource, line)
                    )
        for d in sample.gpus:
            if ("gpu", str(d.index)) not in wired:
                wired.add(("gpu", str(d.index)))
                m.gpu_memory.labels(str(d.index)).set_function(
                    partial(gpu, d.index, "memory_percent")
                )
                m.gpu_utilization.labels(str(d.index)).set_function(
                    partial(gpu, d.index, "utilization_percent")
                )

    return publish
