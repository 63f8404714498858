"""The SQLite store's ``evict``: kept results expired by age, then by total size.

A mixin over the store's connection, files and transaction (``sqlite``), like
``sqlite_recover``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs import sqlite_batches
from gatekeeper.jobs.files import JobFiles
from gatekeeper.jobs.sqlite_recover import KEPT
from gatekeeper.jobs.states import Endings
from gatekeeper.jobs.store import EXPIRED_ROW_KEEP_FACTOR


def _marks(values: tuple[object, ...]) -> str:
    return ", ".join("?" * len(values))


class Eviction:
    """``evict`` over ``_db`` and ``_files``."""

    _db: sqlite3.Connection
    _files: JobFiles
    _txn: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _drop_orphan_handles: Callable[[sqlite3.Connection], None]

    def evict(self, now: float, keep: float, max_bytes: int) -> list[str]:
        """Expire kept results by age, then by total size; returns the ids it expired.

        1. done/failed/cancelled jobs finished more than ``keep`` ago -> expired "keep";
        2. while ``results_bytes() > max_bytes``: the oldest-finished of them that still
           has a result file -> expired "max_bytes". Queued and running jobs (and their
           partial results, which do count) are never touched;
        3. rows expired more than ``EXPIRED_ROW_KEEP_FACTOR * keep`` ago are deleted.
        """
        ledger = self._files.ledger
        old = [
            r[0]
            for r in self._db.execute(
                f"SELECT id FROM jobs WHERE state IN ({_marks(KEPT)}) AND finished <= ?",
                (*KEPT, now - keep),
            )
        ]
        total = ledger.total - sum(ledger.size_of(i) for i in old)
        by_size: list[str] = []
        if total > max_bytes:
            rows = self._db.execute(
                f"SELECT id FROM jobs WHERE state IN ({_marks(KEPT)}) AND finished > ?"
                " ORDER BY finished, seq",
                (*KEPT, now - keep),
            )
            for (job_id,) in rows:
                size = ledger.size_of(job_id)
                if size:
                    by_size.append(job_id)
                    total -= size
                    if total <= max_bytes:
                        break
        by_keep, by_bytes = Endings.EXPIRED_KEEP, Endings.EXPIRED_MAX_BYTES
        with self._txn() as db:
            db.executemany(
                f"UPDATE jobs SET state = ?, reason = ? WHERE id = ? AND state IN ({_marks(KEPT)})",
                [(by_keep.state.value, by_keep.reason, i, *KEPT) for i in old]
                + [(by_bytes.state.value, by_bytes.reason, i, *KEPT) for i in by_size],
            )
            db.execute(
                "DELETE FROM jobs WHERE state = ? AND finished <= ?",
                (JobState.EXPIRED.value, now - EXPIRED_ROW_KEEP_FACTOR * keep),
            )
            self._drop_orphan_handles(db)
            sqlite_batches.drop_orphans(db)
        expired = old + by_size
        for job_id in expired:
            ledger.drop_job(job_id)
        return expired
