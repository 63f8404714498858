"""A batch entering the waiting room, all or nothing; a batch read back; a batch deleted.

``submit_batch`` is one synchronous step, like ``JobService.submit``:

1. refused whole when the state directory is below its floor (``storage_full``)
   or when the client's open batch items plus this batch's would pass
   ``batch.per_client`` (429 ``client_limit``, Retry-After: when the earliest of
   its jobs is done);
2. every item's body file is written, then the batch row and its N job rows in
   one store transaction (``JobStore.create_batch``); a failure of either drops
   the files written and raises ``StorageError``: nothing is queued;
3. the N jobs join the waiting room in item order under the submitter's client
   key (the fair ring does the rest: ``waitroom``), each an async job held by its
   creator's handle (its own id), then ``dispatch``.

A batch has no state of its own: ``items_of`` reads its jobs (live ones from
the service, the others from the store), so after a ``kill -9`` its view is
whatever its jobs' rows say (the store's recovery makes those true).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from gatekeeper.config.batch import BatchSpec
from gatekeeper.core.vocab import QueueReason
from gatekeeper.jobs.batch.record import BatchRecord
from gatekeeper.jobs.guard import StorageError
from gatekeeper.jobs.model import Job, Refused
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.service import JobService


@dataclass(frozen=True)
class CapReached:
    """``batch.per_client`` would be passed: the numbers the 429's detail quotes."""

    refused: Refused
    open_items: int
    asked: int
    cap: int


def submit_batch(
    jobs: JobService,
    batch: BatchRecord,
    items: Sequence[tuple[JobRecord, bytes]],
    spec: BatchSpec,
) -> list[Job] | Refused | CapReached:
    """Queue the batch whole, or refuse it whole (module text)."""
    deps, cfg = jobs.deps, jobs.config
    now = deps.clock()
    full = jobs.storage_refusal(now)
    if full is not None:
        return full
    open_items = jobs.batch_open.of(batch.client)
    if open_items + len(items) > spec.per_client:
        return CapReached(
            _cap_refusal(jobs, batch.client, now), open_items, len(items), spec.per_client
        )
    written: list[Path] = []
    try:
        for record, body in items:
            writer = jobs.store.body_writer(record.id)
            try:
                writer.write(body)
                writer.commit()
            except BaseException:
                writer.abort()
                raise
            written.append(jobs.store.body_target(record.id))
        wall = deps.wall()
        stamped = replace(batch, created=wall)
        records = [replace(r, created=wall) for r, _ in items]
        announce = [d for r in records for d in jobs.events.queued(r)]
        rows = jobs.store.create_batch(stamped, records, announce)
    except (StorageError, ValueError):
        for path in written:
            jobs.store.drop_file(path)
        raise
    out = []
    for row in rows:
        job = Job.from_record(row, now=now, wall=wall)
        job.async_owners = 1
        job.holders.add(row.id)  # its creator's handle: the job's own id (handles)
        job.predicted_done = now + jobs.schedule.done_in_new(now)
        jobs._enter(job, cfg)
        out.append(job)
    jobs.dispatch()
    return out


def _cap_refusal(jobs: JobService, client: str, now: float) -> Refused:
    """429 client_limit, Retry-After when the earliest of the client's jobs is done."""
    first = jobs.room.first_of(client)
    mine = [j for j in jobs.live.values() if j.record.client == client and j.started is not None]
    if first is not None and first.job_id in jobs.live:
        mine.append(jobs.live[first.job_id])
    retry_after = jobs.schedule.retry_after_client(mine, now)
    return Refused(
        QueueReason.CLIENT_LIMIT, 429, retry_after, Refused.fields_of(jobs.config, len(jobs.room))
    )


def items_of(jobs: JobService, batch: BatchRecord) -> list[Job]:
    """The batch's jobs in item order: live ones as the service holds them now."""
    out = []
    for row in jobs.store.batch_jobs(batch.id):
        live = jobs.live.get(row.id) or jobs.unsaved.get(row.id)
        out.append(
            live
            if live is not None
            else Job.from_record(row, now=jobs.deps.clock(), wall=jobs.deps.wall())
        )
    return out


def delete_batch(jobs: JobService, batch: BatchRecord) -> int:
    """``DELETE`` of a batch: each of its items still live is deleted through its
    creator's handle, as its own ``DELETE`` would (never a job of another batch or
    client); returns how many."""
    n = 0
    for job in items_of(jobs, batch):
        if job.final or job.record.client != batch.client or job.record.batch != batch.id:
            continue
        held = jobs.find_handle(job.id)
        if held is not None and held[1].attached:
            jobs.delete_handle(*held)
            n += 1
    return n
