"""Opening a state directory: its checks, its lock and its SQLite database.

``jobs.dir`` is created 0o700 with bodies/ and results/ (``files``), checked
writable, then locked (``flock(LOCK_EX)`` on ``lock``, which holds the pid):
one gatekeeper per directory. Every failure is a ``StateDirError`` in one line.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
from pathlib import Path
from typing import IO

from gatekeeper.jobs.files import BODIES, RESULTS
from gatekeeper.jobs.store import StateDirError

LOCK_NAME = "lock"
DB_NAME = "jobs.sqlite3"
# Bumped when the schema changes; a database with another version is refused, not guessed at.
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 2000


def open_state(directory: Path, schema: str) -> tuple[sqlite3.Connection, IO[str]]:
    """The directory prepared and locked, and its database: (database, lock)."""
    prepare(directory)
    lock = take_lock(directory)
    try:
        return open_db(directory, schema), lock
    except BaseException:
        lock.close()
        raise


def cause(exc: OSError) -> str:
    return exc.strerror or str(exc)


def prepare(directory: Path) -> None:
    """Create the directory and its sub-directories; check that it is writable."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise StateDirError(directory, "exists and is not a directory") from exc
    except OSError as exc:
        raise StateDirError(directory, f"cannot be created: {cause(exc)}") from exc
    if not directory.is_dir():
        raise StateDirError(directory, "exists and is not a directory")
    probe = directory / f".probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
        for sub in (BODIES, RESULTS):
            (directory / sub).mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StateDirError(directory, f"is not writable: {cause(exc)}") from exc


def take_lock(directory: Path) -> IO[str]:
    """The directory's lock, held until the returned file is closed."""
    path = directory / LOCK_NAME
    try:
        f = open(path, "a+", encoding="ascii")  # noqa: SIM115 (held until close())
    except OSError as exc:
        raise StateDirError(directory, f"cannot open {LOCK_NAME}: {cause(exc)}") from exc
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StateDirError(
                directory, f"another gatekeeper (pid {holder}) is using it"
            ) from exc
        raise StateDirError(directory, f"cannot lock {LOCK_NAME}: {cause(exc)}") from exc
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def open_db(directory: Path, schema: str) -> sqlite3.Connection:
    """The directory's database (WAL, checked, of this schema version), autocommit."""
    path = directory / DB_NAME
    db: sqlite3.Connection | None = None
    try:
        # isolation_level=None: autocommit; the few multi-statement changes are transactions.
        db = sqlite3.connect(path, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StateDirError(directory, f"{DB_NAME}: WAL journal refused ({mode})")
        db.execute("PRAGMA synchronous = NORMAL")
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise StateDirError(directory, f"{DB_NAME} is corrupt: {check}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise StateDirError(
                directory,
                f"{DB_NAME} has schema version {version}, this gatekeeper knows {SCHEMA_VERSION}",
            )
        db.executescript(schema)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return db
    except sqlite3.Error as exc:
        if db is not None:
            db.close()
        raise StateDirError(directory, f"{DB_NAME} cannot be used: {exc}") from exc
    except BaseException:
        if db is not None:
            db.close()
        raise


def add_missing_columns(db: sqlite3.Connection, table: str, columns: list[tuple[str, str]]) -> None:
    """Add the ``(name, SQL type)`` columns a database of an older gatekeeper lacks
    (each one nullable or with a default: its old rows read None or that default)."""
    have = {r["name"] for r in db.execute(f"PRAGMA table_info({table})")}
    for name, sql in columns:
        if name not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {sql}")
