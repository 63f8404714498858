"""The webhook outbox in the SQLite store (``outbox.Delivery``; issue #20 §1).

Two tables beside ``jobs``, created with ``CREATE TABLE IF NOT EXISTS`` so an older
state directory gains them at its next start. ``outbox`` holds the deliveries not
yet delivered; ``outbox_gone`` the (job, destination) pairs a receiver answered
410 for, so later events of that job are not written for it. Rows are written by
the store's state-changing calls inside their own transaction (``write``), and
taken by the deliverer with a lease: ``take`` stamps ``leased`` on the rows it
returns, so a row is in one attempt at a time; a failed attempt clears it with
its next due time. The store holds its directory alone, so at open every lease
is released (``release``): a row whose attempt died with the process is due
again at once after a ``kill -9``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Iterable
from contextlib import AbstractContextManager

from gatekeeper.jobs.outbox import Backlog, Delivery

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    job_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    url TEXT NOT NULL,
    event TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL,
    next_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    leased REAL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_at, seq);
CREATE INDEX IF NOT EXISTS outbox_job ON outbox (job_id, destination, seq);
CREATE TABLE IF NOT EXISTS outbox_gone (
    job_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    PRIMARY KEY (job_id, destination)
);
"""
_COLUMNS = "id, job_id, destination, url, event, payload, created, next_at, attempts, last_error"


def write(db: sqlite3.Connection, deliveries: Iterable[Delivery]) -> None:
    """Insert ``deliveries`` (inside the caller's transaction), except those of a
    (job, destination) that answered 410."""
    rows = [
        (
            d.id,
            d.job_id,
            d.destination,
            d.url,
            d.event,
            d.payload,
            d.created,
            d.next_at,
            d.attempts,
            d.last_error,
        )
        for d in deliveries
    ]
    if rows:
        db.executemany(
            f"INSERT INTO outbox ({_COLUMNS}) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?"
            " WHERE NOT EXISTS (SELECT 1 FROM outbox_gone g"
            " WHERE g.job_id = ?2 AND g.destination = ?3)",
            rows,
        )


def release(db: sqlite3.Connection) -> None:
    """Every lease released (at open: the process that held them is gone)."""
    db.execute("UPDATE outbox SET leased = NULL WHERE leased IS NOT NULL")


def _delivery(r: sqlite3.Row | tuple[object, ...]) -> Delivery:
    i, job, dest, url, event, payload, created, next_at, attempts, err = tuple(r)
    return Delivery(
        str(i),
        str(job),
        str(dest),
        str(url),
        str(event),
        bytes(payload),
        float(created),
        float(next_at),
        int(attempts),
        None if err is None else str(err),
    )


class SqliteOutbox:
    """The outbox calls of ``JobStore``, over the store's connection ``_db``."""

    _db: sqlite3.Connection
    _txn: Callable[[], AbstractContextManager[sqlite3.Connection]]

    def outbox_add(self, deliveries: list[Delivery]) -> None:
        """Deliveries of an event that changes no job state (job.progress)."""
        with self._txn():
            write(self._db, deliveries)

    def outbox_take(
        self, now: float, limit: int, lease_until: float, skip: Collection[str] = ()
    ) -> list[Delivery]:
        """Up to ``limit`` deliveries due at ``now`` and not leased, oldest due first, but
        none for the destinations in ``skip`` and none behind an undelivered earlier row
        of its job and destination; each leased until ``lease_until``."""
        marks = ", ".join("?" * len(skip))
        with self._txn():
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM outbox o WHERE next_at <= ?"
                " AND (leased IS NULL OR leased <= ?)"
                f" AND destination NOT IN ({marks})"
                # One job's events reach a destination in order, one at a time: a row
                # waits while an earlier one of its job and destination is undelivered.
                " AND NOT EXISTS (SELECT 1 FROM outbox e WHERE e.job_id = o.job_id"
                " AND e.destination = o.destination AND e.seq < o.seq)"
                " ORDER BY next_at, seq LIMIT ?",
                (now, now, *skip, limit),
            ).fetchall()
            self._db.executemany(
                "UPDATE outbox SET leased = ? WHERE id = ?", [(lease_until, r[0]) for r in rows]
            )
        return [_delivery(r) for r in rows]

    def outbox_delivered(self, delivery_id: str) -> None:
        """Delivered (2xx) or given up (max_age): the row goes."""
        with self._txn():
            self._db.execute("DELETE FROM outbox WHERE id = ?", (delivery_id,))

    def outbox_retry(self, delivery_id: str, next_at: float, error: str) -> None:
        """A failed attempt: due again at ``next_at``."""
        with self._txn():
            self._db.execute(
                "UPDATE outbox SET next_at = ?, attempts = attempts + 1, last_error = ?,"
                " leased = NULL WHERE id = ?",
                (next_at, error, delivery_id),
            )

    def outbox_gone(self, job_id: str, destination: str) -> int:
        """A 410: nothing more of this job for this destination; returns the rows dropped."""
        with self._txn():
            self._db.execute(
                "INSERT OR IGNORE INTO outbox_gone (job_id, destination) VALUES (?, ?)",
                (job_id, destination),
            )
            cur = self._db.execute(
                "DELETE FROM outbox WHERE job_id = ? AND destination = ?", (job_id, destination)
            )
        return cur.rowcount

    def outbox_wake(self, destination: str, now: float) -> int:
        """The destination is back: its rows waiting for a retry are due ``now``."""
        with self._txn():
            cur = self._db.execute(
                "UPDATE outbox SET next_at = ? WHERE destination = ? AND next_at > ?"
                " AND leased IS NULL",
                (now, destination, now),
            )
        return cur.rowcount

    def outbox_backlog(self) -> Backlog:
        r = self._db.execute("SELECT COUNT(*), MIN(created) FROM outbox").fetchone()
        return Backlog(int(r[0]), None if r[1] is None else float(r[1]))

    def outbox_pending(self, job_id: str) -> list[Delivery]:
        """A job's undelivered deliveries, in the order they were written."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE job_id = ? ORDER BY seq", (job_id,)
        )
        return [_delivery(r) for r in rows]
