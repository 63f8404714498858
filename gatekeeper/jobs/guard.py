"""The store boundary: every storage failure becomes one ``StorageError``.

A store call or a file it hands out may fail for reasons no caller can fix on
the spot: a full disk (ENOSPC, SQLite's "database or disk is full"), an I/O
error, a file system remounted read-only, a database file deleted or
corrupted, a result file deleted under its reader. ``GuardedStore`` wraps any
``store.JobStore`` and translates each of those (``OSError``,
``sqlite3.Error``) into ``StorageError``, the one type the service, the runner
and the HTTP layer handle (a job ends ``storage_error``; a request is answered
``503 storage_error`` in JSON: it is an ``HttpError``). Errors that mean a bug
(``ValueError`` for a transition the table refuses, ``KeyError`` for an
unknown id) pass unchanged.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TypeVar

from gatekeeper.core.errors import HttpError
from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.batch.record import BatchRecord
from gatekeeper.jobs.files import BodyWriter, ResultWriter
from gatekeeper.jobs.handles import Handle
from gatekeeper.jobs.head import RequestHead
from gatekeeper.jobs.outbox import Backlog, Delivery
from gatekeeper.jobs.record import Headers, JobRecord
from gatekeeper.jobs.store import LIST_SCAN, HandlePage, JobStore

T = TypeVar("T")


class StoreFault(Exception):
    """A shared store's database refused a statement (PostgreSQL's own error, e.g. its disk
    is full): a storage fault like ``sqlite3.Error``, raised by stores that do not use
    ``sqlite3`` (``jobs.postgres``)."""

    def __init__(self, operation: str, cause: BaseException):
        super().__init__(f"{operation}: {cause}")
        self.operation = operation


# What a failing disk or database raises; everything else is not a storage fault.
STORAGE_FAULTS: tuple[type[BaseException], ...] = (OSError, sqlite3.Error, StoreFault)


class StorageError(HttpError):
    """The state directory failed a read or a write (module text)."""

    status = 503
    reason = "storage_error"

    def __init__(self, operation: str, cause: BaseException):
        super().__init__(f"the job store failed ({operation}): {describe(cause)}")
        self.operation = operation
        self.cause = cause


class StoreUnavailable(StorageError):
    """A shared store (PostgreSQL) did not answer within its call timeout, or its circuit
    breaker is open: 503 ``store_unavailable`` with Retry-After ``retry_after`` (issue #21).
    Already a ``StorageError``: ``guarded`` passes it unchanged."""

    reason = "store_unavailable"

    def __init__(self, operation: str, why: str, retry_after: int):
        super().__init__(operation, ConnectionError(why))
        self.retry_after = retry_after


def describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def guarded(operation: str, call: Callable[[], T]) -> T:
    """``call()``, with a storage fault raised as ``StorageError``."""
    try:
        return call()
    except STORAGE_FAULTS as exc:
        raise StorageError(operation, exc) from exc


class GuardedWriter:
    """A body or result writer whose failures are ``StorageError``s; ``abort`` never raises
    (it is what a failed job calls on its way out)."""

    def __init__(self, inner: BodyWriter | ResultWriter, what: str):
        self._inner = inner
        self._what = what

    @property
    def bytes_written(self) -> int:
        inner = self._inner
        return inner.bytes_written if isinstance(inner, ResultWriter) else inner.size

    def write(self, chunk: bytes) -> None:
        guarded(f"writing the {self._what}", lambda: self._inner.write(chunk))

    def commit(self) -> int:
        return guarded(f"committing the {self._what}", self._inner.commit)

    def abort(self) -> None:
        # A partial file that cannot be deleted stays for recover's sweep at the next start.
        with contextlib.suppress(*STORAGE_FAULTS):
            self._inner.abort()


class GuardedStore:
    """Any ``JobStore`` with every storage fault raised as ``StorageError`` (module text)."""

    def __init__(self, inner: JobStore):
        self.inner = inner
        self.directory = inner.directory

    def close(self) -> None:
        with contextlib.suppress(*STORAGE_FAULTS):  # a broken database: nothing more to lose
            self.inner.close()

    def check_file(self) -> str | None:
        return guarded("putting the database back at its path", self.inner.check_file)

    def create(self, record: JobRecord, outbox: Sequence[Delivery] = ()) -> JobRecord:
        return guarded("create", lambda: self.inner.create(record, outbox))

    def get(self, job_id: str) -> JobRecord | None:
        return guarded("get", lambda: self.inner.get(job_id))

    def queued(self) -> list[JobRecord]:
        return guarded("queued", self.inner.queued)

    def running(self) -> list[JobRecord]:
        return guarded("running", self.inner.running)

    def find_coalesce(self, key: str, now: float, keep: float) -> JobRecord | None:
        return guarded("find_coalesce", lambda: self.inner.find_coalesce(key, now, keep))

    def kept_like(self, head: RequestHead, now: float, keep: float) -> bool:
        return guarded("kept_like", lambda: self.inner.kept_like(head, now, keep))

    def add_handle(self, handle: Handle) -> None:
        guarded("add_handle", lambda: self.inner.add_handle(handle))

    def get_handle(self, handle_id: str) -> Handle | None:
        return guarded("get_handle", lambda: self.inner.get_handle(handle_id))

    def detach_handle(self, handle_id: str, when: float) -> Handle:
        return guarded("detach_handle", lambda: self.inner.detach_handle(handle_id, when))

    def handles_of(self, job_id: str) -> list[Handle]:
        return guarded("handles_of", lambda: self.inner.handles_of(job_id))

    def client_handles(
        self,
        client: str,
        *,
        limit: int,
        before: int | None = None,
        states: Collection[JobState] | None = None,
        scan: int = LIST_SCAN,
    ) -> HandlePage:
        return guarded(
            "client_handles",
            lambda: self.inner.client_handles(
                client, limit=limit, before=before, states=states, scan=scan
            ),
        )

    def create_batch(
        self,
        batch: BatchRecord,
        items: Sequence[JobRecord],
        outbox: Sequence[Delivery] = (),
    ) -> list[JobRecord]:
        return guarded("create_batch", lambda: self.inner.create_batch(batch, items, outbox))

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        return guarded("get_batch", lambda: self.inner.get_batch(batch_id))

    def batch_jobs(self, batch_id: str) -> list[JobRecord]:
        return guarded("batch_jobs", lambda: self.inner.batch_jobs(batch_id))

    def add_coalesced(self, job_id: str) -> int:
        return guarded("add_coalesced", lambda: self.inner.add_coalesced(job_id))

    def mark_running(
        self,
        job_id: str,
        started: float,
        engine: str | None = None,
        outbox: Sequence[Delivery] = (),
    ) -> JobRecord:
        return guarded(
            "mark_running", lambda: self.inner.mark_running(job_id, started, engine, outbox)
        )

    def claim_next(self, started: float, engine: str | None = None) -> JobRecord | None:
        return guarded("claim_next", lambda: self.inner.claim_next(started, engine))

    def set_result_head(
        self, job_id: str, status: int, reason: str | None, headers: Headers
    ) -> None:
        guarded(
            "set_result_head", lambda: self.inner.set_result_head(job_id, status, reason, headers)
        )

    def set_progress(self, job_id: str, progress: float | None, result_bytes: int) -> None:
        guarded("set_progress", lambda: self.inner.set_progress(job_id, progress, result_bytes))

    def finish(
        self,
        job_id: str,
        state: JobState,
        reason: str | None,
        finished: float,
        outbox: Sequence[Delivery] = (),
    ) -> JobRecord:
        return guarded("finish", lambda: self.inner.finish(job_id, state, reason, finished, outbox))

    def outbox_add(self, deliveries: list[Delivery]) -> None:
        guarded("outbox_add", lambda: self.inner.outbox_add(deliveries))

    def outbox_take(
        self, now: float, limit: int, lease_until: float, skip: Collection[str] = ()
    ) -> list[Delivery]:
        return guarded("outbox_take", lambda: self.inner.outbox_take(now, limit, lease_until, skip))

    def outbox_delivered(self, delivery_id: str) -> None:
        guarded("outbox_delivered", lambda: self.inner.outbox_delivered(delivery_id))

    def outbox_retry(self, delivery_id: str, next_at: float, error: str) -> None:
        guarded("outbox_retry", lambda: self.inner.outbox_retry(delivery_id, next_at, error))

    def outbox_gone(self, job_id: str, destination: str) -> int:
        return guarded("outbox_gone", lambda: self.inner.outbox_gone(job_id, destination))

    def outbox_wake(self, destination: str, now: float) -> int:
        return guarded("outbox_wake", lambda: self.inner.outbox_wake(destination, now))

    def outbox_backlog(self) -> Backlog:
        return guarded("outbox_backlog", self.inner.outbox_backlog)

    def outbox_pending(self, job_id: str) -> list[Delivery]:
        return guarded("outbox_pending", lambda: self.inner.outbox_pending(job_id))

    def recover(self, now: float, retry_interrupted: bool) -> list[JobRecord]:
        return guarded("recover", lambda: self.inner.recover(now, retry_interrupted))

    def evict(self, now: float, keep: float, max_bytes: int) -> list[str]:
        return guarded("evict", lambda: self.inner.evict(now, keep, max_bytes))

    def results_bytes(self) -> int:
        return guarded("results_bytes", self.inner.results_bytes)

    def body_writer(self, job_id: str) -> GuardedWriter:
        return GuardedWriter(guarded("body_writer", lambda: self.inner.body_writer(job_id)), "body")

    def body_target(self, job_id: str) -> Path:
        return guarded("body_target", lambda: self.inner.body_target(job_id))

    @property
    def bodies_dir(self) -> Path:
        return self.inner.bodies_dir

    def body_path(self, job_id: str) -> Path | None:
        return guarded("body_path", lambda: self.inner.body_path(job_id))

    def result_writer(self, job_id: str) -> GuardedWriter:
        return GuardedWriter(
            guarded("result_writer", lambda: self.inner.result_writer(job_id)), "result"
        )

    def result_path(self, job_id: str) -> Path | None:
        return guarded("result_path", lambda: self.inner.result_path(job_id))

    @staticmethod
    def drop_file(path: Path) -> None:
        """Delete a file this store wrote for a job that was never stored; never raises."""
        with contextlib.suppress(OSError):  # else recover's sweep removes it at the next start
            path.unlink(missing_ok=True)
