"""The handles of jobs in the SQLite store (``handles.Handle``; issue #18 §3).

One table beside ``jobs``, created with ``CREATE TABLE IF NOT EXISTS`` so an
existing state directory gains it at its next start (its jobs, which have no
rows, keep answering under their own ids: ``handles.creator_of``). A handle row
goes when its job's row is deleted by ``evict``.

A client's list (``client_handles``, issue #20 §2) is keyed by the handle row's
``rowid``: SQLite gives a new row one more than the largest, so keys only grow
(a reused key is the largest deleted one, still above every row left), and the
index ``handles_client`` (client, then rowid implicitly) reads a client's
handles newest first from a cursor without a sort: ``EXPLAIN QUERY PLAN`` shows
``SEARCH h USING INDEX handles_client (client=? AND rowid<?)`` and the job by
its primary key, no temporary B-tree (pinned by tests/test_listing.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from typing import Any

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.files import check_id
from gatekeeper.jobs.handles import Handle
from gatekeeper.jobs.record import COLUMNS, decode
from gatekeeper.jobs.store import LIST_SCAN, HandlePage, Listed

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
CREATE INDEX IF NOT EXISTS handles_client ON handles (client);
"""
_COLUMNS = "id, job_id, client, held, created, detached"
_H = len(_COLUMNS.split(", "))
# A client's handles newest first, each with its job's record (module text).
LIST_SQL = (
    f"SELECT h.rowid, {', '.join('h.' + c for c in _COLUMNS.split(', '))},"
    f" {', '.join('j.' + c for c in COLUMNS)}"
    " FROM handles h JOIN jobs j ON j.id = h.job_id"
    " WHERE h.client = ? AND h.rowid < ? ORDER BY h.rowid DESC LIMIT ?"
)
# The same, within the window of the client's next ``scan`` handles, for some states (a
# detached handle reads cancelled whatever its job's state: ``handle_view``).
FILTERED_SQL = (
    f"SELECT h.k, {', '.join('h.' + c for c in _COLUMNS.split(', '))},"
    f" {', '.join('j.' + c for c in COLUMNS)}"
    f" FROM (SELECT rowid AS k, {_COLUMNS} FROM handles WHERE client = ? AND rowid < ?"
    " ORDER BY rowid DESC LIMIT ?) h JOIN jobs j ON j.id = h.job_id"
    " WHERE j.state IN ({marks}) OR (h.detached IS NOT NULL AND ?)"
    " ORDER BY h.k DESC LIMIT ?"
)
# How many handles that window held, and the oldest: where the next window starts.
WINDOW_SQL = (
    "SELECT COUNT(*), MIN(k) FROM (SELECT rowid AS k FROM handles"
    " WHERE client = ? AND rowid < ? ORDER BY rowid DESC LIMIT ?)"
)
_NO_CURSOR = 2**63 - 1  # above every rowid


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

    def client_handles(
        self,
        client: str,
        *,
        limit: int,
        before: int | None = None,
        states: Collection[JobState] | None = None,
        scan: int = LIST_SCAN,
    ) -> HandlePage:
        """A page of the handles ``client`` holds or held, newest first (``JobStore``)."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        cursor = _NO_CURSOR if before is None else before
        if states is None:
            rows = self._db.execute(LIST_SQL, (client, cursor, limit + 1)).fetchall()
            return _page(rows, limit, None)
        # The window of the next ``scan`` handles, filtered in SQL: only the matches are
        # decoded (a page that reads 1,000 handles for 20 matches costs the 20).
        scan = max(scan, limit + 1)
        values = tuple(s.value for s in JobState if s in frozenset(states))
        cancelled = int(JobState.CANCELLED in states)
        rows = self._db.execute(
            FILTERED_SQL.format(marks=", ".join("?" * len(values))),
            (client, cursor, scan, *values, cancelled, limit + 1),
        ).fetchall()
        if len(rows) > limit:
            return _page(rows, limit, None)
        seen, oldest = self._db.execute(WINDOW_SQL, (client, cursor, scan)).fetchone()
        return _page(rows, limit, int(oldest) if seen == scan else None)

    def _drop_orphan_handles(self, db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM handles WHERE job_id NOT IN (SELECT id FROM jobs)")


def _page(rows: list[Any], limit: int, oldest: int | None) -> HandlePage:
    """The first ``limit`` of ``rows`` (newest first); ``next`` is the last one's key when
    there are more, else ``oldest`` (the next window's start, None at the end)."""
    entries = [
        Listed(
            int(r[0]), _handle(r[1 : 1 + _H]), decode(dict(zip(COLUMNS, r[1 + _H :], strict=True)))
        )
        for r in rows[:limit]
    ]
    return HandlePage(entries, entries[-1].key if len(rows) > limit else oldest)
