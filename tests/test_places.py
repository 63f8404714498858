"""Places in a queue several boxes share (issue #21), the pure part: the limits' rule over
the whole queue's counts, the fairness rule over stored rows (the reference the SQL is
checked against), and the schedule's figures from a read of the whole queue."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace
from typing import Any

import pytest

from gatekeeper.core.vocab import JobState, QueueReason
from gatekeeper.jobs.places import Counts, Picture, fair_order, refusal
from gatekeeper.jobs.schedule import Schedule
from gatekeeper.jobs.waitroom import Waiter, WaitingRoom, eta_for

C, F = QueueReason.CLIENT_LIMIT, QueueReason.QUEUE_FULL


@pytest.mark.parametrize(
    ("counts", "per_client", "max_waiting", "free_here", "expected"),
    [
        (Counts(0, 0), 2, 5, False, None),
        (Counts(1, 4), 2, 5, False, None),
        (Counts(2, 0), 2, 5, False, C),  # the client's live jobs on every box
        (Counts(1, 0, client_guests=1), 2, 5, False, C),  # its guests waiting here count
        (Counts(0, 5), 2, 5, False, F),  # every box's waiting jobs
        (Counts(0, 4, guests=1), 2, 5, False, F),
        (Counts(3, 9), 2, 5, False, C),  # client_limit first: it is about this client
        (Counts(0, 0), 2, 0, False, F),  # max_waiting 0: nobody may wait
        (Counts(0, 0), 2, 0, True, None),  # ... but a free slot here still serves
        (Counts(0, 1), 2, 0, True, F),  # not with someone waiting on any box
        (Counts(0, 0, guests=1), 2, 0, True, F),
    ],
)
def test_the_limits_over_the_whole_queue(
    counts: Counts, per_client: int, max_waiting: int, free_here: bool, expected: Any
) -> None:
    """``refusal`` is the waiting room's rule over every box's counts: client_limit when
    the client's live jobs (and guests here) reach per_client, then queue_full when every
    box's waiting jobs reach max_waiting unless nobody waits and a slot here is free."""
    assert refusal(counts, per_client, max_waiting, free_here) is expected


@pytest.mark.parametrize(("seed", "clients"), [(s, c) for s in range(8) for c in (1, 3, 40)])
def test_fair_order_over_stored_rows_is_the_waiting_rooms(seed: int, clients: int) -> None:
    """The ring rows a shared store keeps (each client's round and turn, its queued jobs by
    seq) give the order of ``WaitingRoom`` over random arrivals, claims and departures: the
    rule ``claim_next`` applies and ``sql_places.POSITIONS`` reproduces."""
    rng = random.Random(seed * 100 + clients)
    room = WaitingRoom()
    ring: dict[str, tuple[int, int]] = {}  # what sql_fair keeps: client -> (round, turn)
    queued: dict[str, tuple[str, int]] = {}  # job -> (client, seq)
    clock, turns, seq = 0, 0, 0
    for _ in range(400):
        op = rng.random()
        if op < 0.55 or not queued:
            seq += 1
            client = f"c{rng.randrange(clients)}"
            if not any(c == client for c, _ in queued.values()):  # sql_fair.JOIN
                turns += 1
                ring[client] = (clock, turns)
            queued[f"j{seq}"] = (client, seq)
            room.join(Waiter(f"j{seq}", client, "r", 0.0, 1e9))
        elif op < 0.8:  # a claim: sql_fair.CLAIM
            first = fair_order(((j, c, s) for j, (c, s) in queued.items()), ring)[0]
            assert room.pop_next().job_id == first  # type: ignore[union-attr]
            client, _ = queued.pop(first)
            rnd, turn = ring[client]
            ring[client] = (rnd + 1, turn)
            clock = max(clock, rnd)
        else:  # a job leaves from anywhere (its client's round stays: the rank shifts)
            gone = rng.choice(list(queued))
            queued.pop(gone)
            room.leave(gone)
        order = fair_order(((j, c, s) for j, (c, s) in queued.items()), ring)
        assert order == [w.job_id for w in room.order()]


def _schedule(picture: Picture | None, room: WaitingRoom, *, slots: int = 1) -> Schedule:
    gate: Any = SimpleNamespace(
        estimator=SimpleNamespace(expected=100.0),
        elapsed=lambda now: [40.0] * slots,
        limits=SimpleNamespace(max_in_flight=slots),
        check=lambda now, probed_only=False: "busy",
    )
    return Schedule(gate, room)


def _job(job_id: str, state: JobState = JobState.QUEUED) -> Any:
    return SimpleNamespace(id=job_id, state=state, started=None)


def test_with_a_picture_places_and_etas_are_the_whole_queues() -> None:
    """With a read of the whole shared queue, a job's place is the read's (not this box's
    room's), its ETA counts the running jobs and slots of every box, the waiting count is
    every box's, and a job the read did not place yet is at the end and asked for."""
    room = WaitingRoom()
    room.join(Waiter("mine", "a", "r", 0.0, 1e9))  # alone in this box's room
    s = _schedule(None, room)
    assert s.position(_job("mine"), 0.0) == 1 and s.waiting() == 1
    s.picture = Picture(
        waiting=7, positions={"mine": 5}, running=(10.0, 90.0), slots=2, read_at=0.0
    )
    assert s.position(_job("mine"), 1.0) == 5
    assert s.waiting() == 7
    # every box's two running jobs, read 1 s ago: 89 s and 9 s left; two slots
    assert s.eta(_job("mine"), 1.0) == eta_for(5, [89.0, 9.0], 2, 100.0)
    assert s.position(_job("new"), 2.0) == 8 and s.asked == {"mine": 1.0, "new": 2.0}
    assert s.position(_job("run", JobState.RUNNING), 2.0) is None
    assert s.retry_after_timeout(1.0) == math.ceil(eta_for(8, [89.0, 9.0], 2, 100.0)[0])
