"""The waiting room's fairness rule in PostgreSQL: which queued job the next claim takes.

The rule is ``waitroom``'s and ``sqlite_fair``'s (round-robin across client keys,
FIFO within one key, a newcomer in the round in service; issue #20 §3) over the
whole shared queue: a table ``ring(client, turn, round)`` (``turn``: when the
client joined the ring, from the sequence ``ring_turn``; ``round``: the round of
its oldest queued job) and the one-row table ``ring_clock`` (``round``: the round
of the last job claimed, V). The next job is the oldest queued job of the client
with the smallest ``(round, turn)`` that has one; that client's round then goes
up by one and V becomes the round claimed. A client joins with round V and a new
turn. ``claim`` does it in ONE statement, ``FOR UPDATE OF ring SKIP LOCKED``: two
boxes claiming at once lock two different clients' ring rows, so each takes a
different client's oldest job and no job is claimed twice; both then update
``ring_clock`` (to the larger round: V only moves forward), always the last row a
statement here locks, so no two statements wait on each other in a cycle.

Where ``sqlite_fair`` deletes a client's row when its last queued job leaves,
here a row may outlive its client's jobs ("idle"): ``claim`` skips a client
without a queued job, and ``joined`` gives an idle client round V and a new turn,
exactly what the SQLite ring gives a client it re-inserts (``JOIN``), so the order
is the same. Deleting rows
inside a claim would depend on the claim's snapshot seeing every concurrent
arrival, which READ COMMITTED does not promise; ``forget_idle`` deletes idle rows
later, after locking them, in a statement whose fresh snapshot sees any arrival
that could race it (an arrival that waited on the lock re-inserts its row: that
is what ``INSERT ... ON CONFLICT`` guarantees).

Every change to a client's queued jobs touches its ring row (``JOIN``,
``SERVED``, ``CLAIM``), so claims, arrivals and claims by id of one client serialize on
that row. Under concurrency the order can deviate by a turn (an arrival racing
a claim of the same client's last job keeps the claim's turn; an arrival racing a
claim may read V before that claim moved it), never lose a job.
"""

from __future__ import annotations

import asyncpg

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.postgres.schema import DB_NOW
from gatekeeper.jobs.record import COLUMNS

_QUEUED = JobState.QUEUED.value

# A body only its taking box keeps is fetched from it (``bodyplan``, ``bodyrelay``): a job
# is claimed for it only while that box is alive (seen within ``$4``, ``jobs.lease``; not
# stopped; with an address) and not one this box skips after failed fetches (``$5``).
# A dead box's large bodies wait for it (docs/postgres.md).
_FETCHABLE = f"""q.body_box <> ALL($5::text[]) AND EXISTS (
                SELECT 1 FROM boxes b WHERE b.id = q.body_box AND b.address IS NOT NULL
                    AND b.stopped IS NULL AND b.seen > {DB_NOW} - $4)"""

CLAIM = f"""
WITH pick AS (
    SELECT r.client, r.round, j.seq
    FROM ring r
    CROSS JOIN LATERAL (
        SELECT q.seq FROM jobs q
        WHERE q.client = r.client AND q.state = '{_QUEUED}'
            AND (q.body_in_db OR q.body_box = $3 OR ({_FETCHABLE}))  -- issue #21
        ORDER BY q.seq LIMIT 1
    ) j
    ORDER BY r.round, r.turn
    LIMIT 1
    FOR UPDATE OF r SKIP LOCKED
), claimed AS (
    UPDATE jobs SET state = '{JobState.RUNNING.value}', started = $1, engine = $2,
        run_box = $3, heartbeat = {DB_NOW}
    FROM pick
    WHERE jobs.seq = pick.seq AND jobs.state = '{_QUEUED}'
    RETURNING {", ".join(f"jobs.{c}" for c in COLUMNS)}
), moved AS (
    UPDATE ring SET round = ring.round + 1 FROM claimed WHERE ring.client = claimed.client
), clock AS (
    UPDATE ring_clock SET round = GREATEST(ring_clock.round, pick.round)
    FROM pick WHERE EXISTS (SELECT 1 FROM claimed)
)
SELECT * FROM claimed
"""


async def claim(
    con: asyncpg.Connection,
    started: float,
    engine: str | None,
    box: str,
    lease: float = 30.0,
    skip: frozenset[str] = frozenset(),
) -> asyncpg.Record | None:
    """The next job by the rule, now running on ``box`` (one statement); None if none.
    ``lease``: a taking box seen within it serves its large bodies; ``skip``: taking
    boxes whose large bodies this box leaves alone for now (``bodyplan.Backoff``)."""
    row: asyncpg.Record | None = await con.fetchrow(
        CLAIM, started, engine, box, float(lease), sorted(skip)
    )
    return row


# Parts of one statement whose CTE ``j`` is the job just created / claimed by id
# (``sql_records``): the statement's snapshot does not see ``j``'s own change, so
# "another queued job" is any queued job of the client in it.
# joined: a client with a new queued job joins in the round in service with a new turn,
# unless it has another one.
JOIN = f"""
    INSERT INTO ring (client, turn, round)
    SELECT client, nextval('ring_turn'), (SELECT round FROM ring_clock) FROM j
    ON CONFLICT (client) DO UPDATE SET turn = EXCLUDED.turn, round = EXCLUDED.round
    WHERE NOT EXISTS (
        SELECT 1 FROM jobs q WHERE q.client = EXCLUDED.client AND q.state = '{_QUEUED}')
"""
# served: a queued job was claimed by id: its client's next job is in the next round, and
# the round it was in is the one in service. Two CTEs (a statement's data-modifying CTEs
# are all at its top level): the caller writes ``WITH j AS (...), {SERVED} SELECT ...``.
SERVED = """r AS (
    UPDATE ring SET round = ring.round + 1 FROM j WHERE ring.client = j.client
    RETURNING ring.round - 1 AS served
), rc AS (
    UPDATE ring_clock SET round = GREATEST(ring_clock.round, r.served) FROM r
)"""


async def rebuild(con: asyncpg.Connection) -> None:
    """The ring from the queued jobs: clients in the order of their oldest queued job,
    all in round 0, the round in service 0 (what a restarted box's waiting room does;
    ``recover``)."""
    async with con.transaction():
        await con.execute("LOCK TABLE ring IN EXCLUSIVE MODE")
        await con.execute("DELETE FROM ring")
        await con.execute("UPDATE ring_clock SET round = 0")
        await con.execute(
            "INSERT INTO ring (client, turn, round) SELECT client, nextval('ring_turn'), 0 FROM"
            " (SELECT client, MIN(seq) AS first FROM jobs WHERE state = $1 GROUP BY client"
            "  ORDER BY first) AS oldest",
            _QUEUED,
        )


async def forget_idle(con: asyncpg.Connection) -> None:
    """Delete the ring rows of clients without a queued job (module text)."""
    async with con.transaction():
        idle = await con.fetch(
            "SELECT client FROM ring r WHERE NOT EXISTS (SELECT 1 FROM jobs"
            " WHERE client = r.client AND state = $1) FOR UPDATE SKIP LOCKED",
            _QUEUED,
        )
        if idle:
            await con.execute(
                "DELETE FROM ring r WHERE client = ANY($1::text[]) AND NOT EXISTS"
                " (SELECT 1 FROM jobs WHERE client = r.client AND state = $2)",
                [r["client"] for r in idle],
                _QUEUED,
            )
