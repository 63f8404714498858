"""The waiting room's fairness rule in SQL: which queued job the next free slot takes.

The rule is ``waitroom``'s (round-robin across client keys, FIFO within one
key): the clients with a queued job form a ring, the next job is the oldest
queued job of the client at the head of the ring, and that client then moves
to the tail (or leaves the ring when it has no job left). A client joins at
the tail with its first queued job. The ring is a table ``ring(client, turn)``:
the head is the smallest turn, the tail one more than the largest (both found
through the ``ring_turn`` index: O(log n) per change, issue #18 §6).

Invariant: a client has a ring row iff it has a queued job. Every change to the
set of queued jobs calls one function here in the same transaction; ``rebuild``
orders the ring by each client's oldest queued job, as the service rebuilds its
waiting room from ``queued()`` at start.
"""

from __future__ import annotations

import sqlite3

from gatekeeper.core.vocab import JobState

SCHEMA = """
CREATE TABLE IF NOT EXISTS ring (
    client TEXT PRIMARY KEY,
    turn INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_client ON jobs (client, state, seq);
CREATE INDEX IF NOT EXISTS ring_turn ON ring (turn);
"""
_QUEUED = JobState.QUEUED.value
_TAIL = "(SELECT COALESCE(MAX(turn), 0) + 1 FROM ring)"


def _has_queued(db: sqlite3.Connection, client: str) -> bool:
    row = db.execute(
        "SELECT 1 FROM jobs WHERE client = ? AND state = ? LIMIT 1", (client, _QUEUED)
    ).fetchone()
    return row is not None


def joined(db: sqlite3.Connection, client: str) -> None:
    """``client`` has a new queued job: it joins the ring's tail unless it is in the ring."""
    db.execute(f"INSERT OR IGNORE INTO ring (client, turn) VALUES (?, {_TAIL})", (client,))


def served(db: sqlite3.Connection, client: str) -> None:
    """A queued job of ``client`` was claimed: to the tail if it has more, else out."""
    if _has_queued(db, client):
        db.execute(f"UPDATE ring SET turn = {_TAIL} WHERE client = ?", (client,))
    else:
        db.execute("DELETE FROM ring WHERE client = ?", (client,))


def left(db: sqlite3.Connection, client: str) -> None:
    """A queued job of ``client`` ended unclaimed: it keeps its place unless it has none left."""
    if not _has_queued(db, client):
        db.execute("DELETE FROM ring WHERE client = ?", (client,))


def next_job(db: sqlite3.Connection) -> str | None:
    """The id of the job the rule serves next, or None when nothing is queued."""
    row = db.execute(
        "SELECT j.id FROM ring r JOIN jobs j ON j.client = r.client AND j.state = ?"
        " ORDER BY r.turn, j.seq LIMIT 1",
        (_QUEUED,),
    ).fetchone()
    return None if row is None else str(row[0])


def rebuild(db: sqlite3.Connection) -> None:
    """The ring from the queued jobs: clients in the order of their oldest queued job."""
    db.execute("DELETE FROM ring")
    db.execute(
        "INSERT INTO ring (client, turn) SELECT client, MIN(seq) FROM jobs"
        " WHERE state = ? GROUP BY client",
        (_QUEUED,),
    )
