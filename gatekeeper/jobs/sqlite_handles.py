"""The handles of jobs in the SQLite store (``handles.Handle``; issue #18 §3).

One table beside ``jobs``, created with ``CREATE TABLE IF NOT EXISTS`` so an
existing state directory gains it at its next start (its jobs, which have no
rows, keep answering under their own ids: ``handles.creator_of``). A handle row
goes when its job's row is deleted by ``evict``.
"""

from __future__ import annotations

import sqlite3

from gatekeeper.jobs.files import check_id
from gatekeeper.jobs.handles import Handle

SCHEMA = """
CREATE TABLE IF NOT EXISTS handles (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    client TEXT NOT NULL,
    held INTEGER NOT NULL,
    created REAL NOT NULL,
    detached REAL
);
CREATE INDEX IF NOT EXISTS handles_job ON handles (job_id);
"""
_COLUMNS = "id, job_id, client, held, created, detached"


def _handle(r: sqlite3.Row | tuple[object, ...]) -> Handle:
    hid, job_id, client, held, created, detached = tuple(r)
    return Handle(
        str(hid),
        str(job_id),
        str(client),
        bool(held),
        float(created),
        None if detached is None else float(detached),
    )


class SqliteHandles:
    """The handle calls of ``JobStore``, over the store's connection ``_db``."""

    _db: sqlite3.Connection

    def add_handle(self, handle: Handle) -> None:
        """A new handle on an existing job; ValueError if its id is taken, KeyError if
        the job is unknown."""
        check_id(handle.id)
        if self._db.execute("SELECT 1 FROM jobs WHERE id = ?", (handle.job_id,)).fetchone() is None:
            raise KeyError(handle.job_id)
        try:
            self._db.execute(
                f"INSERT INTO handles ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    handle.id,
                    handle.job_id,
                    handle.client,
                    int(handle.held),
                    handle.created,
                    handle.detached,
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"handle {handle.id} exists") from exc

    def get_handle(self, handle_id: str) -> Handle | None:
        r = self._db.execute(
            f"SELECT {_COLUMNS} FROM handles WHERE id = ?", (handle_id,)
        ).fetchone()
        return None if r is None else _handle(r)

    def detach_handle(self, handle_id: str, when: float) -> Handle:
        """The handle lets go of its job (its DELETE); a second call changes nothing.
        KeyError if unknown."""
        self._db.execute(
            "UPDATE handles SET detached = ? WHERE id = ? AND detached IS NULL", (when, handle_id)
        )
        h = self.get_handle(handle_id)
        if h is None:
            raise KeyError(handle_id)
        return h

    def handles_of(self, job_id: str) -> list[Handle]:
        """Every handle of a job, attached or not, in creation order."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM handles WHERE job_id = ? ORDER BY created, rowid", (job_id,)
        )
        return [_handle(r) for r in rows]

    def _drop_orphan_handles(self, db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM handles WHERE job_id NOT IN (SELECT id FROM jobs)")
