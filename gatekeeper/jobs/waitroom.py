"""The waiting room: who waits for a slot, in which order, until when (issue #9).

PURE: no aiohttp, no I/O, no clock reads (``now`` is passed in). The
orchestrator (``service.JobService``) joins a ``Waiter`` when a job finds no free slot,
``pop_next``s one when the gate has room, ``leave``s one whose client went away
or cancelled, and ``expire``s those past their deadline.

**The fairness rule** (round-robin across client keys, FIFO within one key).
The clients with someone waiting form a ring in the order they joined it.
Dispatch takes the first waiter of the client at the head of the ring, then
moves that client to the tail if it still has waiters (else it leaves the
ring). A client that joins the ring (its first waiter, or first again after it
left the ring) goes to the tail. So with A×10 waiting, then B×1, then C×2 the
order is A B C A C A A A ...: one user's ten jobs cannot starve another's one.

Cost: ``join``, ``leave``, ``pop_next``, ``waiting_for``, ``len`` and ``in``
are O(1) (``expire`` O(log n) per waiter it removes, amortised);
``oldest_arrival`` is O(clients); ``position`` is O(clients + the waiter's
rank within its client); ``order`` and ``waiters`` are O(n).

Below the room, the arithmetic of when a waiter will start (``start_delays``)
and the honest ``Retry-After`` of each queue refusal.

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
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import count as _count

from gatekeeper.core.vocab import QueueReason

__all__ = [
    "QueueLimits",
    "Waiter",
    "WaitingRoom",
    "eta_for",
    "eta_new",
    "retry_after_client",
    "retry_after_full",
    "retry_after_timeout",
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


class WaitingRoom:
    """Round-robin across client keys, FIFO within one key (rule: module docstring).

    Invariants: every waiter is in ``_by_id`` and in exactly one client queue of
    ``_ring``; a client is in ``_ring`` iff its queue is non-empty; ``_ring``'s
    key order is the ring order (head first). ``_deadlines`` is a min-heap of
    (deadline, join number, waiter) with lazy deletion: an entry is live iff
    ``_by_id.get(waiter.job_id) is waiter``; it is rebuilt when stale entries
    outnumber live ones, so its size stays O(n).
    """

    def __init__(self) -> None:
        self._by_id: dict[str, Waiter] = {}  # insertion order = join order
        # OrderedDict for both levels: O(1) removal anywhere, O(1) head/tail moves.
        self._ring: OrderedDict[str, OrderedDict[str, Waiter]] = OrderedDict()
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
        """Add ``w`` at the end of its client's queue (the client at the ring's tail if new)."""
        if w.job_id in self._by_id:
            raise ValueError(f"job {w.job_id!r} is already waiting")
        self._by_id[w.job_id] = w
        queue = self._ring.get(w.client)
        if queue is None:
            queue = self._ring[w.client] = OrderedDict()
        queue[w.job_id] = w
        heapq.heappush(self._deadlines, (w.deadline, next(self._joins), w))

    def leave(self, job_id: str) -> Waiter | None:
        """Remove a waiter from wherever it is; None if it is not waiting."""
        w = self._by_id.pop(job_id, None)
        if w is None:
            return None
        queue = self._ring[w.client]
        del queue[job_id]
        if not queue:
            del self._ring[w.client]  # the others keep their places in the ring
        self._forgot()
        return w

    def pop_next(self) -> Waiter | None:
        """Remove and return the next waiter to dispatch (the fairness rule), or None."""
        if not self._ring:
            return None
        client, queue = next(iter(self._ring.items()))
        _, w = queue.popitem(last=False)
        if queue:
            self._ring.move_to_end(client)
        else:
            del self._ring[client]
        del self._by_id[w.job_id]
        self._forgot()
        return w

    def order(self) -> list[Waiter]:
        """The order ``pop_next`` would give, without changing anything.

        Each pop moves its client to the tail, so the ring order never changes
        among the clients that remain: round r takes the r-th waiter of every
        client that has more than r, in ring order.
        """
        queues = [list(q.values()) for q in self._ring.values()]
        out: list[Waiter] = []
        rnd = 0
        while queues:
            out.extend(q[rnd] for q in queues)
            rnd += 1
            queues = [q for q in queues if len(q) > rnd]
        return out

    def position(self, job_id: str) -> int | None:
        """1-based index of ``job_id`` in ``order()``; None if it is not waiting.

        Counted without building the order: a waiter of rank r in its client's
        queue comes after min(len, r) waiters of every client, plus the r-th
        waiter of every client ahead of its own in the ring that has one.
        """
        w = self._by_id.get(job_id)
        if w is None:
            return None
        rank = 0
        for other in self._ring[w.client]:
            if other == job_id:
                break
            rank += 1
        ahead = 0
        before = True
        for client, queue in self._ring.items():
            if client == w.client:
                before = False
            ahead += min(len(queue), rank)
            if before and len(queue) > rank:
                ahead += 1
        return ahead + 1

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
        queue = self._ring.get(client)
        return len(queue) if queue is not None else 0

    def oldest_arrival(self) -> float | None:
        """The earliest ``arrived`` of anyone waiting (each client's oldest is its head)."""
        heads = (next(iter(q.values())).arrived for q in self._ring.values())
        return min(heads, default=None)

    def waiters(self) -> list[Waiter]:
        """Everyone waiting, in join order (= arrival order: jobs join as they arrive)."""
        return list(self._by_id.values())

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


def _seconds(x: float) -> int:
    """A Retry-After value: whole seconds rounded up, at least 1 (RFC 9110 §10.2.3)."""
    return max(1, math.ceil(x))


def retry_after_full(running_remaining: Sequence[float], slots: int, expected: float) -> int:
    """``queue_full``: when a place frees, i.e. when the first waiter starts."""
    return _seconds(start_delay(running_remaining, slots, 0, expected))


def retry_after_timeout(
    running_remaining: Sequence[float], slots: int, waiting: int, expected: float
) -> int:
    """``queue_timeout``: when a newcomer behind today's ``waiting`` would start."""
    return _seconds(start_delay(running_remaining, slots, waiting, expected))


def retry_after_client(client_done_in: Sequence[float]) -> int:
    """``client_limit``: when the client's earliest job (waiting or running) is done."""
    return _seconds(min(client_done_in, default=1.0))
