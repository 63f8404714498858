"""The boxes of one store, as each of them sees the others (issue #21: any box serves
any job, operators see one system). One coroutine per statement, and the facade's
methods (``PostgresAnyBox``, mixed into ``PostgresJobStore``).

- **Where a result is** (``result_box``): the job's ``run_box`` and that box's
  ``boxes.address``, its internal URL (``jobs.postgres.address``), where the relay
  fetches it from.
- **The relay's secret** (``relay_secret``): one row, made by the first box that asks
  (``INSERT ... ON CONFLICT DO NOTHING``, then read back: every box gets the same
  value). Whoever can read the store is a box of it; nobody else knows the secret.
- **Cancel requests across boxes** (``request_cancel`` / ``take_cancels``): a
  ``DELETE`` served by a box that does not hold the job detaches the caller's handle
  (in the shared ``handles``) and leaves a request; the box that holds the job (its
  ``run_box`` while it runs, its ``body_box`` while it waits) takes its requests with
  its next look (``fleet.FleetWatch``, every second) and decides with what only it
  knows (its held connections), exactly as for a ``DELETE`` of its own.
- **Where a large body is** (``body_box``): a body over ``jobs.postgres.max_body_bytes``
  stays on the box that took the request (the job's ``body_box``); the box that claimed
  the job fetches it from that box's address (``bodyrelay``). A fetch that failed gives
  the job back (``give_back``): queued again in its place (its ``seq``), in the statement
  fenced to the claiming box (``run_box``, still running), its client's ring row moved
  back the round the claim moved it on (``sql_fair``), so it keeps its turn.
- **The fleet** (``fleet``): every box with its address, the age of its last ``seen``
  stamp on the database's clock (``DB_NOW``: boxes' clocks may disagree) and its
  running jobs, and the whole queue's totals; ``stamp`` writes this box's ``seen``.
  A box that stops cleanly marks itself ``stopped`` (``leave``): it is not silent,
  it left, and no alert should fire for it.
"""

from __future__ import annotations

import logging
import secrets

import asyncpg

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.anybox_store import BoxRow, Fleet, ResultPlace, RunningJob
from gatekeeper.jobs.files import JobFiles
from gatekeeper.jobs.postgres.bridge import Bridge
from gatekeeper.jobs.postgres.schema import DB_NOW
from gatekeeper.jobs.postgres.sql_boxes import body_of
from gatekeeper.jobs.postgres.sql_records import RETURNING
from gatekeeper.jobs.record import JobRecord, decode

_Q, _R = JobState.QUEUED.value, JobState.RUNNING.value
# A box that stopped cleanly is listed this long after (seconds), then no more.
STOPPED_SHOWN = 3600.0
# The running jobs a read lists (each box runs a few: one per engine slot).
RUNNING_LISTED = 200


async def _place(con: asyncpg.Connection, job_id: str, column: str) -> ResultPlace | None:
    """The box a job's ``column`` (``run_box``: its result; ``body_box``: its body) names,
    and that box's address; None when the job or the box is not known."""
    row = await con.fetchrow(
        f"SELECT j.{column} AS box, b.address FROM jobs j"
        f" LEFT JOIN boxes b ON b.id = j.{column} WHERE j.id = $1",
        job_id,
    )
    if row is None or row["box"] is None:
        return None
    return ResultPlace(row["box"], row["address"])


async def result_box(con: asyncpg.Connection, job_id: str) -> ResultPlace | None:
    return await _place(con, job_id, "run_box")


async def body_box(con: asyncpg.Connection, job_id: str) -> ResultPlace | None:
    return await _place(con, job_id, "body_box")


_GIVE_BACK = f"""
WITH j AS (
    UPDATE jobs SET state = '{_Q}', started = NULL, engine = NULL, result_status = NULL,
        result_reason = NULL, result_headers = NULL, result_bytes = 0, progress = NULL,
        run_box = NULL, heartbeat = NULL
    WHERE id = $1 AND state = '{_R}' AND run_box = $2 {RETURNING}
), r AS (
    INSERT INTO ring (client, turn, round)
    SELECT client, nextval('ring_turn'), (SELECT round FROM ring_clock) FROM j
    ON CONFLICT (client) DO UPDATE SET round = GREATEST(ring.round - 1, 0)
)
SELECT * FROM j
"""


async def give_back(con: asyncpg.Connection, job_id: str, box: str) -> JobRecord | None:
    """``job_id``, claimed by ``box`` and not started, queued again (module text); None:
    it is not running on ``box`` any more (swept, or ended)."""
    row = await con.fetchrow(_GIVE_BACK, job_id, box)
    return None if row is None else decode(row)


async def relay_secret(con: asyncpg.Connection, candidate: str) -> str:
    await con.execute(
        "INSERT INTO relay_secret (secret) VALUES ($1) ON CONFLICT DO NOTHING", candidate
    )
    return str(await con.fetchval("SELECT secret FROM relay_secret"))


async def request_cancel(con: asyncpg.Connection, job_id: str, box: str) -> None:
    await con.execute(
        f"INSERT INTO cancel_requests (job_id, requested, by_box) VALUES ($1, {DB_NOW}, $2)"
        " ON CONFLICT (job_id) DO UPDATE SET requested = EXCLUDED.requested,"
        " by_box = EXCLUDED.by_box",
        job_id,
        box,
    )


# The requests for jobs this box holds, taken (deleted) in the statement that reads
# them; requests of jobs that ended meanwhile (or whose rows are gone) are dropped too.
_TAKE = f"""
WITH mine AS (
    DELETE FROM cancel_requests c USING jobs j
    WHERE c.job_id = j.id
      AND ((j.state = '{_R}' AND j.run_box = $1) OR (j.state = '{_Q}' AND j.body_box = $1))
    RETURNING c.job_id
), stale AS (
    DELETE FROM cancel_requests c
    WHERE NOT EXISTS (
        SELECT 1 FROM jobs j WHERE j.id = c.job_id AND j.state IN ('{_Q}', '{_R}')
    )
)
SELECT job_id FROM mine
"""


async def take_cancels(con: asyncpg.Connection, box: str) -> list[str]:
    return [r["job_id"] for r in await con.fetch(_TAKE, box)]


async def stamp(con: asyncpg.Connection, box: str) -> None:
    await con.execute(f"UPDATE boxes SET seen = {DB_NOW}, stopped = NULL WHERE id = $1", box)


async def leave(con: asyncpg.Connection, box: str) -> None:
    await con.execute(f"UPDATE boxes SET stopped = {DB_NOW} WHERE id = $1", box)


_BOXES = f"""
SELECT b.id, b.address, {DB_NOW} - b.started AS up, {DB_NOW} - b.seen AS age,
       b.stopped IS NOT NULL AS stopped,
       (SELECT count(*) FROM jobs j WHERE j.run_box = b.id AND j.state = '{_R}') AS running
FROM boxes b
WHERE b.stopped IS NULL OR b.stopped > {DB_NOW} - $1
ORDER BY b.id
"""
_TOTALS = f"""
SELECT count(*) FILTER (WHERE state = '{_Q}') AS queued,
       count(*) FILTER (WHERE state = '{_R}') AS running,
       {DB_NOW} - min(created) FILTER (WHERE state = '{_Q}') AS oldest
FROM jobs WHERE state IN ('{_Q}', '{_R}')
"""


_RUNNING = f"""
SELECT run_box, route, engine, client, {DB_NOW} - started AS elapsed, progress
FROM jobs WHERE state = '{_R}' ORDER BY started LIMIT $1
"""


async def fleet(con: asyncpg.Connection, box: str) -> Fleet:
    """This box's ``seen`` stamped, then every box and the whole queue, in one round."""
    await stamp(con, box)
    rows = await con.fetch(_BOXES, STOPPED_SHOWN)
    totals = await con.fetchrow(_TOTALS)
    boxes = tuple(
        BoxRow(
            id=r["id"],
            address=r["address"],
            uptime=max(0.0, float(r["up"])),
            seen_age=max(0.0, float(r["age"])),
            running=int(r["running"]),
            stopped=bool(r["stopped"]),
        )
        for r in rows
    )
    jobs = tuple(
        RunningJob(
            box=r["run_box"] or "?",
            route=r["route"],
            engine=r["engine"],
            client=r["client"],
            elapsed=max(0.0, float(r["elapsed"] or 0.0)),
            progress=r["progress"],
        )
        for r in await con.fetch(_RUNNING, RUNNING_LISTED)
    )
    oldest = totals["oldest"]
    return Fleet(
        box=box,
        boxes=boxes,
        queued=int(totals["queued"]),
        running=int(totals["running"]),
        oldest_wait=0.0 if oldest is None else max(0.0, float(oldest)),
        jobs=jobs,
    )


log = logging.getLogger("gatekeeper.jobs")


class PostgresAnyBox:
    """The ``anybox_store.AnyBoxStore`` methods of ``PostgresJobStore`` (which sets these)."""

    bridge: Bridge
    box: str
    _claimed: set[str]
    _files: JobFiles

    def body_from_db(self, job_id: str) -> None:
        """A job just claimed here whose body is in the database (another box took it):
        the body written into this box's spool. Never left running here without it: if
        the database's copy cannot be read or this box's disk cannot take it, the job is
        given back in its place and the fault raised (a ``StorageError`` to the caller,
        which holds this box's dispatch)."""
        try:
            body = self.bridge.call("claim_next", body_of, job_id)
            if body is not None:
                writer = self._files.body_writer(job_id)
                try:
                    writer.write(body)
                    writer.commit()
                finally:
                    writer.abort()
        except Exception:
            try:
                self.give_back(job_id)
            except Exception:  # the database failing too: the lease sweep is what is left
                log.exception("job %s: not given back after its body failed", job_id)
            raise

    def body_place(self, job_id: str) -> ResultPlace | None:
        """Where ``job_id``'s request body is kept: the box that took it, its address."""
        return self.bridge.call("body_place", body_box, job_id)

    def give_back(self, job_id: str) -> JobRecord | None:
        """``job_id`` (claimed here, its engine not asked) queued again in its place."""
        row = self.bridge.call("give_back", give_back, job_id, self.box)
        self._claimed.discard(job_id)
        return row

    def result_place(self, job_id: str) -> ResultPlace | None:
        return self.bridge.call("result_place", result_box, job_id)

    def relay_secret(self) -> str:
        return self.bridge.call("relay_secret", relay_secret, secrets.token_urlsafe(32))

    def request_cancel(self, job_id: str) -> None:
        self.bridge.call("request_cancel", request_cancel, job_id, self.box)

    async def take_cancels(self) -> list[str]:
        return await self.bridge.acall("take_cancels", take_cancels, self.box)

    async def fleet(self) -> Fleet:
        return await self.bridge.acall("fleet", fleet, self.box)

    async def leave(self) -> None:
        await self.bridge.acall("leave", leave, self.box)
