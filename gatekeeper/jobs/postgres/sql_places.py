"""Places in the whole shared queue, and its limits, in PostgreSQL (issue #21; ``places``).

- **The limits, exact across boxes** (``create_limited``): one transaction takes the
  queue's advisory lock (``pg_advisory_xact_lock`` on a key of the schema's name: every
  box's ``create_limited`` on this schema queues behind it), counts with a fresh
  snapshot (READ COMMITTED: the statement after the lock sees every job committed by
  the box that held it before), decides by ``places.refusal`` and inserts (``sql_records
  .create``) or refuses (``OverLimit``), and commits, releasing the lock. Two boxes
  admitting a client's last place at once: one waits for the other's commit, then
  counts its job. What only lowers the counts (a claim, an ending) takes no lock: it
  can only make a refusal early, by the time of one commit. Batch items are outside
  both limits (``batch.book``) and a job queued again by the lease sweep was counted
  already: neither takes the lock.
- **The picture** (``picture``, every ``POLL_SECONDS`` per box, on the store's thread):
  this box's slots stamped into ``boxes.slots`` (schema version 6), then in one
  read-only REPEATABLE READ transaction (one snapshot): the places (``POSITIONS``) of
  the jobs the box shows (only those: the answer's rows are decoded on the store's
  thread, under the GIL the proxy's loop needs too), the number waiting, every running
  job's elapsed time and the slots of every box seen within ``jobs.lease``.

``POSITIONS`` is the fairness rule of ``sql_fair.CLAIM`` over the whole queue: a
client's queued jobs by ``seq`` take the rounds ``round, round + 1, ...`` of its ring
row, and the queue's order is ``(round + rank, turn)`` (``places.fair_order``, the
reference it is tested against). It sorts the queued jobs (measured: 20 ms at 10,000
queued; bench/places.py), which is why it runs once a second per box and off the
proxy's loop, never once per view.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import asyncpg

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.files import check_id
from gatekeeper.jobs.outbox import Delivery
from gatekeeper.jobs.places import Counts, refusal
from gatekeeper.jobs.postgres import sql_records
from gatekeeper.jobs.postgres.bridge import Bridge
from gatekeeper.jobs.postgres.schema import DB_NOW
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.shared import Limits, LiveTwin, OverLimit, Standing

_Q, _R = JobState.QUEUED.value, JobState.RUNNING.value

# The queue's lock: one key per schema (the connection's search_path is the schema).
LOCK = "SELECT pg_advisory_xact_lock(hashtext('gatekeeper queue ' || current_schema()))"
# A client's live jobs and the whole queue's waiting jobs, batch items left out; each an
# index range (``jobs_waiting``: version 6; ``jobs_state``), the waiting
# ones counted up to ``$2`` (``max_waiting``: what the decision needs), so a submission
# costs what the limit allows, not what the queue holds.
COUNTS = f"""
SELECT (SELECT count(*) FROM jobs WHERE client = $1 AND state = '{_Q}' AND batch IS NULL)
     + (SELECT count(*) FROM jobs WHERE client = $1 AND state = '{_R}' AND batch IS NULL)
       AS client_live,
       (SELECT count(*) FROM (SELECT 1 FROM jobs WHERE state = '{_Q}' AND batch IS NULL
                              LIMIT $2) w) AS waiting
"""
# The client's running jobs (when each started, on the database's clock) and its oldest
# queued job: a refusal's Retry-After (when the earliest of them is done).
MINE = f"""
SELECT id, state, {DB_NOW} - started AS elapsed FROM jobs
WHERE client = $1 AND batch IS NULL AND (state = '{_R}'
    OR seq = (SELECT min(seq) FROM jobs WHERE client = $1 AND state = '{_Q}'))
"""
TWIN = f"SELECT 1 FROM jobs WHERE coalesce_key = $1 AND state IN ('{_Q}', '{_R}')"
POSITIONS = f"""
WITH q AS (
    SELECT j.id, r.turn,
        r.round + row_number() OVER (PARTITION BY r.turn ORDER BY j.seq) - 1 AS rnd
    FROM jobs j JOIN ring r ON r.client = j.client
    WHERE j.state = '{_Q}'
), o AS (
    SELECT id, row_number() OVER (ORDER BY rnd, turn) AS pos FROM q
)
SELECT id, pos FROM o WHERE id = ANY($1::text[])
"""
TOTALS = f"SELECT count(*) FROM jobs WHERE state = '{_Q}'"
RUNNING = f"SELECT {DB_NOW} - started AS elapsed FROM jobs WHERE state = '{_R}'"
SLOTS = f"""
SELECT coalesce(sum(slots), 0) FROM boxes
WHERE id <> $1 AND stopped IS NULL AND seen > {DB_NOW} - $2
"""

Read = tuple[int, dict[str, int], list[float], int]


async def standing(
    con: asyncpg.Connection, client: str, cap: int | None, limits: Limits | None = None
) -> Standing:
    """``client``'s counts (the waiting ones up to ``cap``; this box's guests from
    ``limits``) and its jobs."""
    row = await con.fetchrow(COUNTS, client, cap)
    counts = Counts(
        client_live=int(row["client_live"]),
        waiting=int(row["waiting"]),
        client_guests=0 if limits is None else limits.client_guests,
        guests=0 if limits is None else limits.guests,
    )
    mine = await con.fetch(MINE, client) if row["client_live"] else []
    running = tuple(max(0.0, float(r["elapsed"] or 0.0)) for r in mine if r["state"] == _R)
    first = next((str(r["id"]) for r in mine if r["state"] == _Q), None)
    return Standing(counts, running, first)


async def create_limited(
    con: asyncpg.Connection,
    record: JobRecord,
    box: str,
    outbox: Sequence[Delivery],
    body: bytes | None,
    limits: Limits,
) -> JobRecord:
    """The new queued job if ``limits`` allow it over every box's jobs (module text)."""
    async with con.transaction():
        await con.execute(LOCK)
        row = await con.fetchrow(COUNTS, record.client, limits.max_waiting + 1)
        counts = Counts(
            int(row["client_live"]), int(row["waiting"]), limits.client_guests, limits.guests
        )
        reason = refusal(counts, limits.per_client, limits.max_waiting, limits.free_here)
        if reason is None:
            return await sql_records.create(con, record, box, outbox, body)
        # Coalescing comes before the limits, as on one box: a live twin takes the request.
        if record.coalesce_key is not None and await con.fetchval(TWIN, record.coalesce_key):
            raise LiveTwin(record.coalesce_key)
    raise OverLimit(reason, await standing(con, record.client, limits.max_waiting + 1, limits))


async def picture(
    con: asyncpg.Connection, box: str, slots: int, lease: float, ids: list[str]
) -> Read:
    """This box's slots stamped, then the whole queue in one snapshot (module text)."""
    await con.execute("UPDATE boxes SET slots = $2 WHERE id = $1", box, slots)
    async with con.transaction(isolation="repeatable_read", readonly=True):
        places = (
            {str(r["id"]): int(r["pos"]) for r in await con.fetch(POSITIONS, ids)} if ids else {}
        )
        waiting = int(await con.fetchval(TOTALS))
        running = [max(0.0, float(r["elapsed"] or 0.0)) for r in await con.fetch(RUNNING)]
        others = int(await con.fetchval(SLOTS, box, float(lease)))
    return waiting, places, running, slots + others


class PostgresPlaces:
    """The ``shared.SharedQueue`` calls of the whole queue's places and limits (mixed
    into ``store.PostgresJobStore``, which sets these)."""

    bridge: Bridge
    box: str
    lease: float

    shared_body: Callable[[JobRecord], bytes | None]  # the store's (``store``)

    def create_limited(
        self, record: JobRecord, outbox: Sequence[Delivery], limits: Limits
    ) -> JobRecord:
        check_id(record.id)
        if record.state is not JobState.QUEUED or record.batch is not None:
            raise ValueError("a new job under the limits is queued and no batch item")
        body = self.shared_body(record)
        return self.bridge.call(
            "create", create_limited, record, self.box, list(outbox), body, limits
        )

    def standing(self, client: str, cap: int | None = None) -> Standing:
        return self.bridge.call("standing", standing, client, cap)

    def picture(self, ids: Sequence[str], slots: int, done: Callable[[Read | None], None]) -> None:
        self.bridge.fire(
            "picture", picture, self.box, int(slots), float(self.lease), list(ids), done=done
        )
