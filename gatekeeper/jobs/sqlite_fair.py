"""The waiting room's fairness rule in SQL: which queued job the next free slot takes.

The rule is ``waitroom``'s (round-robin across client keys, FIFO within one key,
a newcomer in the round in service; issue #20 §3). A table ``ring(client, turn,
round)`` holds one row per client with a queued job: ``round`` is the round of
its oldest queued job, ``turn`` when it joined the ring (the waiting room's
label). The next job is the oldest queued job of the client with the smallest
``(round, turn)`` (the ``ring_order`` index: O(log n) per change, issue #18 §6);
that client's round goes up by one, and the one-row table ``ring_clock`` keeps
``round``, the round of the last job served (the waiting room's V). A client
joins with its first queued job at round V and a turn above every other
(``MAX(turn) + 1``): behind the clients already waiting in the round being
served, ahead of everyone's next round.

Invariant: a client has a ring row iff it has a queued job. Every change to the
set of queued jobs calls one function here in the same transaction; ``rebuild``
orders the ring by each client's oldest queued job, all in round 0, as the
service rebuilds its waiting room (a fresh one: V = 0) from ``queued()`` at start.
"""

from __future__ import annotations

import sqlite3

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.statedir import add_missing_columns

SCHEMA = """
CREATE TABLE IF NOT EXISTS ring (
    client TEXT PRIMARY KEY,
    turn INTEGER NOT NULL,
    round INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS ring_clock (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    round INTEGER NOT NULL
);
INSERT OR IGNORE INTO ring_clock (one, round) VALUES (1, 0);
CREATE INDEX IF NOT EXISTS jobs_client ON jobs (client, state, seq);
"""
# After ``add_missing_columns`` gave a ring made before issue #20 its ``round``.
_INDEX = "CREATE INDEX IF NOT EXISTS ring_order ON ring (round, turn)"
_QUEUED = JobState.QUEUED.value
_NEWCOMER = "(SELECT COALESCE(MAX(turn), 0) + 1 FROM ring), (SELECT round FROM ring_clock)"


def prepare(db: sqlite3.Connection) -> None:
    """A ring of an older gatekeeper gets its ``round`` column (the ring is rebuilt at
    every open, so its rows need nothing else) and the index of the order."""
    add_missing_columns(db, "ring", [("round", "INTEGER NOT NULL DEFAULT 0")])
    db.execute("DROP INDEX IF EXISTS ring_turn")  # the order before issue #20: turn alone
    db.execute(_INDEX)


def _has_queued(db: sqlite3.Connection, client: str) -> bool:
    row = db.execute(
        "SELECT 1 FROM jobs WHERE client = ? AND state = ? LIMIT 1", (client, _QUEUED)
    ).fetchone()
    return row is not None


def joined(db: sqlite3.Connection, client: str) -> None:
    """``client`` has a new queued job: unless it is in the ring, it joins in the round
    in service, after every client in the ring."""
    db.execute(
        f"INSERT OR IGNORE INTO ring (client, turn, round) VALUES (?, {_NEWCOMER})", (client,)
    )


def served(db: sqlite3.Connection, client: str) -> None:
    """A queued job of ``client`` was claimed: its round is the one in service now; the
    client's next job is in the next round, or it leaves the ring with none left."""
    db.execute(
        "UPDATE ring_clock SET round ="
        " MAX(round, COALESCE((SELECT round FROM ring WHERE client = ?), round))",
        (client,),
    )
    if _has_queued(db, client):
        db.execute("UPDATE ring SET round = round + 1 WHERE client = ?", (client,))
    else:
        db.execute("DELETE FROM ring WHERE client = ?", (client,))


def left(db: sqlite3.Connection, client: str) -> None:
    """A queued job of ``client`` ended unclaimed: it keeps its turn unless it has none left."""
    if not _has_queued(db, client):
        db.execute("DELETE FROM ring WHERE client = ?", (client,))


def next_job(db: sqlite3.Connection) -> str | None:
    """The id of the job the rule serves next, or None when nothing is queued."""
    row = db.execute(
        "SELECT j.id FROM ring r JOIN jobs j ON j.client = r.client AND j.state = ?"
        " ORDER BY r.round, r.turn, j.seq LIMIT 1",
        (_QUEUED,),
    ).fetchone()
    return None if row is None else str(row[0])


def rebuild(db: sqlite3.Connection) -> None:
    """The ring from the queued jobs: clients in the order of their oldest queued job,
    all in round 0, the round in service 0."""
    db.execute("DELETE FROM ring")
    db.execute("UPDATE ring_clock SET round = 0")
    db.execute(
        "INSERT INTO ring (client, turn, round) SELECT client, MIN(seq), 0 FROM jobs"
        " WHERE state = ? GROUP BY client",
        (_QUEUED,),
    )
