"""Table tests of the pure admission core: decisions, hysteresis, slots, estimates."""

from __future__ import annotations

import asyncio

import pytest

from gatekeeper.config import Resources, Threshold
from gatekeeper.core.admission import Gate, GateLimits, Rejection, decide, retry_after
from gatekeeper.core.estimator import DurationEstimator
from gatekeeper.core.lease import Lease
from gatekeeper.core.readings import Readings, ResourceState, next_overloaded

CPU = Threshold(reject_above=90, recover_below=75)


@pytest.mark.parametrize(
    ("overloaded", "reading", "expected"),
    [
        (False, 50, False),
        (False, 90, False),  # at the threshold is not over it
        (False, 90.1, True),
        (True, 89, True),  # between the thresholds: stays overloaded (hysteresis)
        (True, 75, True),  # at recover_below: not yet under it
        (True, 74.9, False),
        (False, 80, False),  # between the thresholds: stays clear
    ],
)
def test_hysteresis_table(overloaded: bool, reading: float, expected: bool) -> None:
    """Trip strictly above reject_above; clear only strictly below recover_below."""
    assert next_overloaded(overloaded, reading, CPU) is expected


def test_resource_state_sequence() -> None:
    """A reading series walks the hysteresis state for both resources independently."""
    mem = Threshold(90, 80)
    st = ResourceState()
    seen = []
    for cpu, m in [(50, 50), (95, 50), (80, 95), (70, 85), (70, 79)]:
        st = st.advance(Readings(cpu, m), Resources(cpu_percent=CPU, memory_percent=mem), now=0)
        seen.append((st.cpu_overloaded, st.memory_overloaded))
    assert seen == [(False, False), (True, False), (True, True), (False, True), (False, False)]


LIM = GateLimits(max_in_flight=1, retry_after_default=30)
OK = ResourceState()
HOT = ResourceState(cpu_percent=95, cpu_overloaded=True)
FULL = ResourceState(memory_percent=95, memory_overloaded=True)
BOTH = ResourceState(cpu_overloaded=True, memory_overloaded=True)


@pytest.mark.parametrize(
    ("in_flight", "resources", "draining", "elapsed", "expected"),
    [
        (0, OK, False, [], None),
        (1, OK, False, [100.0], Rejection("busy", 500)),
        (1, OK, False, [599.2], Rejection("busy", 1)),  # ceil(0.8)
        (1, OK, False, [700.0], Rejection("busy", 1)),  # overrunning: clamped to >= 1
        (0, HOT, False, [], Rejection("cpu", 30)),  # nothing running: the default
        (0, FULL, False, [], Rejection("memory", 30)),
        (0, BOTH, False, [], Rejection("cpu", 30)),  # cpu is reported before memory
        (1, HOT, False, [300.0], Rejection("busy", 300)),  # busy beats cpu: it has an ETA
        (1, OK, True, [300.0], Rejection("draining", 30)),  # draining beats everything
        (0, OK, True, [], Rejection("draining", 30)),
    ],
)
def test_decide_table(
    in_flight: int,
    resources: ResourceState,
    draining: bool,
    elapsed: list[float],
    expected: Rejection | None,
) -> None:
    """The decision and its reason/Retry-After for each combination of facts."""
    got = decide(
        in_flight=in_flight,
        limits=LIM,
        resources=resources,
        draining=draining,
        expected=600.0,
        running_elapsed=elapsed,
    )
    assert got == expected


@pytest.mark.parametrize(
    ("expected", "elapsed", "default", "want"),
    [
        (600, [], 30, 30),
        (600, [0.0], 30, 600),
        (600, [10.0, 500.0], 30, 100),  # the one closest to finishing frees a slot first
        (600, [600.0], 30, 1),
        (0.4, [0.0], 30, 1),
    ],
)
def test_retry_after_table(expected: float, elapsed: list[float], default: int, want: int) -> None:
    """Retry-After is the time left of the generation nearest completion, at least 1 s."""
    assert retry_after(expected, elapsed, default) == want


def test_gate_is_exact_and_releases_once() -> None:
    """try_admit never overshoots max_in_flight; a ticket frees its slot exactly once."""
    gate = Gate(GateLimits(max_in_flight=2, retry_after_default=30), DurationEstimator(600))
    results = [gate.try_admit("generate", now=float(i)) for i in range(500)]
    tickets = [r for r in results if isinstance(r, Lease)]
    assert len(tickets) == 2
    assert gate.in_flight == 2
    assert all(isinstance(r, Rejection) and r.reason == "busy" for r in results[2:])
    assert tickets[0].release() is True
    assert tickets[0].release() is False  # idempotent: no double free
    assert gate.in_flight == 1
    assert isinstance(gate.try_admit("generate", now=600.0), Lease)
    assert isinstance(gate.try_admit("generate", now=600.0), Rejection)


def test_lowering_limit_never_cancels_running() -> None:
    """A lower max_in_flight stops new admissions until the count falls; tickets live on."""
    gate = Gate(GateLimits(max_in_flight=3, retry_after_default=30), DurationEstimator(600))
    tickets = [gate.try_admit("g", now=0.0) for _ in range(3)]
    gate.limits = GateLimits(max_in_flight=1, retry_after_default=30)
    assert gate.in_flight == 3
    assert isinstance(gate.try_admit("g", now=1.0), Rejection)
    for t in tickets[:2]:
        assert isinstance(t, Lease)
        t.release()
    assert isinstance(gate.try_admit("g", now=2.0), Rejection)  # 1 running = limit
    assert isinstance(tickets[2], Lease)
    tickets[2].release()
    assert isinstance(gate.try_admit("g", now=3.0), Lease)


def test_gate_reasons_lists_every_cause() -> None:
    """reasons() lists every cause at once; check() gives only the first."""
    gate = Gate(LIM, DurationEstimator(600))
    gate.try_admit("g", now=0.0)
    gate.resources = BOTH
    gate.draining = True
    assert gate.reasons(10.0) == ["draining", "busy", "cpu", "memory"]
    rej = gate.check(10.0)
    assert rej is not None and rej.reason == "draining"


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([], 600.0),
        ([300.0], 300.0),
        ([300.0, 400.0, 10_000.0], 400.0),  # an outlier does not drag the estimate
        ([100.0] * 25 + [500.0] * 11, 500.0),  # only the last 20 count
    ],
)
def test_duration_estimator(samples: list[float], expected: float) -> None:
    """The estimate is the prior until samples arrive, then the median of the last 20."""
    est = DurationEstimator(prior=600.0)
    for s in samples:
        est.observe(s)
    assert est.expected == expected


async def _settle(n: int = 10) -> None:
    """Let ready tasks run without letting the clock advance."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_wait_idle_returns_at_once_when_nothing_runs() -> None:
    """An idle gate's wait_idle completes without waiting."""
    gate = Gate(GateLimits(max_in_flight=2, retry_after_default=30), DurationEstimator(600))
    await asyncio.wait_for(gate.wait_idle(), timeout=1.0)


async def test_wait_idle_wakes_when_the_last_ticket_is_released() -> None:
    """wait_idle waits while any ticket is held and returns as soon as the last one is
    released: an event, not a poll (no clock time passes between release and return)."""
    gate = Gate(GateLimits(max_in_flight=2, retry_after_default=30), DurationEstimator(600))
    a, b = gate.try_admit("generate", 0.0), gate.try_admit("generate", 0.0)
    assert isinstance(a, Lease) and isinstance(b, Lease)
    waiter = asyncio.create_task(gate.wait_idle())
    await _settle()
    a.release()
    await _settle()
    assert not waiter.done()  # one generation still runs
    c = gate.try_admit("generate", 1.0)  # a new one taken before the last ends
    assert isinstance(c, Lease)
    b.release()
    await _settle()
    assert not waiter.done()
    c.release()
    await _settle()
    assert waiter.done()
