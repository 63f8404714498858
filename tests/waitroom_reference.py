"""The waiting room's rule written out plainly (OrderedDicts, O(clients) dispatch, O(n log n)
order): the reference the O(log n) ``WaitingRoom`` is table-tested against
(test_waitroom_order). Issue #20 §3 gave the rule its newcomer clause (a client joins in
the round in service); this room states it directly rather than by the ring moves of the
room it replaced."""

from __future__ import annotations

import heapq
from collections import OrderedDict
from itertools import count as _count

from gatekeeper.core.vocab import QueueReason
from gatekeeper.jobs.waitroom import QueueLimits, Waiter


class ReferenceRoom:
    """The rule of ``waitroom`` written out directly, O(clients) per step: each client
    in the ring has its queue, the round of its head and its label; dispatch takes
    the client with the smallest (round, label); a client joins with round V (the
    round last dispatched) and the next label.

    Invariants: every waiter is in ``_by_id`` and in exactly one client queue of
    ``_ring``; a client is in ``_ring`` (and ``_turn``) iff its queue is non-empty.
    ``_deadlines`` is a min-heap of (deadline, join number, waiter) with lazy
    deletion: an entry is live iff ``_by_id.get(waiter.job_id) is waiter``; it is
    rebuilt when stale entries outnumber live ones, so its size stays O(n).
    """

    def __init__(self) -> None:
        self._by_id: dict[str, Waiter] = {}  # insertion order = join order
        # OrderedDict for the queues: O(1) removal anywhere.
        self._ring: dict[str, OrderedDict[str, Waiter]] = {}
        self._turn: dict[str, list[int]] = {}  # client -> [round of its head, label]
        self._round = 0  # V
        self._labels = _count()
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
        """Add ``w`` at the end of its client's queue (a new client: round V, next label)."""
        if w.job_id in self._by_id:
            raise ValueError(f"job {w.job_id!r} is already waiting")
        self._by_id[w.job_id] = w
        queue = self._ring.get(w.client)
        if queue is None:
            queue = self._ring[w.client] = OrderedDict()
            self._turn[w.client] = [self._round, next(self._labels)]
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
            del self._ring[w.client], self._turn[w.client]  # the others keep their turns
        self._forgot()
        return w

    def pop_next(self) -> Waiter | None:
        """Remove and return the next waiter to dispatch (the fairness rule), or None."""
        if not self._ring:
            return None
        client = min(self._ring, key=lambda c: self._turn[c])
        queue = self._ring[client]
        _, w = queue.popitem(last=False)
        self._round = self._turn[client][0]
        self._turn[client][0] += 1
        if not queue:
            del self._ring[client], self._turn[client]
        del self._by_id[w.job_id]
        self._forgot()
        return w

    def order(self) -> list[Waiter]:
        """The order ``pop_next`` would give, without changing anything: every waiter's
        turn (its client's head round + its rank in the queue, its client's label),
        sorted."""
        turns = []
        for client, queue in self._ring.items():
            rnd, label = self._turn[client]
            turns += [((rnd + k, label), w) for k, w in enumerate(queue.values())]
        return [w for _, w in sorted(turns, key=lambda t: t[0])]

    def position(self, job_id: str) -> int | None:
        """1-based index of ``job_id`` in ``order()``; None if it is not waiting."""
        if job_id not in self._by_id:
            return None
        return [w.job_id for w in self.order()].index(job_id) + 1

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
