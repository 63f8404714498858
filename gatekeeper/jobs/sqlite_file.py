"""The database file deleted or replaced under a running gatekeeper, and put back.

SQLite holds its database by descriptor. A ``jobs.sqlite3`` deleted (``rm``, a
clean-up script) or replaced (a restore that renames another file over it)
while gatekeeper runs goes unnoticed by SQLite: it keeps reading and writing
the unlinked inode, every call succeeds, and all of it vanishes at the next
start (issue #18 §1). ``DbFile`` notices: it compares the path's
``(st_dev, st_ino)`` with those of the file the store opened, one ``stat``
per call (the jobs' background tick, never the request path).

Then ``rehome`` puts the database back at its path, whole, without a restart:

1. the open connection is copied (SQLite's online backup: consistent, as
   nothing else writes meanwhile: this runs on the event loop) to
   ``jobs.sqlite3.rehome`` beside it;
2. a file someone else put at the path is moved aside to
   ``jobs.sqlite3.replaced-<unix time>``, never deleted: it may be a backup
   the operator restored on purpose, and they decide what to keep;
3. the copy is renamed into place; only then is the old connection closed, the
   journal files it leaves at the path (``-wal``, ``-shm``: the old inode's)
   removed, and the path opened as at a start (WAL, checked).

Every job, handle and kept result's record is in the copy, so nothing the
process holds is lost. A step that fails (the directory itself deleted or
read-only, the disk full) raises: before step 3 the store still works on the
old connection, so the caller keeps the jobs running, refuses new ones and
calls again later; a failure after it leaves the store closed until a later
call opens the path.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

# (st_dev, st_ino): which file a path names.
Identity = tuple[int, int]
REHOME_SUFFIX = ".rehome"
REPLACED_SUFFIX = ".replaced-"
JOURNALS = ("-wal", "-shm", "-journal")


def identity(path: Path) -> Identity | None:
    """The file at ``path`` now; None when there is none (an OSError otherwise)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class DbFile:
    """The database file a store opened at ``path``, and putting it back (module text)."""

    def __init__(self, path: Path):
        self.path = path
        self.opened = identity(path)  # taken right after the open: the file SQLite holds

    def moved(self) -> bool:
        """The path no longer names the file the store holds (deleted or replaced)."""
        return identity(self.path) != self.opened

    def rehome(
        self, db: sqlite3.Connection | None, reopen: Callable[[], sqlite3.Connection]
    ) -> tuple[sqlite3.Connection, str]:
        """The database back at its path, from ``db`` (None: already closed by a rehome
        that failed after its copy was in place): (the new connection, what was done)."""
        done: list[str] = []
        if db is not None:
            copy = self.path.with_name(self.path.name + REHOME_SUFFIX)
            self._copy(db, copy)
            if identity(self.path) is not None:  # replaced: kept aside, never deleted
                aside = self._aside()
                os.replace(self.path, aside)
                done.append(f"the file found there moved to {aside.name}")
            os.replace(copy, self.path)
            db.close()
            for suffix in JOURNALS:  # the old inode's: a new connection must not read them
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path.with_name(self.path.name + suffix))
            done.insert(0, "copied from the open database and put back at its path")
        new = reopen()
        self.opened = identity(self.path)
        return new, "; ".join(done) or "reopened at its path"

    def _aside(self) -> Path:
        """A name no file has: ``<name>.replaced-<unix time>``, ``-2``, ``-3``... after it."""
        base = f"{self.path.name}{REPLACED_SUFFIX}{int(time.time())}"
        aside, n = self.path.with_name(base), 1
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{base}-{n}")
        return aside

    @staticmethod
    def _copy(db: sqlite3.Connection, copy: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            copy.unlink()
        try:
            dest = sqlite3.connect(copy)
            try:
                db.backup(dest)
            finally:
                dest.close()
        except BaseException:
            with contextlib.suppress(OSError):
                copy.unlink()
            raise
