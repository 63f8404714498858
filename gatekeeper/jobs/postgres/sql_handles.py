"""The handles of jobs in the PostgreSQL store (``handles.Handle``; issue #18 §3).

The same table as ``sqlite_handles``; ``n`` (an identity) keeps creation order
among handles created at the same ``created`` time. A handle row goes when its
job's row is deleted (``sql_records.expire``).

A client's list (``client_handles``, issue #20 §2) is keyed by ``n``: an identity
never gives a value twice, so keys only grow and a cursor stays right while
handles are added (on any box). The index ``handles_client (client, n)`` (schema
version 2) reads a client's handles newest first from a cursor without a sort,
each job by its primary key: one index range, O(limit) (O(scan) with states).
"""

from __future__ import annotations

from collections.abc import Collection

import asyncpg

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.handles import Handle
from gatekeeper.jobs.postgres.bridge import Bridge
from gatekeeper.jobs.record import COLUMNS, decode
from gatekeeper.jobs.store import LIST_SCAN, HandlePage, Listed

_COLUMNS = "id, job_id, client, held, created, detached"
_H = ", ".join("h." + c for c in _COLUMNS.split(", "))
_J = ", ".join(f"j.{c} AS j_{c}" for c in COLUMNS)
# A client's handles newest first from a cursor, each with its job's record.
LIST_SQL = (
    f"SELECT h.n AS k, {_H}, {_J} FROM handles h JOIN jobs j ON j.id = h.job_id"
    " WHERE h.client = $1 AND h.n < $2 ORDER BY h.n DESC LIMIT $3"
)
# The same within the window of the client's next ``scan`` handles, for some states (a
# detached handle reads cancelled whatever its job's state: ``handle_view``).
FILTERED_SQL = (
    f"SELECT h.k, {_H}, {_J} FROM (SELECT n AS k, {_COLUMNS} FROM handles"
    " WHERE client = $1 AND n < $2 ORDER BY n DESC LIMIT $3) h JOIN jobs j ON j.id = h.job_id"
    " WHERE j.state = ANY($4::text[]) OR (h.detached IS NOT NULL AND $5)"
    " ORDER BY h.k DESC LIMIT $6"
)
# How many handles that window held, and the oldest: where the next window starts.
WINDOW_SQL = (
    "SELECT COUNT(*) AS seen, MIN(k) AS oldest FROM (SELECT n AS k FROM handles"
    " WHERE client = $1 AND n < $2 ORDER BY n DESC LIMIT $3) w"
)
_NO_CURSOR = 2**63 - 1  # above every identity value


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


def _listed(r: asyncpg.Record) -> Listed:
    return Listed(int(r["k"]), _handle(r), decode({c: r[f"j_{c}"] for c in COLUMNS}))


async def of_client(
    con: asyncpg.Connection,
    client: str,
    limit: int,
    before: int | None,
    states: list[str] | None,
    cancelled: bool,
    scan: int,
) -> HandlePage:
    """A page of ``client``'s list (``JobStore.client_handles``)."""
    cursor = _NO_CURSOR if before is None else before
    if states is None:
        rows = await con.fetch(LIST_SQL, client, cursor, limit + 1)
        return _page(rows, limit, None)
    rows = await con.fetch(FILTERED_SQL, client, cursor, scan, states, cancelled, limit + 1)
    if len(rows) > limit:
        return _page(rows, limit, None)
    w = await con.fetchrow(WINDOW_SQL, client, cursor, scan)
    return _page(rows, limit, int(w["oldest"]) if w["seen"] == scan else None)


def _page(rows: list[asyncpg.Record], limit: int, oldest: int | None) -> HandlePage:
    """The first ``limit`` of ``rows`` (newest first); ``next`` is the last one's key when
    there are more, else ``oldest`` (the next window's start, None at the end)."""
    entries = [_listed(r) for r in rows[:limit]]
    return HandlePage(entries, entries[-1].key if len(rows) > limit else oldest)


class PostgresListing:
    """``JobStore.client_handles`` over the store's bridge (``store``)."""

    bridge: Bridge

    def client_handles(
        self,
        client: str,
        *,
        limit: int,
        before: int | None = None,
        states: Collection[JobState] | None = None,
        scan: int = LIST_SCAN,
    ) -> HandlePage:
        """A page of the handles ``client`` holds or held, newest first (``JobStore``)."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        if states is None:
            return self.bridge.call(
                "client_handles", of_client, client, limit, before, None, False, scan
            )
        values = [s.value for s in JobState if s in frozenset(states)]
        cancelled = JobState.CANCELLED in states
        return self.bridge.call(
            "client_handles",
            of_client,
            client,
            limit,
            before,
            values,
            cancelled,
            max(scan, limit + 1),
        )
