"""The handles of jobs in the PostgreSQL store (``handles.Handle``; issue #18 §3).

The same table as ``sqlite_handles``; ``n`` (an identity) keeps creation order
among handles created at the same ``created`` time. A handle row goes when its
job's row is deleted (``sql_records.expire``).
"""

from __future__ import annotations

import asyncpg

from gatekeeper.jobs.handles import Handle

_COLUMNS = "id, job_id, client, held, created, detached"


def _handle(r: asyncpg.Record) -> Handle:
    detached = r["detached"]
    return Handle(
        str(r["id"]),
        str(r["job_id"]),
        str(r["client"]),
        bool(r["held"]),
        float(r["created"]),
        None if detached is None else float(detached),
    )


async def add(con: asyncpg.Connection, h: Handle) -> None:
    """ValueError if the id is taken, KeyError if the job is unknown."""
    try:
        done = await con.execute(
            f"INSERT INTO handles ({_COLUMNS}) SELECT $1, $2, $3, $4, $5, $6"
            " WHERE EXISTS (SELECT 1 FROM jobs WHERE id = $2)",
            h.id,
            h.job_id,
            h.client,
            h.held,
            float(h.created),
            None if h.detached is None else float(h.detached),
        )
    except asyncpg.UniqueViolationError as exc:
        raise ValueError(f"handle {h.id} exists") from exc
    if done == "INSERT 0 0":
        raise KeyError(h.job_id)


async def get(con: asyncpg.Connection, handle_id: str) -> Handle | None:
    r = await con.fetchrow(f"SELECT {_COLUMNS} FROM handles WHERE id = $1", handle_id)
    return None if r is None else _handle(r)


async def detach(con: asyncpg.Connection, handle_id: str, when: float) -> Handle:
    await con.execute(
        "UPDATE handles SET detached = $2 WHERE id = $1 AND detached IS NULL", handle_id, when
    )
    h = await get(con, handle_id)
    if h is None:
        raise KeyError(handle_id)
    return h


async def of_job(con: asyncpg.Connection, job_id: str) -> list[Handle]:
    rows = await con.fetch(
        f"SELECT {_COLUMNS} FROM handles WHERE job_id = $1 ORDER BY created, n", job_id
    )
    return [_handle(r) for r in rows]
