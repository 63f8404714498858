"""The waiting room: who waits for a slot, in which order, until when (issue #9).

PURE: no aiohttp, no I/O, no clock reads (``now`` is passed in). The
orchestrator (``service.JobService``) joins a ``Waiter`` when a job finds no free slot,
``pop_next``s one when the gate has room, ``leave``s one whose client went away
or cancelled, and ``expire``s those past their deadline.

**The fairness rule** (round-robin across client keys, FIFO within one key,
and a newcomer's first job next in turn: issue #20 §3). Every waiting job has a
turn ``(round, label)``; dispatch takes the smallest. A client's waiting jobs
take consecutive rounds in arrival order (its next one in ``r``, the one after
in ``r + 1``, ...); ``label`` is when the client joined the ring (a counter), so
within one round the clients take their turns in the order they joined. ``V``,
the round in service, is the round of the last job dispatched. A client joins
the ring (its first waiting job, or first again after it had none waiting) with
round ``V``: behind those already waiting their turn in the round being served,
ahead of everyone's next round. So:

- engine busy, A×10 waiting, then B×1, then C×2: A B C A C A A A ...
  (all joined in round 0: one user's ten jobs cannot starve another's one);
- engine idle, a batch of A×20: A0 starts at once (V = 0, A's next job is in
  round 1); B's one song then joins in round 0: A0 B0 A1 A2 ..., B runs
  second, not third (a batch never starves other users: issue #20 §3).

It is start-time fair queuing (Goyal, Vin and Cheng, SIGCOMM 1996) with every
job counting one turn, and no credit or debt carried across a client's empty
spell: a client that had none waiting rejoins like a newcomer.

Cost: ``join``, ``leave``, ``pop_next`` and ``position`` are O(log n)
(``WaitingRoom`` says how), ``waiting_for``, ``len`` and ``in`` O(1),
``expire`` O(log n) per waiter it removes; ``oldest_arrival`` is O(clients);
``order`` and ``waiters`` are O(n), ``first(k)`` O(k + log n). The ETA
arithmetic below is O(slots) per waiter (``start_delay``), whatever its position.

Below the room, the arithmetic of when a waiter will start (``start_delays``);
the honest ``Retry-After`` of each queue refusal is ``schedule``'s.

Usage::

    room = WaitingRoom()
    if (reason := room.refusal(client, running_for_client, limits)) is None:
        room.join(Waiter(job_id, client, route, now, now + limits.max_wait))
    ...
    if gate_has_room:
        waiter = room.pop_next()
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import count as _count

from gatekeeper.core.vocab import QueueReason
from gatekeeper.jobs.ordered import Fenwick, Treap

__all__ = [
    "QueueLimits",
    "Waiter",
    "WaitingRoom",
    "eta_for",
    "eta_new",
    "start_delay",
    "start_delays",
]


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """The live ``admission.queue`` limits a refusal is decided against."""

    max_waiting: int
    max_wait: float
    per_client: int


@dataclass(slots=True)
class Waiter:
    """One job waiting for a slot.

    ``deadline`` is fixed at arrival (``arrived + max_wait``): a reload that
    changes ``max_wait`` does not move the deadline of someone already waiting.
    It must not be changed while the waiter is in a room (the room indexes it).
    """

    job_id: str
    client: str  # client key, already derived (remote address or header value)
    route: str
    arrived: float  # loop clock at arrival
    deadline: float  # arrived + max_wait


class _Client:
    """One client key in the ring: its waiters in arrival order, its head's round,
    its label (when it joined the ring: ties within a round go by it).

    ``items`` holds its waiters by join (None once gone); ``alive`` is a Fenwick
    of 1 per waiter still there, so a waiter's rank in the client's queue is a
    prefix sum; ``first`` is the index (0-based) of the oldest one still there.
    """

    __slots__ = ("alive", "count", "first", "items", "key", "label", "round")

    def __init__(self, key: str, rnd: int, label: int) -> None:
        self.key = key
        self.label = label
        self.round = rnd  # the round of its head waiter; rank k is in round + k
        self.items: list[Waiter | None] = []
        self.alive = Fenwick()
        self.first = 0
        self.count = 0

    def head(self) -> Waiter:
        while self.items[self.first] is None:
            self.first += 1
        w = self.items[self.first]
        assert w is not None
        return w


class WaitingRoom:
    """Round-robin across client keys, FIFO within one key, a newcomer in the round in
    service (the rule: module docstring).

    **How the order is kept** (O(log n) for join, leave, pop_next and position).
    The waiter of rank k in its client's queue has the key ``(round + k, label)``
    (the rule: module docstring); the order is the keys' order (``ordered.Treap``,
    one key per waiter) and stays so:

    - ``pop_next`` takes the smallest key; V becomes its round, its client's head
      round goes up by one, no other key changes. Every key left is above the one
      taken and a newcomer's round is V, so V never goes back;
    - a client that joins the ring gets round V and the next label (above every
      label in the ring): its first key sorts after every key of round V present
      and before every key of a later round, each later one last in its round;
    - a waiter that leaves from the middle of its client's queue: the waiters
      behind it move up one rank, i.e. into the keys before theirs; the client's
      last key is removed, no other key changes;
    - a waiter's rank within its client is a Fenwick prefix sum.

    ``order`` and ``waiters`` are O(n), ``first(k)`` O(k + log n); ``oldest_arrival``
    O(clients). ``expire``
    is O(log n) per waiter it removes (a min-heap of deadlines with lazy deletion,
    rebuilt when stale entries outnumber live ones).
    """

    def __init__(self) -> None:
        self._by_id: dict[str, Waiter] = {}  # insertion order = join order
        self._index: dict[str, int] = {}  # job id -> its place in its client's items
        self._clients: dict[str, _Client] = {}
        self._keys = Treap()
        self._round = 0  # V: the round of the last waiter dispatched (the round in service)
        self._labels = _count()  # ring joins, in order
        self._deadlines: list[tuple[float, int, Waiter]] = []
        self._joins = _count()

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._by_id

    def refusal(
        self, client: str, running_for_client: int, limits: QueueLimits
    ) -> QueueReason | None:
        """Why a new job of ``client`` may not wait now, or None if it may.

        ``client_limit`` first: it is about this client (429, come back when one
        of yours is done), ``queue_full`` about everyone (503).
        """
        if self.waiting_for(client) + running_for_client >= limits.per_client:
            return QueueReason.CLIENT_LIMIT
        if len(self._by_id) >= limits.max_waiting:
            return QueueReason.QUEUE_FULL
        return None

    def join(self, w: Waiter) -> None:
        """Add ``w`` at the end of its client's queue (a client new to the ring: in the
        round in service, after those already waiting in it)."""
        if w.job_id in self._by_id:
            raise ValueError(f"job {w.job_id!r} is already waiting")
        c = self._clients.get(w.client)
        if c is None:
            c = _Client(w.client, self._round, next(self._labels))
            self._clients[w.client] = c
        self._by_id[w.job_id] = w
        self._keys.insert(c.round + c.count, c)
        self._index[w.job_id] = len(c.items)
        c.items.append(w)
        c.alive.append(1)
        c.count += 1
        heapq.heappush(self._deadlines, (w.deadline, next(self._joins), w))

    def leave(self, job_id: str) -> Waiter | None:
        """Remove a waiter from wherever it is; None if it is not waiting."""
        w = self._by_id.pop(job_id, None)
        if w is None:
            return None
        c = self._clients[w.client]
        self._keys.delete(c.round + c.count - 1, c)  # those behind it move up one key
        self._drop(c, self._index.pop(job_id))
        self._forgot()
        return w

    def pop_next(self) -> Waiter | None:
        """Remove and return the next waiter to dispatch (the fairness rule), or None."""
        first = self._keys.first()
        if first is None:
            return None
        rnd, owner = first
        c: _Client = owner
        self._keys.delete(rnd, c)
        w = c.head()
        del self._by_id[w.job_id]
        self._round = rnd
        c.round += 1
        self._drop(c, self._index.pop(w.job_id))
        self._forgot()
        return w

    def order(self) -> list[Waiter]:
        """The order ``pop_next`` would give, without changing anything."""
        queues = {
            c.key: [w for w in c.items[c.first :] if w is not None] for c in self._clients.values()
        }
        return [queues[c.key][rnd - c.round] for rnd, c in self._keys]

    def first(self, k: int) -> list[Waiter]:
        """The first ``k`` of ``order()``, in O(k + log n) (the status document's list:
        a page polled at 10,000 waiting must not walk them all)."""
        out: list[Waiter] = []
        cursor: dict[str, int] = {}  # each client's next index in its items
        for _rnd, c in self._keys:  # in key order: each client's ranks come 0, 1, 2, ...
            if len(out) >= k:
                break
            i = cursor.get(c.key, c.first)
            while c.items[i] is None:
                i += 1
            w = c.items[i]
            assert w is not None
            out.append(w)
            cursor[c.key] = i + 1
        return out

    def position(self, job_id: str) -> int | None:
        """1-based index of ``job_id`` in ``order()``; None if it is not waiting."""
        w = self._by_id.get(job_id)
        if w is None:
            return None
        c = self._clients[w.client]
        rank = c.alive.prefix(self._index[job_id])  # those of its client before it
        return self._keys.rank(c.round + rank, c) + 1

    def expire(self, now: float) -> list[Waiter]:
        """Remove and return the waiters whose deadline is <= ``now``, earliest first."""
        out: list[Waiter] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, _, w = heapq.heappop(heap)
            if self._by_id.get(w.job_id) is w:
                self.leave(w.job_id)
                out.append(w)
        return out

    def next_deadline(self) -> float | None:
        """The earliest deadline of anyone waiting (when to call ``expire`` next)."""
        heap = self._deadlines
        while heap and self._by_id.get(heap[0][2].job_id) is not heap[0][2]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def waiting_for(self, client: str) -> int:
        """How many of ``client``'s jobs are waiting."""
        c = self._clients.get(client)
        return c.count if c is not None else 0

    def first_of(self, client: str) -> Waiter | None:
        """``client``'s oldest waiter (the first of its to start), or None."""
        c = self._clients.get(client)
        return c.head() if c is not None else None

    def oldest_arrival(self) -> float | None:
        """The earliest ``arrived`` of anyone waiting (each client's oldest is its head)."""
        return min((c.head().arrived for c in self._clients.values()), default=None)

    def waiters(self) -> list[Waiter]:
        """Everyone waiting, in join order (= arrival order: jobs join as they arrive)."""
        return list(self._by_id.values())

    def _drop(self, c: _Client, index: int) -> None:
        """Waiter ``index`` of ``c`` is gone (its key already removed)."""
        c.items[index] = None
        c.alive.add(index + 1, -1)
        c.count -= 1
        if c.count == 0:
            del self._clients[c.key]  # out of the ring: it rejoins as a newcomer
        elif len(c.items) > 2 * c.count + 32:
            self._compact(c)

    def _compact(self, c: _Client) -> None:
        """Forget the gone waiters of ``c`` (amortised O(1) per waiter)."""
        live = [w for w in c.items[c.first :] if w is not None]
        c.items, c.first = list(live), 0
        c.alive = Fenwick([1] * len(live))
        for i, w in enumerate(live):
            self._index[w.job_id] = i

    def _forgot(self) -> None:
        """A waiter left: rebuild the deadline heap once it is mostly stale entries."""
        if len(self._deadlines) > 2 * len(self._by_id) + 32:
            live = self._by_id
            self._deadlines = [e for e in self._deadlines if live.get(e[2].job_id) is e[2]]
            heapq.heapify(self._deadlines)


def _slot_frees(running_remaining: Sequence[float], slots: int, expected: float) -> list[float]:
    """When each slot is free for the first waiter, sorted (see ``start_delays``)."""
    if slots < 1:
        raise ValueError(f"slots must be >= 1, not {slots}")
    if expected < 0:
        raise ValueError(f"expected must be >= 0, not {expected}")
    frees = sorted(max(0.0, float(r)) for r in running_remaining)[-slots:]
    return [0.0] * (slots - len(frees)) + frees


def start_delay(
    running_remaining: Sequence[float], slots: int, index: int, expected: float
) -> float:
    """Seconds until the waiter at 0-based ``index`` (in ``order()``) starts: the
    ``index``-th value of ``start_delays``, in O(slots log slots) whatever the index.

    When the slots' free times lie within one ``expected`` of each other (always so
    for running jobs, whose remaining time is at most ``expected``), each waiter takes
    the slots in turn: waiter k starts at ``frees[k % slots] + (k // slots) * expected``
    (the heap's pop-min, push-min+expected keeps the spread within ``expected``).
    Otherwise the heap is run, as ``start_delays`` does."""
    if index < 0:
        raise ValueError(f"index must be >= 0, not {index}")
    frees = _slot_frees(running_remaining, slots, expected)
    if frees[-1] - frees[0] <= expected:
        rounds, slot = divmod(index, slots)
        return frees[slot] + rounds * expected
    return _run_heap(frees, index + 1, expected)[-1]


def start_delays(
    running_remaining: Sequence[float], slots: int, count: int, expected: float
) -> list[float]:
    """Seconds until each of the first ``count`` waiters (in ``order()``) starts.

    A min-heap of slot free times. Each running job frees its slot after
    max(0, its remaining); the slots nobody runs in are free at 0. Each waiter
    takes the earliest slot and holds it ``expected`` seconds.

    More running jobs than ``slots`` (``max_in_flight`` lowered by a reload):
    the gate admits only while in-flight < slots, so the first waiter starts
    when all but ``slots - 1`` of them are done. Exactly that is modelled by
    keeping the ``slots`` latest-finishing running jobs on the heap: the
    earlier ones finish before any slot can be free, whatever order.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, not {count}")
    frees = _slot_frees(running_remaining, slots, expected)
    return _run_heap(frees, count, expected)


def _run_heap(frees: list[float], count: int, expected: float) -> list[float]:
    heap = list(frees)  # sorted, so already a heap
    out: list[float] = []
    for _ in range(count):
        start = heap[0]
        out.append(start)
        heapq.heapreplace(heap, start + expected)
    return out


def eta_for(
    position: int, running_remaining: Sequence[float], slots: int, expected: float
) -> tuple[float, float]:
    """(starts_in, done_in) of the waiter at 1-based ``position``."""
    if position < 1:
        raise ValueError(f"position is 1-based, not {position}")
    starts_in = start_delay(running_remaining, slots, position - 1, expected)
    return starts_in, starts_in + expected


def eta_new(
    running_remaining: Sequence[float], slots: int, waiting: int, expected: float, free: bool
) -> float:
    """Done-in of a job joining the end of the queue now (``free``: it starts at once)."""
    if free:
        return expected
    return start_delay(running_remaining, slots, waiting, expected) + expected
