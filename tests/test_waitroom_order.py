"""The O(log n) waiting room gives exactly the old room's results (issue #18 §6).

Random sequences of join / leave / pop_next / expire over few and many client
keys: after every step, ``order()``, its first k (``first``), every waiter's ``position`` and every
popped or expired waiter are the reference implementation's
(``waitroom_reference.ReferenceRoom``, the rule written out plainly).
"""

from __future__ import annotations

import random

import pytest
from waitroom_reference import ReferenceRoom

from gatekeeper.jobs.waitroom import Waiter, WaitingRoom


def ids(ws: list[Waiter]) -> list[str]:
    return [w.job_id for w in ws]


@pytest.mark.parametrize(
    ("seed", "clients", "steps"),
    [(s, c, 600) for s in range(12) for c in (1, 3, 12, 200)],
)
def test_same_results_as_the_reference_room(seed: int, clients: int, steps: int) -> None:
    rng = random.Random(seed * 1000 + clients)
    room, ref = WaitingRoom(), ReferenceRoom()
    now, n = 0.0, 0
    for _ in range(steps):
        op = rng.random()
        now += rng.random()
        if op < 0.5 or not len(ref):
            n += 1
            w = Waiter(f"j{n}", f"c{rng.randrange(clients)}", "r", now, now + rng.uniform(5, 200))
            room.join(w)
            ref.join(w)
        elif op < 0.7:
            assert ids([x for x in [room.pop_next()] if x]) == ids(
                [x for x in [ref.pop_next()] if x]
            )
        elif op < 0.9:
            victim = rng.choice(ref.waiters()).job_id
            assert room.leave(victim) is ref.leave(victim)
            assert room.leave(victim) is None
        else:
            assert ids(room.expire(now)) == ids(ref.expire(now))
        order = ids(ref.order())
        assert ids(room.order()) == order
        k = rng.randrange(len(order) + 2)
        assert ids(room.first(k)) == order[:k]  # the status document's list (issue #18 §6)
        assert len(room) == len(ref)
        for i, job_id in enumerate(order, start=1):
            assert room.position(job_id) == i
        assert room.next_deadline() == ref.next_deadline()
        assert room.oldest_arrival() == ref.oldest_arrival()
    while len(ref):
        assert room.pop_next() is ref.pop_next()
    assert room.pop_next() is None and room.order() == []


def test_a_long_queue_of_one_client_and_many_leaving() -> None:
    """Compaction of a client's queue keeps every rank right."""
    room, ref = WaitingRoom(), ReferenceRoom()
    ws = [Waiter(f"j{i}", "one" if i % 5 else f"c{i}", "r", i, 1e9) for i in range(3000)]
    for w in ws:
        room.join(w)
        ref.join(w)
    rng = random.Random(7)
    for w in rng.sample(ws, 2000):
        room.leave(w.job_id)
        ref.leave(w.job_id)
    for _ in range(300):
        assert room.pop_next() is ref.pop_next()
    order = ids(ref.order())
    assert ids(room.order()) == order
    assert [room.position(j) for j in order] == list(range(1, len(order) + 1))
    for k in (0, 1, 37, 100, len(order), len(order) + 5):
        assert ids(room.first(k)) == order[:k]
