"""The batches of the SQLite store (``batch.record.BatchRecord``; issue #20 §3).

A table ``batches`` beside ``jobs``, and the jobs' ``batch`` column (added to an
older database at open, then indexed here: the index cannot be in the schema
script, which runs before the column exists). ``create_batch`` writes the batch
row and its N job rows (and their fairness-ring entries) in one transaction:
a batch is queued whole or not at all. A batch row goes when ``evict`` has
deleted the last of its jobs' rows.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import replace

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs import sqlite_fair, sqlite_outbox
from gatekeeper.jobs.batch.record import BatchRecord
from gatekeeper.jobs.files import check_id
from gatekeeper.jobs.outbox import Delivery
from gatekeeper.jobs.record import COLUMNS, JobRecord, decode, encode

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    client TEXT NOT NULL,
    route TEXT NOT NULL,
    created REAL NOT NULL,
    total INTEGER NOT NULL
);
"""
_INDEX = "CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch, seq) WHERE batch IS NOT NULL"
_INSERTED = tuple(c for c in COLUMNS if c != "seq")
_INSERT = f"INSERT INTO jobs ({', '.join(_INSERTED)}) VALUES ({', '.join('?' * len(_INSERTED))})"


def prepare(db: sqlite3.Connection) -> None:
    """Index the jobs' ``batch`` column (after ``add_missing_columns`` added it)."""
    db.execute(_INDEX)


def drop_orphans(db: sqlite3.Connection) -> None:
    """Batches none of whose jobs' rows is left (``evict`` deleted them)."""
    db.execute(
        "DELETE FROM batches WHERE id NOT IN (SELECT batch FROM jobs WHERE batch IS NOT NULL)"
    )


class SqliteBatches:
    """The batch calls of ``JobStore``, over the store's connection and transaction."""

    _db: sqlite3.Connection
    _txn: Callable[[], contextlib.AbstractContextManager[sqlite3.Connection]]

    def create_batch(
        self,
        batch: BatchRecord,
        items: Sequence[JobRecord],
        outbox: Sequence[Delivery] = (),
    ) -> list[JobRecord]:
        """The batch and its queued jobs, and the deliveries announcing them (``outbox``),
        in one transaction (their bodies already committed); returns the jobs with their
        ``seq``. ValueError (nothing written) for a job that is not a new queued item of
        this batch or a taken id."""
        check_id(batch.id)
        if len(items) != batch.total or not items:
            raise ValueError(f"batch {batch.id}: {len(items)} jobs for {batch.total} items")
        for r in items:
            check_id(r.id)
            if r.state is not JobState.QUEUED or r.batch != batch.id:
                raise ValueError(f"job {r.id} is not a queued item of batch {batch.id}")
        out: list[JobRecord] = []
        try:
            with self._txn() as db:
                db.execute(
                    "INSERT INTO batches (id, client, route, created, total) VALUES (?,?,?,?,?)",
                    (batch.id, batch.client, batch.route, batch.created, batch.total),
                )
                for r in items:
                    values = encode(r)
                    cur = db.execute(_INSERT, tuple(values[c] for c in _INSERTED))
                    sqlite_fair.joined(db, r.client)
                    assert cur.lastrowid is not None
                    out.append(replace(r, seq=cur.lastrowid))
                sqlite_outbox.write(db, outbox)
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"batch {batch.id}: {exc}") from exc
        return out

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        r = self._db.execute(
            "SELECT id, client, route, created, total FROM batches WHERE id = ?", (batch_id,)
        ).fetchone()
        if r is None:
            return None
        return BatchRecord(str(r[0]), str(r[1]), str(r[2]), float(r[3]), int(r[4]))

    def batch_jobs(self, batch_id: str) -> list[JobRecord]:
        """The batch's jobs in item order (``seq``); fewer than ``total`` once ``evict``
        deleted some rows."""
        rows = self._db.execute(
            f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE batch = ? ORDER BY seq", (batch_id,)
        )
        return [decode(r) for r in rows]
