"""Boxes that share one queue: heartbeats, the lease sweep and where jobs are (issue #21).

Times here are the database's (``schema.DB_NOW``), never a box's wall clock: boxes'
clocks may disagree, the database is one clock.

- ``beat`` (every ``jobs.lease / 3``, fire and forget): one statement stamps the
  box's ``seen`` and its running jobs' ``heartbeat``, and answers which jobs the
  database still has running on this box (a box that was swept while it was away
  learns here that a job is no longer its own: ``service_shared`` stops it).
- ``sweep`` (every ``jobs.lease / 2``): the boxes silent for over ``lease``
  seconds, locked ``FOR UPDATE SKIP LOCKED`` (one sweeper per dead box, the
  others skip it), have their running jobs failed ``interrupted``, or queued
  again in their place (their ``seq``) under ``retry_interrupted`` (the
  ``notify_queued`` trigger wakes the idle boxes); their held queued jobs are
  cancelled ``restart`` (their clients were connected to the dead box). Their
  async queued jobs were never theirs: any box claims them (bodies in the
  database; a larger body waits for its box: docs/postgres.md), but one whose body
  only a box silent for over ``body_wait`` keeps (``admission.queue.max_wait``: the
  job has waited longer than any job may) fails ``body_lost``: that box is gone.
- ``where``: the rows of jobs a box watches but does not run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import asyncpg

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.postgres.bridge import Bridge
from gatekeeper.jobs.postgres.listen import Listener
from gatekeeper.jobs.postgres.schema import DB_NOW
from gatekeeper.jobs.postgres.sql_records import RETURNING
from gatekeeper.jobs.record import COLUMNS, JobRecord, decode
from gatekeeper.jobs.shared import Where
from gatekeeper.jobs.states import Endings

_RUNNING, _QUEUED = JobState.RUNNING.value, JobState.QUEUED.value

BEAT = f"""
WITH b AS (
    UPDATE boxes SET seen = {DB_NOW} WHERE id = $1
), h AS (
    UPDATE jobs SET heartbeat = {DB_NOW} WHERE run_box = $1 AND state = '{_RUNNING}'
    RETURNING id
)
SELECT id FROM h
"""


async def beat(con: asyncpg.Connection, box: str) -> set[str]:
    """Stamp ``box`` and its running jobs; the ids still running on it."""
    return {str(r["id"]) for r in await con.fetch(BEAT, box)}


_REQUEUE = f"""
UPDATE jobs SET state = '{_QUEUED}', started = NULL, result_status = NULL,
    result_reason = NULL, result_headers = NULL, result_bytes = 0, progress = NULL,
    run_box = NULL, heartbeat = NULL
WHERE state = '{_RUNNING}' AND run_box = ANY($1::text[]) {RETURNING}
"""
_FAIL = f"""
UPDATE jobs SET state = $2, reason = $3, finished = $4
WHERE state = '{_RUNNING}' AND run_box = ANY($1::text[]) {RETURNING}
"""
# A requeued job's client keeps its ring row (its place), or joins as a newcomer does
# (``sql_fair.JOIN``: the round in service, a new turn).
_RING = """
INSERT INTO ring (client, turn, round)
SELECT client, nextval('ring_turn'), (SELECT round FROM ring_clock) FROM (
    SELECT DISTINCT client FROM unnest($1::text[]) AS c(client)) AS c
ON CONFLICT (client) DO NOTHING
"""
_HELD = f"""
UPDATE jobs SET state = $2, reason = $3, finished = $4
WHERE state = '{_QUEUED}' AND held <> 0 AND body_box = ANY($1::text[]) {RETURNING}
"""


# The queued jobs whose body only a box silent for over $5 seconds keeps.
_LOST = f"""
UPDATE jobs SET state = $2, reason = $3, finished = $4
WHERE state = '{_QUEUED}' AND NOT body_in_db AND body_box = ANY($1::text[])
    AND body_box IN (SELECT id FROM boxes WHERE id = ANY($1::text[]) AND seen < {DB_NOW} - $5)
{RETURNING}
"""


async def sweep(
    con: asyncpg.Connection,
    box: str,
    lease: float,
    retry_interrupted: bool,
    wall: float,
    body_wait: float | None = None,
) -> list[JobRecord]:
    """The work of boxes silent for over ``lease`` seconds (module text); the changed
    records. ``body_wait`` None: large bodies wait for their box however long."""
    async with con.transaction():
        dead = await con.fetch(
            f"SELECT id FROM boxes WHERE id <> $1 AND seen < {DB_NOW} - $2 FOR UPDATE SKIP LOCKED",
            box,
            float(lease),
        )
        if not dead:
            return []
        boxes = [str(r["id"]) for r in dead]
        if retry_interrupted:
            rows = await con.fetch(_REQUEUE, boxes)
            await con.execute(_RING, [r["client"] for r in rows])
        else:
            end = Endings.INTERRUPTED
            rows = await con.fetch(_FAIL, boxes, end.state.value, end.reason, float(wall))
        restart = Endings.RESTART
        held = await con.fetch(_HELD, boxes, restart.state.value, restart.reason, float(wall))
        lost: list[asyncpg.Record] = []
        if body_wait is not None:
            end = Endings.BODY_LOST
            args = (end.state.value, end.reason, float(wall), float(body_wait))
            lost = await con.fetch(_LOST, boxes, *args)
    changed = {str(r["id"]): decode(r) for r in [*rows, *held, *lost]}
    return list(changed.values())


_WHERE = f"SELECT {', '.join(COLUMNS)}, run_box FROM jobs WHERE id = ANY($1::text[])"


async def where(con: asyncpg.Connection, job_ids: list[str], queued: bool) -> list[Where]:
    """The rows of ``job_ids`` (``queued`` False: only those no longer queued, the few
    that moved among a box's many waiting jobs)."""
    sql = _WHERE if queued else f"{_WHERE} AND state <> '{_QUEUED}'"
    rows = await con.fetch(sql, job_ids)
    return [Where(decode(r), r["run_box"]) for r in rows]


async def body_of(con: asyncpg.Connection, job_id: str) -> bytes | None:
    """A job's body as the database holds it (None: only its receiving box has it)."""
    body: bytes | None = await con.fetchval("SELECT body FROM bodies WHERE job_id = $1", job_id)
    return body


class PostgresBoxes:
    """The ``shared.SharedQueue`` calls of the store (``store``) over its bridge."""

    bridge: Bridge
    box: str
    channel: str

    def watch(self, wake: Callable[[], None]) -> None:
        """LISTEN on the schema's channel (``listen.Listener``) until the store closes."""
        listener = Listener(self.bridge.dsn, self.channel, wake, timeout=self.bridge.timeout)
        self.bridge.spawn(listener.run)

    def beat(self, done: Callable[[set[str] | None], None]) -> None:
        self.bridge.fire("beat", beat, self.box, done=done)

    def sweep(
        self,
        lease: float,
        retry_interrupted: bool,
        wall: float,
        done: Callable[[list[JobRecord] | None], None],
        body_wait: float | None = None,
    ) -> None:
        self.bridge.fire(
            "sweep",
            sweep,
            self.box,
            float(lease),
            retry_interrupted,
            float(wall),
            body_wait,
            done=done,
        )

    def where(self, job_ids: Sequence[str], *, queued: bool = True) -> list[Where]:
        return self.bridge.call("where", where, list(job_ids), queued)
