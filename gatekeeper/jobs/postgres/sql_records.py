"""The PostgreSQL store's statements over job records (``jobs``), one coroutine each.

Each function takes a connection (the bridge hands one out of the pool) and does
one statement, or one short transaction. Transitions follow ``states.TRANSITIONS``:
each UPDATE names the states it may start from, and a change that matches no row
is told apart afterwards (``KeyError`` for an unknown id, ``ValueError`` with the
state it is in), as in ``sqlite``. The fairness ring is ``sql_fair``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.outbox import Delivery
from gatekeeper.jobs.postgres import sql_fair, sql_outbox
from gatekeeper.jobs.postgres.schema import DB_NOW
from gatekeeper.jobs.record import COLUMNS, STORED, JobRecord, decode, encode
from gatekeeper.jobs.shared import Fenced, LiveTwin
from gatekeeper.jobs.states import KEPT_STATES, LIVE_STATES

SELECT = f"SELECT {', '.join(COLUMNS)} FROM jobs"
RETURNING = f"RETURNING {', '.join(COLUMNS)}"
_INSERTED = tuple(c for c in COLUMNS if c != "seq")
_BODY = f"${len(_INSERTED) + 2}::bytea"
# One statement (one round trip): the row, its body when it is small enough for any box
# to read it (``bodies``; schema version 4), and its client joins the ring (sql_fair.JOIN).
# Its arguments: ``values(record)``, the receiving box, the body or None.
INSERT = f"""
WITH j AS (
    INSERT INTO jobs ({", ".join(_INSERTED)}, body_box, body_in_db)
    VALUES ({", ".join(f"${i + 1}" for i in range(len(_INSERTED) + 1))}, {_BODY} IS NOT NULL)
    RETURNING {", ".join(COLUMNS)}
), b AS (
    INSERT INTO bodies (job_id, body) SELECT id, {_BODY} FROM j WHERE {_BODY} IS NOT NULL
), r AS ({sql_fair.JOIN})
SELECT * FROM j
"""
_REAL = frozenset(f.name for f in STORED if f.metadata["sql"].startswith("REAL"))
LIVE = [s.value for s in LIVE_STATES]
KEPT = [s.value for s in KEPT_STATES]


def values(record: JobRecord) -> list[Any]:
    """The INSERT's arguments for ``record`` (REAL columns as floats: asyncpg is strict)."""
    enc = encode(record)
    return [float(enc[c]) if c in _REAL and enc[c] is not None else enc[c] for c in _INSERTED]


async def create(
    con: asyncpg.Connection,
    record: JobRecord,
    box: str,
    outbox: Sequence[Delivery] = (),
    body: bytes | None = None,
) -> JobRecord:
    """The new queued job (one statement), with ``outbox`` in its transaction; ``body``:
    its request body when any box may read it from the database (None: only ``box``)."""
    try:
        if not outbox:
            row = await con.fetchrow(INSERT, *values(record), box, body)
        else:
            async with con.transaction():
                row = await con.fetchrow(INSERT, *values(record), box, body)
                await sql_outbox.write(con, outbox)
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "jobs_live_key" and record.coalesce_key is not None:
            raise LiveTwin(record.coalesce_key) from exc
        raise ValueError(f"job {record.id} exists") from exc
    return decode(row)


async def get(con: asyncpg.Connection, job_id: str) -> JobRecord | None:
    row = await con.fetchrow(f"{SELECT} WHERE id = $1", job_id)
    return None if row is None else decode(row)


async def in_state(con: asyncpg.Connection, state: str) -> list[JobRecord]:
    rows = await con.fetch(f"{SELECT} WHERE state = $1 ORDER BY seq", state)
    return [decode(r) for r in rows]


async def live_with_key(con: asyncpg.Connection, key: str) -> JobRecord | None:
    row = await con.fetchrow(
        f"{SELECT} WHERE coalesce_key = $1 AND state = ANY($2::text[]) ORDER BY seq DESC LIMIT 1",
        key,
        LIVE,
    )
    return None if row is None else decode(row)


async def kept_with_key(
    con: asyncpg.Connection, key: str, since: float, box: str
) -> list[JobRecord]:
    """Done 2xx jobs with ``key`` finished after ``since`` whose result is on ``box``,
    newest first (another box's result needs relaying: module text of ``store``)."""
    rows = await con.fetch(
        f"{SELECT} WHERE coalesce_key = $1 AND state = $2 AND run_box = $3"
        " AND result_status BETWEEN 200 AND 299 AND finished > $4"
        " ORDER BY finished DESC, seq DESC",
        key,
        JobState.DONE.value,
        box,
        since,
    )
    return [decode(r) for r in rows]


async def _explain(
    con: asyncpg.Connection, job_id: str, states: list[str], box: str | None = None
) -> None:
    """Raise why an UPDATE of ``job_id`` from ``states`` (fenced to ``box``) matched no row."""
    row = await con.fetchrow("SELECT state, run_box FROM jobs WHERE id = $1", job_id)
    if row is None:
        raise KeyError(job_id)
    state, run_box = row["state"], row["run_box"]
    if box is not None and (run_box != box or state != JobState.RUNNING.value):
        # Not (or no longer) this box's to change: taken by a sweep, ended elsewhere.
        raise Fenced(job_id, run_box, state)
    raise ValueError(f"job {job_id} is {state}, not {' or '.join(states)}")


async def update(
    con: asyncpg.Connection,
    job_id: str,
    sets: str,
    args: tuple[Any, ...],
    states: list[str],
    box: str | None = None,
) -> JobRecord:
    """``UPDATE jobs SET <sets>`` (placeholders from $3) of a job in one of ``states``.

    ``box``: the fence (issue #21): a running job changes only by the box that runs it
    (``run_box``); any box may end a queued one. A box whose lease lapsed finds its
    job taken (requeued or failed by a sweep, maybe running elsewhere): ``Fenced``."""
    fence = ""
    if box is not None:
        fence = f" AND (state = '{JobState.QUEUED.value}' OR run_box = ${len(args) + 3})"
        args = (*args, box)
    row = await con.fetchrow(
        f"UPDATE jobs SET {sets} WHERE id = $1 AND state = ANY($2::text[]){fence} {RETURNING}",
        job_id,
        states,
        *args,
    )
    if row is None:
        await _explain(con, job_id, states, box)
    return decode(row)


# One statement: the claim by id, and its client's next round (sql_fair.SERVED).
_MARK_RUNNING = f"""
WITH j AS (
    UPDATE jobs SET state = '{JobState.RUNNING.value}', started = $2, engine = $3,
        run_box = $4, heartbeat = {DB_NOW}
    WHERE id = $1 AND state = '{JobState.QUEUED.value}'
    RETURNING {", ".join(COLUMNS)}
), {sql_fair.SERVED}
SELECT * FROM j
"""


async def _claim_by_id(
    con: asyncpg.Connection, job_id: str, started: float, engine: str | None, box: str
) -> JobRecord:
    row = await con.fetchrow(_MARK_RUNNING, job_id, started, engine, box)
    if row is None:
        await _explain(con, job_id, [JobState.QUEUED.value])
    return decode(row)


async def mark_running(
    con: asyncpg.Connection,
    job_id: str,
    started: float,
    engine: str | None,
    box: str,
    outbox: Sequence[Delivery] = (),
) -> JobRecord:
    """The claim by id (one statement), with ``outbox`` in its transaction (a refused
    claim writes none)."""
    if not outbox:
        return await _claim_by_id(con, job_id, started, engine, box)
    async with con.transaction():
        row = await _claim_by_id(con, job_id, started, engine, box)
        await sql_outbox.write(con, outbox)
    return row


async def finish(
    con: asyncpg.Connection,
    job_id: str,
    sets: str,
    args: tuple[Any, ...],
    states: list[str],
    outbox: Sequence[Delivery],
    box: str | None = None,
) -> JobRecord:
    """``update`` to a final state with ``outbox`` in its transaction (a refused change
    writes none); fenced to ``box`` (``update``)."""
    if not outbox:
        return await update(con, job_id, sets, args, states, box)
    async with con.transaction():
        row = await update(con, job_id, sets, args, states, box)
        await sql_outbox.write(con, outbox)
    return row


async def add_coalesced(con: asyncpg.Connection, job_id: str) -> int:
    n = await con.fetchval(
        "UPDATE jobs SET coalesced = coalesced + 1 WHERE id = $1 RETURNING coalesced", job_id
    )
    if n is None:
        raise KeyError(job_id)
    return int(n)


async def set_result_bytes(con: asyncpg.Connection, job_id: str, size: int) -> None:
    await con.execute("UPDATE jobs SET result_bytes = $2 WHERE id = $1", job_id, size)


async def kept_ids(con: asyncpg.Connection, box: str, bound: float, older: bool) -> list[str]:
    """Ids of ``box``'s kept (done/failed/cancelled) jobs finished at or before ``bound``
    (``older``), or after it, oldest first."""
    where = "finished <= $3" if older else "finished > $3"
    rows = await con.fetch(
        "SELECT id FROM jobs WHERE state = ANY($1::text[]) AND COALESCE(run_box, body_box) = $2"
        f" AND {where} ORDER BY finished, seq",
        KEPT,
        box,
        bound,
    )
    return [str(r["id"]) for r in rows]


# Expired rows past their keep go with their 410 marks (no event of theirs is written
# any more).
_DROP = """
WITH gone AS (
    DELETE FROM jobs WHERE state = $1 AND finished <= $2 RETURNING id
)
DELETE FROM outbox_gone g USING gone WHERE g.job_id = gone.id
"""
# A batch goes once none of its jobs' rows is left (``sql_batches``). A statement of its
# own, not a part of _DROP's: it sees the rows this transaction deleted and those another
# box's eviction committed, so two boxes deleting a batch's last rows at once leave no
# batch behind for long (the next eviction anywhere deletes it).
_DROP_BATCHES = "DELETE FROM batches b WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch = b.id)"


async def expire(
    con: asyncpg.Connection, ids: list[tuple[str, str, str]], drop_before: float
) -> None:
    """Each ``(id, state, reason)`` still kept becomes expired; rows expired before
    ``drop_before`` and their handles are deleted; the ring forgets idle clients."""
    async with con.transaction():
        await con.executemany(
            "UPDATE jobs SET state = $2, reason = $3 WHERE id = $1 AND state = ANY($4::text[])",
            [(i, state, reason, KEPT) for i, state, reason in ids],
        )
        await con.execute(_DROP, JobState.EXPIRED.value, drop_before)
        await con.execute(_DROP_BATCHES)
        await con.execute(
            "DELETE FROM handles h WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = h.job_id)"
        )
    await sql_fair.forget_idle(con)
