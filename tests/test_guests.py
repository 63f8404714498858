"""Guests of the waiting room (issue #19, ``jobs/guests.py``), in process: a non-durable
entry (a Gradio event) waits in the same fair ring as jobs, gets the slot through the same
dispatch, and leaves at max_wait, on drain or when its client goes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from gatekeeper.app.state import AppState
from gatekeeper.app.wiring import create_state
from gatekeeper.config import load_config
from gatekeeper.core.lease import Lease
from gatekeeper.jobs.service import JobService
from gatekeeper.jobs.upkeep import expire_waiters


@dataclass
class FakeGuest:
    id: str
    client: str
    route: str = "song"
    started: list[str] = field(default_factory=list)  # shared: the order of starts
    lease: Lease | None = None
    gone: tuple[str, str] | None = None

    def start(self, lease: Lease) -> None:
        lease.hand_over("fake-guest")
        self.lease = lease
        self.started.append(self.id)

    def left(self, reason: str, detail: str) -> None:
        self.gone = (reason, detail)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def state() -> AsyncIterator[tuple[AppState, JobService, Clock]]:
    clock = Clock()
    cfg = load_config(
        "admission: {expected_seconds: 100, queue: {max_waiting: 3, per_client: 2, max_wait: 60s}}"
    )
    st = await create_state(cfg, clock=clock)
    for engine in st.gate.engine_up or {"default": None}:
        st.gate.engine_up[engine] = True
    assert st.jobs is not None
    try:
        yield st, st.jobs, clock
    finally:
        await st.jobs.close()
        await st.runtime.close()


async def test_guests_take_turns_across_client_keys_and_share_the_slot(
    state: tuple[AppState, JobService, Clock],
) -> None:
    """With the slot taken, A1 A2 B1 wait; each release starts the next in the fair
    order A1 B1 A2, and the places reported move up."""
    st, jobs, _ = state
    running = st.gate.try_admit("song", st.clock())
    assert isinstance(running, Lease)
    order: list[str] = []
    a1, a2, b1 = (
        FakeGuest(i, c, started=order) for i, c in (("a1", "A"), ("a2", "A"), ("b1", "B"))
    )
    for g in (a1, a2, b1):
        assert jobs.seat(g) is None
    assert [jobs.place(g.id).position for g in (a1, b1, a2)] == [1, 2, 3]  # type: ignore[union-attr]
    place = jobs.place("a2")
    assert place is not None and place.waiting == 3 and place.done_in > 200
    running.release()
    assert order == ["a1"] and st.gate.in_flight == 1 and jobs.place("a1") is None
    assert a1.lease is not None
    a1.lease.release()
    assert order == ["a1", "b1"]
    assert b1.lease is not None
    b1.lease.release()
    assert order == ["a1", "b1", "a2"] and jobs.depth() == 0


async def test_a_guest_with_a_free_slot_starts_at_once(
    state: tuple[AppState, JobService, Clock],
) -> None:
    """Nobody waits and the slot is free: seating starts it before seat() returns."""
    _, jobs, _ = state
    g = FakeGuest("g", "A")
    assert jobs.seat(g) is None
    assert g.started == ["g"] and jobs.depth() == 0


async def test_the_room_refuses_a_guest_as_it_refuses_a_job(
    state: tuple[AppState, JobService, Clock],
) -> None:
    """queue_full once max_waiting (3) wait; client_limit for a client at per_client (2)."""
    st, jobs, _ = state
    assert isinstance(st.gate.try_admit("song", st.clock()), Lease)
    for g in (FakeGuest("x0", "X"), FakeGuest("x1", "X"), FakeGuest("y0", "Y")):
        assert jobs.seat(g) is None
    refused = jobs.seat(FakeGuest("z", "Z"))
    assert refused is not None and refused.reason == "queue_full" and refused.status == 503
    assert jobs.unseat("y0")
    refused = jobs.seat(FakeGuest("x2", "X"))
    assert refused is not None and refused.reason == "client_limit" and refused.status == 429


async def test_guests_leave_at_max_wait_and_on_drain_with_the_wait(
    state: tuple[AppState, JobService, Clock],
) -> None:
    """max_wait passed: queue_timeout, told with the text and the wait; SIGTERM: every
    waiting guest is told draining at once; a client gone takes its guest out silently."""
    st, jobs, clock = state
    assert isinstance(st.gate.try_admit("song", st.clock()), Lease)
    old, young, quiet = FakeGuest("old", "A"), FakeGuest("young", "B"), FakeGuest("q", "C")
    assert jobs.seat(old) is None
    clock.now += 30
    assert jobs.seat(young) is None and jobs.seat(quiet) is None
    assert jobs.unseat("q") and quiet.gone is None and not jobs.unseat("q")
    clock.now += 31
    expire_waiters(jobs, clock.now)
    assert old.gone is not None and old.gone[0] == "queue_timeout"
    assert "waited 61 s" in old.gone[1]
    assert young.gone is None and jobs.depth() == 1
    jobs.drain()
    assert young.gone is not None and young.gone[0] == "draining"
    assert "waited 31 s" in young.gone[1] and "restarting" in young.gone[1]
    assert jobs.depth() == 0
    assert st.counters.rejections_by_reason == {"queue_timeout": 1, "draining": 1}
    await asyncio.sleep(0)
