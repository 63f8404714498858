"""The batches of the PostgreSQL store (``batch.record.BatchRecord``; issue #20 §3).

The table of ``sqlite_batches`` (schema version 2) and an index on the jobs'
``batch`` column. ``create`` writes the batch row, its N job rows (each joining
the fairness ring as ``sql_records.create``'s) and the deliveries announcing them
in ONE transaction: a batch is queued whole or not at all, on every box. A batch
row goes in the statement that deletes the last of its jobs' rows
(``sql_records.expire``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import asyncpg

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.batch.record import BatchRecord
from gatekeeper.jobs.files import check_id
from gatekeeper.jobs.outbox import Delivery
from gatekeeper.jobs.postgres import sql_outbox, sql_records
from gatekeeper.jobs.postgres.bridge import Bridge
from gatekeeper.jobs.record import JobRecord, decode


async def create(
    con: asyncpg.Connection,
    batch: BatchRecord,
    items: Sequence[JobRecord],
    outbox: Sequence[Delivery],
    box: str,
    bodies: Sequence[bytes | None],
) -> list[JobRecord]:
    out: list[JobRecord] = []
    try:
        async with con.transaction():
            await con.execute(
                "INSERT INTO batches (id, client, route, created, total)"
                " VALUES ($1, $2, $3, $4, $5)",
                batch.id,
                batch.client,
                batch.route,
                float(batch.created),
                batch.total,
            )
            for r, body in zip(items, bodies, strict=True):
                row = await con.fetchrow(sql_records.INSERT, *sql_records.values(r), box, body)
                out.append(replace(r, seq=decode(row).seq))
            await sql_outbox.write(con, outbox)
    except asyncpg.UniqueViolationError as exc:
        raise ValueError(f"batch {batch.id}: {exc.detail or exc}") from exc
    return out


async def get(con: asyncpg.Connection, batch_id: str) -> BatchRecord | None:
    r = await con.fetchrow(
        "SELECT id, client, route, created, total FROM batches WHERE id = $1", batch_id
    )
    if r is None:
        return None
    return BatchRecord(
        str(r["id"]), str(r["client"]), str(r["route"]), float(r["created"]), int(r["total"])
    )


async def jobs(con: asyncpg.Connection, batch_id: str) -> list[JobRecord]:
    rows = await con.fetch(f"{sql_records.SELECT} WHERE batch = $1 ORDER BY seq", batch_id)
    return [decode(r) for r in rows]


class PostgresBatches:
    """The batch calls of ``JobStore`` over the store's bridge (``store``)."""

    bridge: Bridge
    box: str

    shared_body: Callable[[JobRecord], bytes | None]  # the store's (``store``)

    def create_batch(
        self,
        batch: BatchRecord,
        items: Sequence[JobRecord],
        outbox: Sequence[Delivery] = (),
    ) -> list[JobRecord]:
        """The batch, its queued jobs and their deliveries in one transaction (bodies
        already committed); the jobs with their ``seq``, in order. ValueError (nothing
        written) for a job that is not a new queued item of this batch or a taken id."""
        check_id(batch.id)
        if len(items) != batch.total or not items:
            raise ValueError(f"batch {batch.id}: {len(items)} jobs for {batch.total} items")
        for r in items:
            check_id(r.id)
            if r.state is not JobState.QUEUED or r.batch != batch.id:
                raise ValueError(f"job {r.id} is not a queued item of batch {batch.id}")
        bodies = [self.shared_body(r) for r in items]
        return self.bridge.call(
            "create_batch", create, batch, list(items), list(outbox), self.box, bodies
        )

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        return self.bridge.call("get_batch", get, batch_id)

    def batch_jobs(self, batch_id: str) -> list[JobRecord]:
        """The batch's jobs in item (``seq``) order; fewer than ``total`` once ``evict``
        deleted some rows."""
        return self.bridge.call("batch_jobs", jobs, batch_id)
