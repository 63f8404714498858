"""The open batch items of each client key, as the waiting room counts them. PURE.

A batch item is a job like any other in the waiting room (the fair ring,
positions, ETAs), with three differences kept here (issue #20 §3):

- its cap is ``batch.per_client`` (open items of one client key, all its
  batches together), checked when a batch arrives, not ``admission.queue.
  per_client``: ``exempt`` leaves a client's open items out of that count;
- it never fills the queue for others: ``exempt`` raises ``max_waiting`` by
  the batch items waiting, so one user's 20-song batch does not turn another
  user's one song away with ``queue_full``;
- it waits as long as its batch takes (``deadline``): ``max_wait`` is one
  request's patience, not N songs'.

``JobService`` calls ``entered`` when a job joins its live set (it returns the
waiter's deadline) and ``left`` when it leaves it; the counts are rebuilt at
start by the same calls.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace

from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.waitroom import QueueLimits


class OpenItems:
    def __init__(self) -> None:
        self.by_client: Counter[str] = Counter()

    def of(self, client: str) -> int:
        return self.by_client[client]

    def entered(self, record: JobRecord, arrived: float, max_wait: float) -> float:
        """``record``'s job joined the live set: counted when a batch item; returns when
        its waiter gives up (never, for a batch item: module text)."""
        if record.batch is None:
            return arrived + max_wait
        self.by_client[record.client] += 1
        return math.inf

    def left(self, record: JobRecord) -> None:
        if record.batch is not None and self.by_client[record.client] > 0:
            self.by_client[record.client] -= 1
            if not self.by_client[record.client]:
                del self.by_client[record.client]

    def exempt(
        self, client: str, running: int, limits: QueueLimits, running_jobs: Iterable[JobRecord]
    ) -> tuple[int, QueueLimits]:
        """``running`` and ``limits`` as a lone request of ``client`` is judged (module
        text); ``running_jobs``: every client's running jobs."""
        if not self.by_client:
            return running, limits
        waiting = self.by_client.total() - sum(1 for r in running_jobs if r.batch is not None)
        return running - self.by_client[client], replace(
            limits, max_waiting=limits.max_waiting + waiting
        )
