"""The SQLite store's ``recover``: its rows made true again after the process died.

A mixin over the store's connection, files and transaction (``sqlite``), like
``sqlite_heads`` and ``sqlite_handles``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs import sqlite_fair
from gatekeeper.jobs.files import JobFiles
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.states import KEPT_STATES, Endings

KEPT = tuple(s.value for s in KEPT_STATES)


class Recovery:
    """``recover`` and the sweep of files no row needs, over ``_db`` and ``_files``."""

    _db: sqlite3.Connection
    _files: JobFiles
    _txn: Callable[[], AbstractContextManager[sqlite3.Connection]]
    get: Callable[[str], JobRecord | None]

    def recover(self, now: float, retry_interrupted: bool) -> list[JobRecord]:
        """Make the rows true again after a restart; returns the rows it changed.

        - running -> failed "interrupted", partial result deleted (never silently re-run,
          issue #9 §2); with ``retry_interrupted`` -> queued again with the same seq.
        - held queued -> cancelled "restart": nobody holds their connection any more.
        - an async queued job whose body file is missing -> failed "body_lost".
        - leftover ``*.tmp`` bodies, ``*.part`` results and files without a live row go.
        """
        running, queued = JobState.RUNNING.value, JobState.QUEUED.value
        changed: dict[str, None] = {}  # ids in seq order, each once
        with self._txn() as db:
            for r in db.execute("SELECT id FROM jobs WHERE state = ?", (running,)):
                changed[r["id"]] = None
            if retry_interrupted:
                db.execute(
                    "UPDATE jobs SET state = ?, started = NULL, result_status = NULL,"
                    " result_reason = NULL, result_headers = NULL, result_bytes = 0,"
                    " progress = NULL WHERE state = ?",
                    (queued, running),
                )
            else:
                end = Endings.INTERRUPTED
                db.execute(
                    "UPDATE jobs SET state = ?, reason = ?, finished = ? WHERE state = ?",
                    (end.state.value, end.reason, now, running),
                )
            # Held jobs requeued just above are included: their client is gone too.
            rows = db.execute("SELECT id, held FROM jobs WHERE state = ?", (queued,)).fetchall()
            for r in rows:
                if r["held"]:
                    end = Endings.RESTART
                elif self._files.body_path(r["id"]) is None:
                    end = Endings.BODY_LOST
                else:
                    continue
                db.execute(
                    "UPDATE jobs SET state = ?, reason = ?, finished = ? WHERE id = ?",
                    (end.state.value, end.reason, now, r["id"]),
                )
                changed[r["id"]] = None
            sqlite_fair.rebuild(db)
        for job_id in changed:
            # An interrupted run's output, partial or even committed, is never served.
            self._files.ledger.drop_job(job_id)
        self._sweep()
        rows = [self.get(job_id) for job_id in changed]
        return sorted((r for r in rows if r is not None), key=lambda r: r.seq)

    def _sweep(self) -> None:
        """Delete files no row needs: temp and partial files, bodies of jobs no longer queued,
        results of jobs not done/failed/cancelled (or without a row)."""
        states = dict(self._db.execute("SELECT id, state FROM jobs").fetchall())
        self._files.sweep(
            keep_body=lambda name: states.get(name) == JobState.QUEUED.value,
            keep_result=lambda name: states.get(name) in KEPT,
        )
