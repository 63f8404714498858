"""What the store keeps of a batch (issue #20 §3): ``BatchRecord``. PURE: no I/O.

A batch is one ``POST`` of the engine's batch body, cut into N jobs
(``JobRecord.batch`` names their batch; their ``seq`` order is the items'
order). The batch row and its N job rows are created in one store transaction
(``JobStore.create_batch``): all or nothing. The batch's state is never stored:
it is read from its jobs (``jobs.batch.view``), so a ``kill -9`` mid-batch
cannot leave the two disagreeing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchRecord:
    id: str  # new_job_id's shape: a capability, with the box prefix behind HAProxy
    client: str  # the submitter's client key: only it may read or delete the batch
    route: str  # the batch route's name
    created: float  # wall clock
    total: int  # items, = its jobs
