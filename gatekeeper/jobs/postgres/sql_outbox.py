"""The webhook outbox in the PostgreSQL store (``outbox.Delivery``; issue #20 §1).

The tables of ``sqlite_outbox`` (schema version 2): ``outbox`` holds the
deliveries not yet delivered, ``outbox_gone`` the (job, destination) pairs a
receiver answered 410 for. ``write`` runs inside the transaction of the state
change it announces (``sql_records``, ``sql_batches``), so a state change is
never committed without its deliveries nor the other way round.

Several boxes deliver from one outbox. ``TAKE`` is one statement: it picks the
due rows ``FOR UPDATE SKIP LOCKED`` and stamps their lease (``leased`` until,
``leased_by`` this box), so two boxes taking at once never take one row twice
(a row another box just leased fails the re-checked ``leased`` condition). A
row waits while an earlier row of its job and destination is in the outbox,
leased or not (one job's events reach a destination in order, one at a time),
exactly as in SQLite. Lease times are the callers' (``now``, ``lease_until``:
each box's wall clock; a box whose clock runs ahead takes a lapsed lease early,
which is an early retry of a delivery receivers de-duplicate by ``webhook-id``).
At open a box releases the leases it holds itself (``release``: its last process
is gone, and the box id lives in its state directory), never another box's.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import asyncpg

from gatekeeper.jobs.outbox import Backlog, Delivery
from gatekeeper.jobs.postgres.bridge import Bridge

_COLUMNS = "id, job_id, destination, url, event, payload, created, next_at, attempts, last_error"
_WRITE = (
    f"INSERT INTO outbox ({_COLUMNS}) SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10"
    " WHERE NOT EXISTS (SELECT 1 FROM outbox_gone g WHERE g.job_id = $2 AND g.destination = $3)"
)
# The due rows (oldest due first), none behind an earlier row of its job and destination,
# locked without waiting for another box's take, and leased by this one: one statement.
TAKE = f"""
WITH pick AS (
    SELECT o.seq FROM outbox o
    WHERE o.next_at <= $1 AND (o.leased IS NULL OR o.leased <= $1)
      AND NOT (o.destination = ANY($4::text[]))
      AND NOT EXISTS (SELECT 1 FROM outbox e WHERE e.job_id = o.job_id
                      AND e.destination = o.destination AND e.seq < o.seq)
    ORDER BY o.next_at, o.seq
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE outbox SET leased = $3, leased_by = $5 FROM pick WHERE outbox.seq = pick.seq
RETURNING outbox.seq, {", ".join("outbox." + c for c in _COLUMNS.split(", "))}
"""


def _delivery(r: asyncpg.Record) -> Delivery:
    err = r["last_error"]
    return Delivery(
        str(r["id"]),
        str(r["job_id"]),
        str(r["destination"]),
        str(r["url"]),
        str(r["event"]),
        bytes(r["payload"]),
        float(r["created"]),
        float(r["next_at"]),
        int(r["attempts"]),
        None if err is None else str(err),
    )


async def write(con: asyncpg.Connection, deliveries: Iterable[Delivery]) -> None:
    """Insert ``deliveries`` (inside the caller's transaction), except those of a
    (job, destination) that answered 410."""
    rows = [
        (
            d.id,
            d.job_id,
            d.destination,
            d.url,
            d.event,
            bytes(d.payload),
            float(d.created),
            float(d.next_at),
            int(d.attempts),
            d.last_error,
        )
        for d in deliveries
    ]
    if rows:
        await con.executemany(_WRITE, rows)


async def add(con: asyncpg.Connection, deliveries: list[Delivery]) -> None:
    async with con.transaction():
        await write(con, deliveries)


async def release(con: asyncpg.Connection, box: str) -> None:
    """The leases ``box`` holds released (at open: its last process is gone)."""
    await con.execute("UPDATE outbox SET leased = NULL, leased_by = NULL WHERE leased_by = $1", box)


async def take(
    con: asyncpg.Connection,
    now: float,
    limit: int,
    lease_until: float,
    skip: Collection[str],
    box: str,
) -> list[Delivery]:
    rows = await con.fetch(TAKE, now, limit, lease_until, list(skip), box)
    rows = sorted(rows, key=lambda r: (float(r["next_at"]), int(r["seq"])))
    return [_delivery(r) for r in rows]


async def delivered(con: asyncpg.Connection, delivery_id: str) -> None:
    await con.execute("DELETE FROM outbox WHERE id = $1", delivery_id)


async def retry(con: asyncpg.Connection, delivery_id: str, next_at: float, error: str) -> None:
    await con.execute(
        "UPDATE outbox SET next_at = $2, attempts = attempts + 1, last_error = $3,"
        " leased = NULL, leased_by = NULL WHERE id = $1",
        delivery_id,
        next_at,
        error,
    )


async def gone(con: asyncpg.Connection, job_id: str, destination: str) -> int:
    async with con.transaction():
        await con.execute(
            "INSERT INTO outbox_gone (job_id, destination) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            job_id,
            destination,
        )
        done = await con.execute(
            "DELETE FROM outbox WHERE job_id = $1 AND destination = $2", job_id, destination
        )
    return int(done.split()[-1])


async def wake(con: asyncpg.Connection, destination: str, now: float) -> int:
    done = await con.execute(
        "UPDATE outbox SET next_at = $2 WHERE destination = $1 AND next_at > $2 AND leased IS NULL",
        destination,
        now,
    )
    return int(done.split()[-1])


async def backlog(con: asyncpg.Connection) -> Backlog:
    r = await con.fetchrow("SELECT COUNT(*) AS n, MIN(created) AS oldest FROM outbox")
    return Backlog(int(r["n"]), None if r["oldest"] is None else float(r["oldest"]))


async def pending(con: asyncpg.Connection, job_id: str) -> list[Delivery]:
    rows = await con.fetch(f"SELECT {_COLUMNS} FROM outbox WHERE job_id = $1 ORDER BY seq", job_id)
    return [_delivery(r) for r in rows]


class PostgresOutbox:
    """The outbox calls of ``JobStore`` over the store's bridge (``store``)."""

    bridge: Bridge
    box: str

    def outbox_add(self, deliveries: list[Delivery]) -> None:
        """Deliveries of an event that changes no job state (job.progress)."""
        self.bridge.call("outbox_add", add, deliveries)

    def outbox_take(
        self, now: float, limit: int, lease_until: float, skip: Collection[str] = ()
    ) -> list[Delivery]:
        """Up to ``limit`` due rows, oldest due first, leased by this box (``TAKE``)."""
        return self.bridge.call(
            "outbox_take", take, float(now), limit, float(lease_until), skip, self.box
        )

    def outbox_delivered(self, delivery_id: str) -> None:
        self.bridge.call("outbox_delivered", delivered, delivery_id)

    def outbox_retry(self, delivery_id: str, next_at: float, error: str) -> None:
        self.bridge.call("outbox_retry", retry, delivery_id, float(next_at), error)

    def outbox_gone(self, job_id: str, destination: str) -> int:
        return self.bridge.call("outbox_gone", gone, job_id, destination)

    def outbox_wake(self, destination: str, now: float) -> int:
        return self.bridge.call("outbox_wake", wake, destination, float(now))

    def outbox_backlog(self) -> Backlog:
        return self.bridge.call("outbox_backlog", backlog)

    def outbox_pending(self, job_id: str) -> list[Delivery]:
        return self.bridge.call("outbox_pending", pending, job_id)
