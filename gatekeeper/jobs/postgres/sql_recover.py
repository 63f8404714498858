"""The PostgreSQL store's ``recover``: one box's rows made true again after it died.

In a shared store a box recovers only what was its own (``run_box``/``body_box``
is this box): its running jobs (nobody else runs them), its held queued jobs
(their clients were connected to it) and its queued jobs whose body file it
lost. Other boxes' jobs are theirs. The rules are ``sqlite_recover``'s:

- running -> failed "interrupted" (never silently re-run, issue #9 §2); with
  ``retry_interrupted`` -> queued again with the same seq (its place);
- held queued -> cancelled "restart";
- async queued without its body file -> failed "body_lost" (``has_body`` asks
  the box's files);
- alone (no other box seen within ``lease``), the ring is rebuilt from the queued jobs,
  as a restarted box's waiting room is; with other boxes alive it is theirs too: only
  a client of a job queued again joins it if it is not in it (``_RING``).

A box whose heartbeat lapsed while it is still away is recovered by the others
(``jobs.lease``; issue #21, not in this version: docs/postgres.md).
"""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.postgres import sql_fair
from gatekeeper.jobs.postgres.schema import DB_NOW
from gatekeeper.jobs.postgres.sql_records import SELECT
from gatekeeper.jobs.record import JobRecord, decode
from gatekeeper.jobs.states import Endings

_RUNNING, _QUEUED = JobState.RUNNING.value, JobState.QUEUED.value


# While other boxes are alive (seen within ``lease``), the ring is theirs too (issue
# #21): a box that restarts must not reorder the fair queue they are serving. Only
# clients with a queued job but no ring row (their jobs were queued again above) join
# it, as newcomers do (the round in service, a new turn: ``sql_fair.JOIN``), in the order
# of their oldest queued job; the others keep their places.
_RING = """
INSERT INTO ring (client, turn, round)
SELECT client, nextval('ring_turn'), (SELECT round FROM ring_clock) FROM (
    SELECT client, MIN(seq) AS first FROM jobs j WHERE state = $1
        AND NOT EXISTS (SELECT 1 FROM ring r WHERE r.client = j.client)
    GROUP BY client ORDER BY first
) AS missing
ON CONFLICT (client) DO NOTHING
"""


async def recover(
    con: asyncpg.Connection,
    box: str,
    now: float,
    retry_interrupted: bool,
    has_body: Callable[[str], bool],
    lease: float = 30.0,
) -> list[JobRecord]:
    """Returns the changed records in seq order (``JobStore.recover``)."""
    changed: dict[str, None] = {}
    async with con.transaction():
        for r in await con.fetch(
            "SELECT id FROM jobs WHERE state = $1 AND run_box = $2 ORDER BY seq FOR UPDATE",
            _RUNNING,
            box,
        ):
            changed[r["id"]] = None
        ids = list(changed)
        if retry_interrupted:
            await con.execute(
                "UPDATE jobs SET state = $1, started = NULL, result_status = NULL,"
                " result_reason = NULL, result_headers = NULL, result_bytes = 0,"
                " progress = NULL, run_box = NULL, heartbeat = NULL WHERE id = ANY($2::text[])",
                _QUEUED,
                ids,
            )
        else:
            end = Endings.INTERRUPTED
            await con.execute(
                "UPDATE jobs SET state = $1, reason = $2, finished = $3 WHERE id = ANY($4::text[])",
                end.state.value,
                end.reason,
                now,
                ids,
            )
        # Held jobs requeued just above are included: their client is gone too.
        rows = await con.fetch(
            "SELECT id, held FROM jobs WHERE state = $1 AND body_box = $2 ORDER BY seq",
            _QUEUED,
            box,
        )
        for r in rows:
            if r["held"]:
                end = Endings.RESTART
            elif not has_body(r["id"]):
                end = Endings.BODY_LOST
            else:
                continue
            await con.execute(
                "UPDATE jobs SET state = $1, reason = $2, finished = $3 WHERE id = $4",
                end.state.value,
                end.reason,
                now,
                r["id"],
            )
            changed[r["id"]] = None
    others = await con.fetchval(
        f"SELECT count(*) FROM boxes WHERE id <> $1 AND seen > {DB_NOW} - $2", box, lease
    )
    if others:
        await con.execute(_RING, _QUEUED)
    else:  # alone: the ring as this box's restarted waiting room would be
        await sql_fair.rebuild(con)
    rows = await con.fetch(f"{SELECT} WHERE id = ANY($1::text[]) ORDER BY seq", list(changed))
    return [decode(r) for r in rows]


async def file_states(con: asyncpg.Connection, box: str) -> dict[str, str]:
    """The state of every job with a file on ``box`` (for the sweep of its files)."""
    rows = await con.fetch("SELECT id, state FROM jobs WHERE body_box = $1 OR run_box = $1", box)
    return {str(r["id"]): str(r["state"]) for r in rows}


async def ended_of(con: asyncpg.Connection, job_ids: list[str]) -> list[str]:
    """Of ``job_ids``, those whose job is no longer queued or running (a body file this
    box kept for it may go: ``PostgresHousekeeping.evict``)."""
    rows = await con.fetch(
        "SELECT id FROM jobs WHERE id = ANY($1::text[]) AND state NOT IN ($2, $3)",
        job_ids,
        _QUEUED,
        _RUNNING,
    )
    return [str(r["id"]) for r in rows]
