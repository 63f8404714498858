"""Places in a queue several boxes share: the whole queue's figures and its limits. PURE.

With one box (SQLite) the waiting room in memory is the whole queue: positions,
ETAs and the ``per_client`` / ``max_waiting`` limits are its (``waitroom``,
``schedule``). With a shared store (``jobs.store: postgres``, issue #21) a box's
room holds only the jobs it took; the whole queue is in the database. This module
is what a box knows of it:

- ``Picture``: the whole queue as last read (every ``POLL_SECONDS``, on the store's
  thread: ``service_places``): how many wait, the 1-based place of each job this box
  shows (by the fairness rule ``claim_next`` uses: ``fair_order``), the elapsed time
  of every running job on any box and the slots of every live box. ``Schedule``
  computes ETAs and Retry-After values from it exactly as from the room and the gate.
- ``Counts`` and ``refusal``: the limits over the whole queue. The store decides
  them under one lock per queue, in the transaction that inserts the job, so two
  boxes never admit past a limit together (``postgres.sql_places``); the head of a
  request is refused by the same rule over the counts read a moment before.

``fair_order`` is the fairness rule written once more over plain rows, the reference
the SQL (``sql_places.POSITIONS``) is checked against: the waiter of rank ``k`` in
its client's queue has the key ``(round + k, turn)`` of its client's ring row, and
the queue's order is the keys' order (``waitroom``'s module text).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gatekeeper.core.vocab import QueueReason

__all__ = ["Counts", "Picture", "fair_order", "refusal"]


@dataclass(frozen=True)
class Picture:
    """The whole shared queue as read at ``read_at`` (the loop clock)."""

    waiting: int  # queued jobs of every box (batch items included)
    positions: Mapping[str, int]  # job id -> its 1-based place, for the jobs asked about
    running: tuple[float, ...]  # seconds each running job (any box) had run when read
    slots: int  # max_in_flight of every live box together (>= 1)
    read_at: float

    def position(self, job_id: str) -> int | None:
        return self.positions.get(job_id)

    def elapsed(self, now: float) -> list[float]:
        """Each running job's elapsed seconds at ``now`` (the loop clock)."""
        since = max(0.0, now - self.read_at)
        return [e + since for e in self.running]


@dataclass(frozen=True)
class Counts:
    """What the limits are decided on, over every box's jobs (batch items left out)."""

    client_live: int  # the client's queued and running jobs
    waiting: int  # queued jobs of every client
    # the client's guests and every guest waiting on this box (Gradio joins: not stored)
    client_guests: int = 0
    guests: int = 0


def refusal(
    counts: Counts, per_client: int, max_waiting: int, free_here: bool
) -> QueueReason | None:
    """Why a new job may not wait now (``waitroom.WaitingRoom.refusal``'s rule over the
    whole queue), or None. ``free_here``: this box has a free slot and nobody waits
    anywhere, so a ``max_waiting`` of 0 still lets the job start at once."""
    if counts.client_live + counts.client_guests >= per_client:
        return QueueReason.CLIENT_LIMIT
    waiting = counts.waiting + counts.guests
    if waiting >= max_waiting and not (free_here and waiting == 0):
        return QueueReason.QUEUE_FULL
    return None


def fair_order(
    queued: Iterable[tuple[str, str, int]], ring: Mapping[str, tuple[int, int]]
) -> list[str]:
    """The ids of ``queued`` (``(id, client, seq)``) in the order claims take them, by the
    ring ``client -> (round, turn)`` (module text). A client missing from the ring goes
    last (a claim never takes it)."""
    by_client: dict[str, list[tuple[int, str]]] = {}
    for job_id, client, seq in queued:
        by_client.setdefault(client, []).append((seq, job_id))
    keyed: list[tuple[tuple[int, int, int], str]] = []
    unringed = (1 << 62, 1 << 62)
    for client, jobs in by_client.items():
        rnd, turn = ring.get(client, unringed)
        for rank, (seq, job_id) in enumerate(sorted(jobs)):
            keyed.append(((rnd + rank, turn, seq), job_id))
    return [job_id for _, job_id in sorted(keyed)]
