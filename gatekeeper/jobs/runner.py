"""One job's exchange with the engine, and following its result file as it grows.

``run`` is the body of a job's runner task (``JobService._start`` owns the task
and its ticket): the body file goes up (one another box keeps is fetched into this
box's first, whole, or the engine is not asked: ``service_bodies``), the answer is written to
``results/<id>.part`` chunk by chunk and renamed when complete; an SSE answer
is scanned for ``"progress"`` on the way. ``follow`` is what a held client
reads: the result file from its start, waiting on the job's change event for
more, until the job ends; a truncated answer raises ``ResultBroken`` so the
client's connection is aborted rather than handed a short body as whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from multidict import CIMultiDict

from gatekeeper.config import Config
from gatekeeper.core.errors import UpstreamError
from gatekeeper.core.headers import downstream_response_headers
from gatekeeper.core.vocab import ErrorKind
from gatekeeper.jobs.deps import JobDeps
from gatekeeper.jobs.guard import GuardedStore, GuardedWriter, StorageError, StoreUnavailable
from gatekeeper.jobs.model import Job, ResultBroken
from gatekeeper.jobs.outbox import JobEvents
from gatekeeper.jobs.shared import Fenced
from gatekeeper.jobs.states import Ending, Endings, mid_body, upstream_refused
from gatekeeper.upstream import DROPPED, ClientGone, UpstreamPool

log = logging.getLogger("gatekeeper.jobs")

# Size of the pieces a body or result file is read in.
READ_CHUNK = 256 * 1024
# A progress value is looked for in the first bytes of an SSE ``data:`` line only.
_PROGRESS_SCAN = 4096


class Host(Protocol):
    """What a runner needs of the service that started it (``JobService``)."""

    deps: JobDeps
    store: GuardedStore
    events: JobEvents

    @property
    def closing(self) -> bool: ...

    def finish(self, job: Job, ending: Ending, *, detail: str | None = None) -> None: ...

    async def fetch_body(self, job: Job) -> Path | None: ...


async def run(jobs: Host, job: Job, cfg: Config, pool: UpstreamPool) -> None:
    """Send the job's body file to the engine and its answer into the result file."""
    deps, store, req = jobs.deps, jobs.store, job.record
    headers = [(k, v) for k, v in req.headers if k.lower() != "content-length"]
    if req.body_size or req.method in ("POST", "PUT", "PATCH"):
        headers.append(("Content-Length", str(req.body_size)))
    writer: GuardedWriter | None = None
    upstream_done = False
    sent_at = deps.clock()
    try:
        path = store.body_path(job.id) if req.body_size else None
        if req.body_size and path is None:  # kept by the box that took it (issue #21)
            path = await jobs.fetch_body(job)  # whole here, or the engine is not asked
            if path is None:
                return  # ended body_lost, or given back to the queue
            sent_at = deps.clock()
        try:
            exchange = await pool.send(
                req.method,
                req.target,
                _multidict(headers),
                _file_chunks(path) if path is not None else None,
                max_body_bytes=cfg.limits.max_body_bytes,
                client_body_timeout=cfg.limits.client_body_timeout,
            )
        except ClientGone as exc:  # the body file failed under the relay (upstream.py)
            raise _storage_cause(exc) from exc
        except UpstreamError as exc:
            deps.counters.upstream_error(job.route, exc.kind)
            if job.ticket is not None:
                deps.engines.engine_refused(job.ticket.engine, exc.engine_gone)
            log.warning(
                "job %s… upstream error: kind=%s status=%d: %s",
                job.id[:6],
                exc.kind,
                exc.status,
                exc.detail,
            )
            jobs.finish(job, upstream_refused(exc), detail=exc.detail)
            return
        try:
            resp = exchange.response
            head = downstream_response_headers(resp.headers)
            pairs = list(head.items())
            job.head = (resp.status, resp.reason or "", pairs)
            _record(
                job, lambda: store.set_result_head(job.id, resp.status, resp.reason, tuple(pairs))
            )
            writer = store.result_writer(job.id)
            job.notify()
            scan = _ProgressScanner() if _is_sse(head) else None
            async for chunk in resp.content.iter_any():
                writer.write(chunk)
                job.result_bytes += len(chunk)
                if scan is not None:
                    p = scan.feed(chunk)
                    if p is not None:
                        job.progress = p
                        jobs.events.progressed(job)  # throttled (jobs.webhooks)
                job.notify()
            upstream_done = True
        except (aiohttp.ClientError, TimeoutError) as exc:
            kind = ErrorKind.TIMEOUT if isinstance(exc, TimeoutError) else ErrorKind.PROTOCOL
            deps.counters.upstream_error(job.route, kind)
            if job.ticket is not None and isinstance(exc, DROPPED):  # its engine may have died
                deps.engines.engine_refused(job.ticket.engine, True)
            log.warning(
                "job %s… engine failed mid-answer after %d bytes: kind=%s %r",
                job.id[:6],
                job.result_bytes,
                kind,
                exc,
            )
            if writer is not None:
                writer.abort()
            jobs.finish(job, mid_body(kind))
            return
        finally:
            exchange.close(reuse=upstream_done)
        assert writer is not None
        size = writer.commit()
        status = resp.status
        elapsed = deps.clock() - sent_at
        deps.metrics.upstream_duration.labels(job.route, str(status)).observe(elapsed)
        _record(job, lambda: store.set_progress(job.id, job.progress, size))
        if job.cancel_requested:
            jobs.finish(job, Endings.DELETED_RUNNING)
        elif 200 <= status < 300:
            deps.gate.estimator.observe(elapsed)
            jobs.finish(job, Endings.DONE)
        else:
            jobs.finish(job, Endings.UPSTREAM_STATUS)
    except Fenced:
        # Another box owns the job now (this box's lease lapsed while it was away: issue
        # #21): this generation stops here, its result is dropped, nothing is recorded
        # over the job (``finish`` meets the fence too: ``service_shared.fenced``).
        if writer is not None:
            writer.abort()
        jobs.finish(job, Endings.INTERRUPTED)
    except StorageError as exc:
        # The state directory failed (a full disk, an I/O error, a file deleted under us):
        # what was written is not the whole answer and is never served as one.
        log.error("job %s… %s", job.id[:6], exc.detail)
        if writer is not None:
            writer.abort()
        jobs.finish(job, Endings.STORAGE_ERROR)
    except asyncio.CancelledError:
        if writer is not None:
            writer.abort()
        if not job.final and not job.returned:
            if jobs.closing:
                jobs.finish(job, Endings.INTERRUPTED)
            elif job.cancel_requested:
                jobs.finish(job, Endings.DELETED_RUNNING)
            else:
                jobs.finish(job, Endings.CLIENT_GONE)
        raise


async def follow(store: GuardedStore, job: Job) -> AsyncIterator[bytes]:
    """The result body as it is written; raises ResultBroken if the engine broke off."""
    f = None
    try:
        while True:
            ev = job.changed()
            if f is None:
                p = store.result_path(job.id)
                if p is not None:
                    with contextlib.suppress(FileNotFoundError):
                        f = open(p, "rb")  # noqa: SIM115, ASYNC230 - page cache, as spool.py
            if f is not None:
                data = f.read(READ_CHUNK)
                if data:
                    yield data
                    continue
            if job.final:
                # Complete: a done job, or the engine's own failed answer. Anything
                # else that ended after the head (cut off, cancelled) is truncated
                # and must not pass for a whole answer.
                complete = job.ending is not None and job.ending.whole_answer
                if job.head is not None and not complete:
                    raise ResultBroken(job.reason or job.state)
                if f is None and job.head is not None and job.result_bytes:
                    raise ResultBroken("result file missing")
                return
            await ev.wait()
    finally:
        if f is not None:
            f.close()


def _record(job: Job, write: Callable[[], None]) -> None:
    """A runner write of the job's head or progress. A shared store that is unreachable
    (issue #21) does not end the generation: the write is made again with the job's
    ending when the store is back (``upkeep.save_unsaved``), so the result is kept."""
    try:
        write()
    except StoreUnavailable:
        job.unsynced = True


def _storage_cause(exc: BaseException) -> BaseException:
    """The StorageError behind ``exc`` (the relay wraps what the body iterator raised)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, StorageError):
            return cause
        cause = cause.__cause__
    return exc


def _multidict(pairs: list[tuple[str, str]]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    try:
        with open(path, "rb") as f:  # noqa: ASYNC230 - page-cache reads, as spool.py
            while chunk := f.read(READ_CHUNK):
                yield chunk
    except OSError as exc:
        raise StorageError("reading the request body", exc) from exc


def _is_sse(headers: Any) -> bool:
    return str(headers.get("Content-Type", "")).startswith("text/event-stream")


class _ProgressScanner:
    """Finds ``"progress": <0..1>`` in the JSON of SSE ``data:`` lines, incrementally."""

    def __init__(self) -> None:
        self._line = bytearray()

    def feed(self, chunk: bytes) -> float | None:
        found: float | None = None
        for part in chunk.splitlines(keepends=True):
            if len(self._line) < _PROGRESS_SCAN:
                self._line += part[: _PROGRESS_SCAN - len(self._line)]
            if part.endswith((b"\n", b"\r")):
                p = _progress_of(bytes(self._line))
                if p is not None:
                    found = p
                self._line.clear()
        return found


def _progress_of(line: bytes) -> float | None:
    if not line.startswith(b"data:"):
        return None
    try:
        data = json.loads(line[5:].strip())
    except ValueError:
        return None
    p = data.get("progress") if isinstance(data, dict) else None
    if isinstance(p, int | float) and not isinstance(p, bool) and 0 <= p <= 1:
        return float(p)
    return None
