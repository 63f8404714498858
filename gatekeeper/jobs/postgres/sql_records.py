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
from gatekeeper.jobs.states import KEPT_STATES, LIVE_STATES

SELECT = f"SELECT {', '.join(COLUMNS)} FROM jobs"
RETURNING = f"RETURNING {', '.join(COLUMNS)}"
_INSERTED = tuple(c for c in COLUMNS if c != "seq")
# One statement (one round trip): the row, and its client joins the ring (sql_fair.JOIN).
INSERT = f"""
WITH j AS (
    INSERT INTO jobs ({", ".join(_INSERTED)}, body_box)
    VALUES ({", ".join(f"${i + 1}" for i in range(len(_INSERTED) + 1))})
    RETURNING {", ".join(COLUMNS)}
), r AS ({sql_fair.JOIN})
SELECT * FROM j
"""
_REAL = frozenset(f.name for f in STORED if f.metadata["sql"].startswith("REAL"))
LIVE = [s.value for s in LIVE_STATES]
KEPT = [s.value for s in KEPT_STATES]


class LiveTwin(ValueError):
    """A live job with the same coalescing key exists (maybe on another box): the
    database's unique key over live jobs refused a second one (issue #21)."""

    def __init__(self, key: str):
        super().__init__(f"a queued or running job has coalescing key {key!r}")
        self.key = key


def values(record: JobRecord) -> list[Any]:
    """The INSERT's arguments for ``record`` (REAL columns as floats: asyncpg is strict)."""
    enc = encode(record)
    return [float(enc[c]) if c in _REAL and enc[c] is not None else enc[c] for c in _INSERTED]


async def create(
    con: asyncpg.Connection, record: JobRecord, box: str, outbox: Sequence[Delivery] = ()
) -> JobRecord:
    """The new queued job (one statement), with ``outbox`` in its transaction."""
    try:
        if not outbox:
            row = await con.fetchrow(INSERT, *values(record), box)
        else:
            async with con.transaction():
                row = await con.fetchrow(INSERT, *values(record), box)
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


async def _explain(con: asyncpg.Connection, job_id: str, states: list[str]) -> None:
    """Raise why an UPDATE of ``job_id`` from ``states`` matched no row."""
    state = await con.fetchval("SELECT state FROM jobs WHERE id = $1", job_id)
    if state is None:
        raise KeyError(job_id)
    raise ValueError(f"job {job_id} is {state}, not {' or '.join(states)}")


async def update(
    con: asyncpg.Connection, job_id: str, sets: str, args: tuple[Any, ...], states: list[str]
) -> JobRecord:
    """``UPDATE jobs SET <sets>`` (placeholders from $3) of a job in one of ``states``."""
    row = await con.fetchrow(
        f"UPDATE jobs SET {sets} WHERE id = $1 AND state = ANY($2::text[]) {RETURNING}",
        job_id,
        states,
        *args,
    )
    if row is None:
        await _explain(con, job_id, states)
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
) -> JobRecord:
    """``update`` to a final state with ``outbox`` in its transaction (a refused change
    writes none)."""
    if not outbox:
        return await update(con, job_id, sets, args, states)
    async with con.transaction():
        row = await update(con, job_id, sets, args, states)
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
