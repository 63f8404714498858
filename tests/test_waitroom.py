"""Table tests of the waiting room: fairness order, leaving, limits, timers, start delays."""

from __future__ import annotations

import random

import pytest

from gatekeeper.core.vocab import QueueReason
from gatekeeper.jobs.schedule import retry_after_client, retry_after_full, retry_after_timeout
from gatekeeper.jobs.waitroom import (
    QueueLimits,
    Waiter,
    WaitingRoom,
    eta_for,
    eta_new,
    start_delays,
)


def room_of(spec: str, *, max_wait: float = 100.0) -> WaitingRoom:
    """A room where spec "AAB" means: A's job A1 arrives at t=0, A2 at 1, B1 at 2."""
    room = WaitingRoom()
    seen: dict[str, int] = {}
    for t, client in enumerate(spec):
        seen[client] = seen.get(client, 0) + 1
        room.join(Waiter(f"{client}{seen[client]}", client, "generate", t, t + max_wait))
    return room


def ids(ws: list[Waiter]) -> list[str]:
    return [w.job_id for w in ws]


def drain(room: WaitingRoom) -> list[str]:
    out = []
    while (w := room.pop_next()) is not None:
        out.append(w.job_id)
    return out


@pytest.mark.parametrize(
    ("arrivals", "expected"),
    [
        ("", ""),
        ("A", "A"),
        ("AAA", "AAA"),  # FIFO within one key
        ("AB", "AB"),
        ("BA", "BA"),
        ("AAAAAAAAAABCC", "ABCACAAAAAAAA"),  # the example: A×10, B×1, C×2
        ("ABAB", "ABAB"),
        ("AABB", "ABAB"),
        ("CBA", "CBA"),  # ring order = order of joining the ring, not the name
        ("AAABBC", "ABCABA"),
    ],
)
def test_fairness_order(arrivals: str, expected: str) -> None:
    """Dispatch is round-robin across client keys in ring-join order, FIFO within a key."""
    room = room_of(arrivals)
    want = [w.client for w in room.order()]
    assert "".join(want) == expected
    assert [room.position(w.job_id) for w in room.order()] == list(range(1, len(arrivals) + 1))
    popped = drain(room)
    assert [j[0] for j in popped] == list(expected)
    for client in set(arrivals):  # FIFO within each key
        mine = [j for j in popped if j[0] == client]
        assert mine == sorted(mine, key=lambda j: int(j[1:]))
    assert len(room) == 0


def test_client_rejoining_goes_to_tail() -> None:
    """A client whose last waiter left the ring and who comes back joins at the tail."""
    room = room_of("AB")
    first = room.pop_next()
    assert first is not None and first.job_id == "A1"
    room.join(Waiter("A2", "A", "generate", 5, 105))  # A left the ring, now behind B
    room.join(Waiter("C1", "C", "generate", 6, 106))
    assert ids(room.order()) == ["B1", "A2", "C1"]
    assert drain(room) == ["B1", "A2", "C1"]


def test_a_newcomer_goes_before_the_next_job_of_the_client_in_service() -> None:
    """Issue #20 §3: a client that joins the ring takes the round in service, so it goes
    before the next job of the client whose job just started (this test pinned the
    opposite, "A was moved to the tail before B joined", until issue #20)."""
    room = room_of("AA")
    first = room.pop_next()
    assert first is not None and first.job_id == "A1"
    room.join(Waiter("B1", "B", "generate", 3, 103))
    assert ids(room.order()) == ["B1", "A2"]
    room2 = room_of("AAA")
    room2.join(Waiter("B1", "B", "generate", 3, 103))
    room2.pop_next()  # A1; B was already waiting in round 0, A's next is in round 1
    assert ids(room2.order()) == ["B1", "A2", "A3"]


def run_script(script: str) -> list[str]:
    """Play ``script``: a letter is a job of that client arriving (named A1, A2, ... per
    client), "." one dispatch (a slot took the next waiter); then dispatch the rest.
    The jobs in the order they were dispatched."""
    room = WaitingRoom()
    seen: dict[str, int] = {}
    out: list[str] = []
    for t, step in enumerate(script.replace(" ", "")):
        if step == ".":
            w = room.pop_next()
            assert w is not None, script
            out.append(w.job_id)
            continue
        seen[step] = seen.get(step, 0) + 1
        room.join(Waiter(f"{step}{seen[step]}", step, "generate", t, t + 1000))
        assert [room.position(w.job_id) for w in room.order()] == list(range(1, len(room) + 1))
    predicted = ids(room.order())
    rest = drain(room)
    assert rest == predicted
    return out + rest


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        # The sentence with 5 songs: a batch (joined whole) finds the engine idle,
        # its first song starts at once, then B's one song arrives: B runs second.
        ("AAAAA . B", "A1 B1 A2 A3 A4 A5"),
        # The engine busy (Z running): the batch and B wait together; B is still second.
        ("Z . AAAAA B", "Z1 A1 B1 A2 A3 A4 A5"),
        # Two slots free: A1 and A2 start at once (round 1 in service); B takes round 1.
        ("AAAAA . . B", "A1 A2 B1 A3 A4 A5"),
        # Newcomers one after another join the round in service in the order they come.
        ("AAAAA . B C", "A1 B1 C1 A2 A3 A4 A5"),
        # A newcomer goes after those still waiting in the round in service (B), before
        # the served client's next round (A2); old rule: A1 B1 A2 C1 B2.
        ("AABB . C", "A1 B1 C1 A2 B2"),
        # Both round-0 jobs started: C takes round 0, ahead of everyone's round 1.
        ("AAB . . C", "A1 B1 C1 A2"),
        ("ABAB . . . C", "A1 B1 A2 B2 C1"),
        # A client that had none waiting rejoins like a newcomer (no credit, no debt):
        # A's second song sent after its first started joins round 0 before B arrives.
        ("A . AAAA B", "A1 A2 B1 A3 A4 A5"),
        ("AB . A C", "A1 B1 A2 C1"),
        # The round in service only moves forward; with nobody waiting nothing is owed.
        ("A . B . C", "A1 B1 C1"),
        ("AAA . . . B", "A1 A2 A3 B1"),
    ],
)
def test_the_round_in_service(script: str, expected: str) -> None:
    """A client joining the ring takes the round of the job last dispatched, behind those
    waiting in that round, ahead of every later round (start-time fair queuing)."""
    assert run_script(script) == expected.split()


@pytest.mark.parametrize(
    ("arrivals", "leaving", "expected"),
    [
        ("AAAAAAAAAABCC", "A1", "A2 B1 C1 A3 C2 A4 A5 A6 A7 A8 A9 A10"),  # the head's head
        ("AAAAAAAAAABCC", "B1", "A1 C1 A2 C2 A3 A4 A5 A6 A7 A8 A9 A10"),  # a client leaves ring
        ("AAAAAAAAAABCC", "C1", "A1 B1 C2 A2 A3 A4 A5 A6 A7 A8 A9 A10"),  # middle of a queue
        ("AAAAAAAAAABCC", "A10", "A1 B1 C1 A2 C2 A3 A4 A5 A6 A7 A8 A9"),  # the very last
        ("AB", "A1", "B1"),  # the head client leaves the ring: next head is B
        ("ABC", "B1", "A1 C1"),
    ],
)
def test_leave(arrivals: str, leaving: str, expected: str) -> None:
    """Leaving removes a waiter wherever it is; everyone else keeps their relative order."""
    room = room_of(arrivals)
    left = room.leave(leaving)
    assert left is not None and left.job_id == leaving
    assert leaving not in room
    assert room.position(leaving) is None
    assert ids(room.order()) == expected.split()
    assert drain(room) == expected.split()


def test_leave_unknown_and_twice() -> None:
    """Leaving a job that is not waiting (never joined, popped, left) returns None."""
    room = room_of("AB")
    assert room.leave("nope") is None
    assert room.leave("A1") is not None
    assert room.leave("A1") is None
    room.pop_next()
    assert room.leave("B1") is None
    assert len(room) == 0 and room.pop_next() is None


def test_join_twice_is_an_error() -> None:
    """A job id waits at most once; re-joining after leaving is fine."""
    room = room_of("A")
    with pytest.raises(ValueError, match="A1"):
        room.join(Waiter("A1", "B", "generate", 9, 109))
    room.leave("A1")
    room.join(Waiter("A1", "B", "generate", 9, 109))
    assert room.waiting_for("B") == 1 and room.waiting_for("A") == 0


def test_counts_and_membership() -> None:
    """len, in, waiting_for, waiters (join order) and oldest_arrival follow joins and leaves."""
    room = room_of("ABAC")
    assert len(room) == 4
    assert "A2" in room and "A3" not in room and 42 not in room
    assert (room.waiting_for("A"), room.waiting_for("B"), room.waiting_for("Z")) == (2, 1, 0)
    assert ids(room.waiters()) == ["A1", "B1", "A2", "C1"]
    assert room.oldest_arrival() == 0
    room.leave("A1")
    assert room.oldest_arrival() == 1  # B1
    room.leave("B1")
    assert room.oldest_arrival() == 2  # A2
    assert ids(room.waiters()) == ["A2", "C1"]
    assert WaitingRoom().oldest_arrival() is None


def test_order_does_not_mutate() -> None:
    """order() and position() are reads: popping afterwards gives the same order."""
    room = room_of("AAABBCA")
    first = ids(room.order())
    room.position("A3")
    assert ids(room.order()) == first
    assert drain(room) == first


def test_position_matches_order_randomised() -> None:
    """position() (counted) equals the index in order() (built) after random joins/leaves/pops."""
    rng = random.Random(9)
    room = WaitingRoom()
    n = 0
    for _ in range(2000):
        op = rng.random()
        if op < 0.55:
            n += 1
            room.join(Waiter(f"j{n}", rng.choice("ABCDE"), "r", n, n + 50))
        elif op < 0.75 and len(room):
            room.leave(rng.choice(room.waiters()).job_id)
        elif op < 0.9:
            room.pop_next()
        else:
            room.expire(n - 40)
        order = ids(room.order())
        assert sorted(order) == sorted(ids(room.waiters()))
        if order:
            probe = rng.choice(order)
            assert room.position(probe) == order.index(probe) + 1


@pytest.mark.parametrize(
    ("waiting_for_a", "running_for_a", "total_waiting", "limits", "expected"),
    [
        (0, 0, 0, QueueLimits(20, 60, 2), None),
        (1, 0, 1, QueueLimits(20, 60, 2), None),
        (2, 0, 2, QueueLimits(20, 60, 2), QueueReason.CLIENT_LIMIT),
        (1, 1, 1, QueueLimits(20, 60, 2), QueueReason.CLIENT_LIMIT),  # running counts too
        (0, 2, 0, QueueLimits(20, 60, 2), QueueReason.CLIENT_LIMIT),
        (0, 0, 3, QueueLimits(3, 60, 2), QueueReason.QUEUE_FULL),
        (2, 0, 3, QueueLimits(3, 60, 2), QueueReason.CLIENT_LIMIT),  # client limit first
        (0, 0, 0, QueueLimits(0, 60, 2), QueueReason.QUEUE_FULL),  # max_waiting 0: never wait
        (0, 1, 2, QueueLimits(3, 60, 2), None),
    ],
)
def test_refusal(
    waiting_for_a: int,
    running_for_a: int,
    total_waiting: int,
    limits: QueueLimits,
    expected: QueueReason | None,
) -> None:
    """client_limit if waiting+running >= per_client, else queue_full if the room is full."""
    room = room_of("A" * waiting_for_a + "B" * (total_waiting - waiting_for_a))
    assert room.refusal("A", running_for_a, limits) is expected


def test_expire_with_injected_clock() -> None:
    """expire(now) removes exactly those with deadline <= now, earliest first; order fixes up."""
    room = WaitingRoom()
    # Deadlines are not in join order: a reload changed max_wait between arrivals.
    room.join(Waiter("a1", "A", "r", 0.0, 30.0))
    room.join(Waiter("b1", "B", "r", 1.0, 11.0))
    room.join(Waiter("a2", "A", "r", 2.0, 32.0))
    room.join(Waiter("c1", "C", "r", 3.0, 13.0))
    assert room.next_deadline() == 11.0
    assert room.expire(10.999) == []
    assert ids(room.expire(11.0)) == ["b1"]  # deadline <= now
    assert room.next_deadline() == 13.0
    room.leave("c1")
    assert room.next_deadline() == 30.0  # a left waiter's deadline does not count
    assert ids(room.order()) == ["a1", "a2"]
    assert ids(room.expire(100.0)) == ["a1", "a2"]
    assert room.next_deadline() is None and len(room) == 0
    assert room.expire(1000.0) == []


def test_expire_skips_popped_and_rejoined() -> None:
    """A popped waiter's old deadline never expires it, nor a later waiter with the same id."""
    room = WaitingRoom()
    room.join(Waiter("x", "A", "r", 0.0, 5.0))
    room.pop_next()
    room.join(Waiter("x", "A", "r", 6.0, 50.0))
    assert room.next_deadline() == 50.0
    assert room.expire(10.0) == []
    assert "x" in room


def test_deadline_heap_stays_bounded() -> None:
    """Stale deadline entries are compacted: 10,000 join+pop cycles leave a small heap."""
    room = WaitingRoom()
    for i in range(10_000):
        room.join(Waiter(f"j{i}", "ABC"[i % 3], "r", i, i + 1e6))
        if i % 2:
            room.pop_next()
        if i % 3 == 0:
            room.leave(f"j{i}")
    live = len(room)
    assert len(room._deadlines) <= 2 * live + 32
    assert room.next_deadline() == min(w.deadline for w in room.waiters())


@pytest.mark.parametrize(
    ("running", "slots", "count", "expected", "want"),
    [
        ((), 1, 3, 10.0, [0, 10, 20]),  # idle engine: the first starts at once
        ((4.0,), 1, 3, 10.0, [4, 14, 24]),
        ((4.0,), 2, 3, 10.0, [0, 4, 10]),  # one free slot, one freeing at 4
        ((4.0, 7.0), 2, 4, 10.0, [4, 7, 14, 17]),
        ((), 2, 4, 10.0, [0, 0, 10, 10]),
        ((-30.0,), 1, 2, 10.0, [0, 10]),  # an over-long running job: "any moment now"
        ((-5.0, 3.0), 2, 3, 10.0, [0, 3, 10]),
        ((5.0, 9.0, 2.0), 1, 2, 10.0, [9, 19]),  # max_in_flight lowered to 1: all must end
        ((5.0, 9.0, 2.0), 2, 3, 10.0, [5, 9, 15]),  # ... to 2: 2 and 5 end before any start
        ((4.0,), 1, 0, 10.0, []),
        ((4.0,), 3, 2, 0.0, [0, 0]),
    ],
)
def test_start_delays(
    running: tuple[float, ...], slots: int, count: int, expected: float, want: list[float]
) -> None:
    """Each waiter takes the earliest-free slot and holds it `expected` seconds."""
    assert start_delays(running, slots, count, expected) == want


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (((), 0, 1, 10.0), "slots"),
        (((), 1, -1, 10.0), "count"),
        (((), 1, 1, -1.0), "expected"),
    ],
)
def test_start_delays_rejects_nonsense(
    args: tuple[tuple[float, ...], int, int, float], message: str
) -> None:
    """slots < 1, a negative count or a negative duration are programming errors."""
    with pytest.raises(ValueError, match=message):
        start_delays(*args)


@pytest.mark.parametrize(
    ("position", "running", "slots", "want"),
    [
        (1, (4.0,), 1, (4.0, 14.0)),
        (2, (4.0,), 1, (14.0, 24.0)),
        (3, (4.0, 7.0), 2, (14.0, 24.0)),
        (1, (), 1, (0.0, 10.0)),
    ],
)
def test_eta_for(
    position: int, running: tuple[float, ...], slots: int, want: tuple[float, float]
) -> None:
    """(starts_in, done_in) of the waiter at a 1-based position; done = start + expected."""
    assert eta_for(position, running, slots, 10.0) == want


def test_eta_for_position_is_one_based() -> None:
    """Position 0 is not a waiter."""
    with pytest.raises(ValueError):
        eta_for(0, (), 1, 10.0)


@pytest.mark.parametrize(
    ("running", "slots", "expected", "want"),
    [
        ((539.2,), 1, 600.0, 540),  # rounded up
        ((0.0,), 1, 600.0, 1),  # never 0
        ((), 1, 600.0, 1),
        ((-20.0,), 1, 600.0, 1),
        ((100.0, 50.0), 2, 600.0, 50),
    ],
)
def test_retry_after_full(
    running: tuple[float, ...], slots: int, expected: float, want: int
) -> None:
    """queue_full: when the first waiter starts (a place in the room frees), >= 1 s."""
    assert retry_after_full(running, slots, expected) == want


@pytest.mark.parametrize(
    ("running", "slots", "waiting", "expected", "want"),
    [
        ((100.0,), 1, 0, 600.0, 100),
        ((100.0,), 1, 3, 600.0, 1900),  # behind three: 100 + 3 * 600
        ((100.0, 300.0), 2, 3, 600.0, 900),  # starts: 100, 300, 700, 900
        ((), 1, 0, 600.0, 1),
        ((0.4,), 1, 1, 10.0, 11),
    ],
)
def test_retry_after_timeout(
    running: tuple[float, ...], slots: int, waiting: int, expected: float, want: int
) -> None:
    """queue_timeout: when a newcomer at the end of today's queue would start, rounded up."""
    assert retry_after_timeout(running, slots, waiting, expected) == want


@pytest.mark.parametrize(
    ("done_in", "want"),
    [((), 1), ((30.5, 12.1), 13), ((0.0,), 1), ((-3.0, 50.0), 1), ((600.0,), 600)],
)
def test_retry_after_client(done_in: tuple[float, ...], want: int) -> None:
    """client_limit: when the client's earliest job ends, >= 1 (1 with nothing known)."""
    assert retry_after_client(done_in) == want


@pytest.mark.parametrize(
    ("running", "slots", "waiting", "expected", "free", "want"),
    [
        ((), 1, 0, 600.0, True, 600.0),  # starts at once: done in one expected run
        ((100.0,), 1, 0, 600.0, False, 700.0),  # after the running one
        ((100.0,), 1, 2, 600.0, False, 1900.0),  # behind two waiters: 100 + 2*600 + 600
        ((100.0, 300.0), 2, 1, 600.0, False, 900.0),  # starts 100, 300: the newcomer at 300
        ((), 2, 0, 10.0, False, 10.0),  # a free slot the gate refuses now: modelled free
    ],
)
def test_eta_new(
    running: tuple[float, ...],
    slots: int,
    waiting: int,
    expected: float,
    free: bool,
    want: float,
) -> None:
    """A newcomer's done-in: one expected run when it starts at once, else its start
    behind today's waiters plus one expected run."""
    assert eta_new(running, slots, waiting, expected, free) == want
