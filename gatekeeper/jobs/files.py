"""A job's files: its request body and the engine's answer, and the bytes they hold.

Layout under the state directory::

    bodies/<id>       a job's request body; bodies/<id>.tmp while it is being written
    results/<id>      the engine's answer body; results/<id>.part while it streams

Files are written under a temporary name and ``os.replace``d into place, so a
reader never sees half a body or half a result under its final name. Files are
not fsynced (the store's module text says why).

``ResultLedger`` counts the bytes of every file in results/ (final and partial):
``results_bytes`` is read at every scrape and every eviction, so it is counted,
not walked. Every change to results/ goes through it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO

BODIES = "bodies"
RESULTS = "results"

# Job ids become file names: anything else than the URL-safe alphabet is refused here, at the
# file boundary, whatever the caller checked before (jobs.ids.is_job_id is the exact shape).
# The one '.' allowed is a box id's separator (issue #11 §2), only before a full 24-char
# token: never first, never two, so no "..", no hidden file, no "name.ext" look-alike.
SAFE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,31}\.[A-Za-z0-9_-]{24}|[A-Za-z0-9_-]{1,64}")


def check_id(job_id: str) -> str:
    if not SAFE_ID.fullmatch(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return job_id


def unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def part_name(job_id: str) -> str:
    return f"{job_id}.part"


class ResultLedger:
    """The bytes of each file in results/, by file name, and their total."""

    def __init__(self, results: Path):
        self.directory = results
        self._sizes: dict[str, int] = {}
        with os.scandir(results) as it:
            for entry in it:
                if entry.is_file(follow_symlinks=False):
                    self._sizes[entry.name] = entry.stat(follow_symlinks=False).st_size
        self.total = sum(self._sizes.values())

    def size_of(self, job_id: str) -> int:
        """Bytes of ``job_id``'s result, final and partial."""
        return self._sizes.get(job_id, 0) + self._sizes.get(part_name(job_id), 0)

    def names(self) -> list[str]:
        """The file names in results/ now (read from the directory, not the ledger)."""
        with os.scandir(self.directory) as it:
            return [entry.name for entry in it]

    def grow(self, name: str, n: int) -> None:
        self._sizes[name] = self._sizes.get(name, 0) + n
        self.total += n

    def drop(self, name: str) -> None:
        """Delete one file of results/ and forget its bytes."""
        unlink(self.directory / name)
        self.total -= self._sizes.pop(name, 0)

    def drop_job(self, job_id: str) -> None:
        """Delete ``job_id``'s result, final and partial."""
        self.drop(job_id)
        self.drop(part_name(job_id))

    def renamed(self, job_id: str) -> None:
        """``<id>.part`` became ``<id>`` (replacing any older final file)."""
        size = self._sizes.pop(part_name(job_id), 0)
        self.total -= self._sizes.pop(job_id, 0)
        self._sizes[job_id] = size


class JobFiles:
    """The bodies/ and results/ directories of one state directory (both must exist)."""

    def __init__(self, directory: Path):
        self.bodies = directory / BODIES
        self.results = directory / RESULTS
        self.ledger = ResultLedger(self.results)

    def body_target(self, job_id: str) -> Path:
        return self.bodies / check_id(job_id)

    def body_path(self, job_id: str) -> Path | None:
        path = self.body_target(job_id)
        return path if path.is_file() else None

    def body_writer(self, job_id: str) -> BodyWriter:
        return BodyWriter(self.body_target(job_id))

    def drop_body(self, job_id: str) -> None:
        unlink(self.bodies / job_id)

    def result_path(self, job_id: str) -> Path | None:
        """The final result file when complete, else the partial one while running, else None."""
        check_id(job_id)
        for name in (job_id, part_name(job_id)):
            path = self.results / name
            if path.is_file():
                return path
        return None

    def has_result(self, job_id: str) -> bool:
        """The final result file is on disk (not just counted)."""
        return (self.results / job_id).is_file()

    def result_writer(self, job_id: str, on_commit: Callable[[int], None]) -> ResultWriter:
        return ResultWriter(self.ledger, check_id(job_id), on_commit)

    def sweep(self, keep_body: Callable[[str], bool], keep_result: Callable[[str], bool]) -> None:
        """Delete every body and result file whose name the predicates do not keep."""
        with os.scandir(self.bodies) as it:
            for entry in it:
                if not keep_body(entry.name):
                    unlink(Path(entry.path))
        for name in self.ledger.names():
            if not keep_result(name):
                self.ledger.drop(name)


class BodyWriter:
    """A request body: ``bodies/<id>.tmp``, ``os.replace``d to ``bodies/<id>`` on commit."""

    def __init__(self, final: Path):
        self._final = final
        self._tmp = final.with_name(final.name + ".tmp")
        self._file: IO[bytes] | None = open(self._tmp, "wb")  # noqa: SIM115
        self.size = 0

    def write(self, chunk: bytes) -> None:
        if self._file is None:
            raise ValueError("body writer is closed")
        self._file.write(chunk)
        self.size += len(chunk)

    def commit(self) -> int:
        """Make the body visible under its final name; returns its size."""
        if self._file is None:
            raise ValueError("body writer is closed")
        f, self._file = self._file, None
        try:
            f.close()
            os.replace(self._tmp, self._final)
        except BaseException:
            unlink(self._tmp)
            raise
        return self.size

    def abort(self) -> None:
        """Forget the partial body; safe to call more than once (and after commit)."""
        if self._file is not None:
            f, self._file = self._file, None
            f.close()
            unlink(self._tmp)


class ResultWriter:
    """An engine answer: ``results/<id>.part``, ``os.replace``d to ``results/<id>`` on commit.

    The file is unbuffered: every ``write`` is in the page cache when it returns, so a held
    client following the partial file sees exactly ``bytes_written`` bytes (``flush`` is
    there for callers that batch; it has nothing to do). ``on_commit(size)`` records the
    final size in the job's row once the file has its final name.
    """

    def __init__(self, ledger: ResultLedger, job_id: str, on_commit: Callable[[int], None]):
        self._ledger = ledger
        self._id = job_id
        self._on_commit = on_commit
        self._name = part_name(job_id)
        self._part = ledger.directory / self._name
        ledger.drop(self._name)  # a retried run starts from nothing
        self._file: IO[bytes] | None = open(self._part, "wb", buffering=0)  # noqa: SIM115
        ledger.grow(self._name, 0)
        self.bytes_written = 0

    def write(self, chunk: bytes) -> None:
        if self._file is None:
            raise ValueError("result writer is closed")
        view = memoryview(chunk)
        while view:  # a raw file may write less than asked
            n = self._file.write(view)
            assert n is not None
            view = view[n:]
            self.bytes_written += n
            self._ledger.grow(self._name, n)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def commit(self) -> int:
        """Make the result visible under its final name; returns its size."""
        if self._file is None:
            raise ValueError("result writer is closed")
        f, self._file = self._file, None
        f.close()
        os.replace(self._part, self._ledger.directory / self._id)
        self._ledger.renamed(self._id)
        self._on_commit(self.bytes_written)
        return self.bytes_written

    def abort(self) -> None:
        """Delete the partial file; safe to call more than once (and after commit)."""
        if self._file is not None:
            f, self._file = self._file, None
            f.close()
            self._ledger.drop(self._name)
