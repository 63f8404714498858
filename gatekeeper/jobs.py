"""The waiting room at work: jobs queued, dispatched onto the gate, run, kept.

Every request on a ``queue`` route becomes a job (docs/waiting-room.md):

- ``submit`` decides in one synchronous step: attach to an identical job
  (coalescing), replay a kept result, refuse (``client_limit`` 429,
  ``queue_full`` 503, with a Retry-After computed from the queue), or create a
  job and put it in the waiting room (``waitroom.WaitingRoom``, pure);
- ``dispatch`` runs whenever a slot may have freed (the gate's ``on_free``, an
  arrival, the tick that notices resources recovered or a raised
  ``max_in_flight``): while the gate would admit, the next fair waiter gets a
  ``Ticket`` and a runner task;
- the runner streams the job's body file to the engine and the engine's answer
  into the job's result file; the runner task owns the ticket (its
  done-callback releases it, exactly once, whatever ended the task);
- held clients (the frontend, unchanged) follow the result file as it grows,
  so an SSE answer stays live; async clients (``Prefer: respond-async``) read
  it later through ``jobsapi``.

The store (``jobstore``, SQLite + files) is written synchronously on the loop:
each call is one small statement in WAL mode (microseconds; bench/ measures).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .admission import Rejection, Ticket
from .config import Config, Route
from .errors import UpstreamError
from .headers import downstream_response_headers
from .jobmodel import client_hash
from .jobstore import JobRow, JobStore, ResultWriter
from .state import AppState
from .tasks import cancel_and_wait
from .vocab import FINAL_STATES, ErrorKind, JobState, QueueReason
from .waitroom import (
    QueueLimits,
    Waiter,
    WaitingRoom,
    eta_for,
    retry_after_client,
    retry_after_full,
    start_delays,
)

log = logging.getLogger("gatekeeper.jobs")

# How often the background tick re-checks what no event announces: resources that
# recovered (the monitor publishes a new state), waiters past max_wait.
TICK_SECONDS = 0.25
# How often kept results are checked against jobs.keep and jobs.max_bytes.
EVICT_EVERY_SECONDS = 30.0
# Size of the pieces a result file is read in.
READ_CHUNK = 256 * 1024
# A progress value is looked for in the first bytes of an SSE ``data:`` line only.
_PROGRESS_SCAN = 4096


class ResultBroken(Exception):
    """The engine's answer broke off mid-body: a follower must abort its client."""


@dataclass(eq=False)
class Job:
    """One job while it lives in this process (queued or running, or just ended)."""

    id: str
    route: Route
    client: str
    held: bool  # created by a held connection (not durable across a restart)
    method: str
    target: str
    headers: list[tuple[str, str]]  # the upstream request headers
    coalesce_key: str | None
    body_size: int
    arrived: float  # loop clock
    created_wall: float
    predicted_done: float | None = None  # loop clock: the ETA given at arrival
    state: JobState = JobState.QUEUED
    reason: str | None = None
    error_status: int | None = None  # gatekeeper's own status when it failed before a head
    error_detail: str | None = None
    started: float | None = None
    finished: float | None = None
    ticket: Ticket | None = None
    task: asyncio.Task[None] | None = None
    followers: int = 0  # held connections waiting for / streaming its answer now
    async_owners: int = 0  # async requests that were given its id
    coalesced: int = 0
    head: tuple[int, str, list[tuple[str, str]]] | None = None
    result_bytes: int = 0
    progress: float | None = None
    cancel_requested: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def changed(self) -> asyncio.Event:
        """The event set at the next change; take it *before* reading the state."""
        return self._changed

    def notify(self) -> None:
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def wanted(self) -> bool:
        """Someone still wants the answer (a held client, or an async owner)."""
        return self.followers > 0 or self.async_owners > 0 or not self.held


@dataclass(frozen=True)
class Refused:
    reason: QueueReason
    status: int
    retry_after: int
    fields: dict[str, Any]


@dataclass(frozen=True)
class Joined:
    job: Job
    coalesced: bool  # attached to a job that already existed


@dataclass(frozen=True)
class Kept:
    row: JobRow  # a done job whose 2xx result is replayed


Submitted = Refused | Joined | Kept


def queue_limits(cfg: Config) -> QueueLimits:
    q = cfg.admission.queue
    return QueueLimits(max_waiting=q.max_waiting, max_wait=q.max_wait, per_client=q.per_client)


class Jobs:
    def __init__(self, st: AppState, store: JobStore, state_dir: Path, *, ephemeral: bool = False):
        self.st = st
        self.store = store
        self.state_dir = state_dir
        self.ephemeral = ephemeral  # a temporary directory, removed at close
        self.spool_dir = store.bodies_dir  # request bodies spool here: saving is a rename
        self.room = WaitingRoom()
        self.live: dict[str, Job] = {}
        self._by_key: dict[str, Job] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._next_evict = 0.0
        self._changed = asyncio.Event()  # any queue change (SSE positions)
        st.gate.on_free = self.dispatch

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Recover what a previous process left, then start the background tick."""
        now, wall = self.st.clock(), time.time()
        cfg = self.st.config
        for row in self.store.recover(wall, cfg.jobs.retry_interrupted):
            if row.state in FINAL_STATES:
                self.st.metrics.jobs.labels(row.route, row.state).inc()
                log.warning(
                    "job %s… (%s) was %s at the last stop: now %s (%s)",
                    row.id[:6],
                    row.route,
                    "running" if row.reason == "interrupted" else "queued",
                    row.state,
                    row.reason,
                )
        router = self.st.runtime.router
        for row in self.store.queued():
            route = next((r for r in cfg.routes if r.name == row.route), None)
            if route is None:  # its route was renamed or removed: match its target again
                route = router.match(row.method, row.target.split("?", 1)[0])
            job = Job(
                id=row.id,
                route=route,
                client=row.client,
                held=row.held,
                method=row.method,
                target=row.target,
                headers=list(row.headers),
                coalesce_key=row.coalesce_key,
                body_size=row.body_size,
                arrived=now - max(0.0, wall - row.created),
                created_wall=row.created,
                coalesced=row.coalesced,
            )
            self._enter(job, cfg)
        if self.live:
            log.info("restored %d queued job(s) from %s", len(self.live), self.state_dir)
        self._task = asyncio.create_task(self._tick(), name="gatekeeper-jobs")
        self.dispatch()

    async def close(self) -> None:
        """Stop: runners still going are cancelled (their jobs end ``interrupted``)."""
        self._closing = True
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        runners = [j.task for j in self.live.values() if j.task is not None]
        await cancel_and_wait([t for t in runners if not t.done()])
        self.store.close()
        if self.ephemeral:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def drain(self) -> None:
        """SIGTERM: held waiters hear 503 draining now; async jobs stay queued on disk
        for the next start; the running job finishes."""
        for w in self.room.waiters():
            job = self.live.get(w.job_id)
            if job is not None and job.held and job.async_owners == 0:
                self.room.leave(job.id)
                self._finish(job, JobState.CANCELLED, "draining", status=503)
        self._changed_all()

    # ------------------------------------------------------------------ arrivals

    def submit(
        self,
        *,
        job_id: str,
        route: Route,
        client: str,
        held: bool,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        coalesce_key: str | None,
        body_size: int,
        save_body: Callable[[Path], None],
    ) -> Submitted:
        """One arrival, decided in one synchronous step (see the module text)."""
        st, cfg = self.st, self.st.config
        now = st.clock()
        if coalesce_key is not None and cfg.jobs.coalesce:
            twin = self._by_key.get(coalesce_key)
            if twin is not None and not twin.final:
                twin.coalesced += 1
                self.store.add_coalesced(twin.id)
                st.metrics.coalesced.labels(route.name).inc()
                if held:
                    twin.followers += 1
                else:
                    twin.async_owners += 1
                self._changed_all()
                return Joined(twin, coalesced=True)
            kept = self.store.find_coalesce(coalesce_key, time.time(), cfg.jobs.keep)
            if kept is not None and kept.state == JobState.DONE:
                self.store.add_coalesced(kept.id)
                st.metrics.coalesced.labels(route.name).inc()
                return Kept(kept)
        refusal = self._refusal(client, cfg, now)
        if refusal is not None:
            return refusal
        if body_size:
            save_body(self.store.body_target(job_id))
        self.store.create(
            id=job_id,
            route=route.name,
            client=client,
            held=held,
            method=method,
            target=target,
            headers=tuple(headers),
            coalesce_key=coalesce_key,
            created=time.time(),
            body_size=body_size,
        )
        job = Job(
            id=job_id,
            route=route,
            client=client,
            held=held,
            method=method,
            target=target,
            headers=headers,
            coalesce_key=coalesce_key,
            body_size=body_size,
            arrived=now,
            created_wall=time.time(),
        )
        if held:
            job.followers = 1
        else:
            job.async_owners = 1
        job.predicted_done = now + self._eta_new(now)
        self._enter(job, cfg)
        self.dispatch()
        return Joined(job, coalesced=False)

    def _enter(self, job: Job, cfg: Config) -> None:
        self.live[job.id] = job
        if job.coalesce_key is not None:
            self._by_key[job.coalesce_key] = job
        deadline = job.arrived + cfg.admission.queue.max_wait
        self.room.join(Waiter(job.id, job.client, job.route.name, job.arrived, deadline))
        self.st.metrics.jobs.labels(job.route.name, JobState.QUEUED).inc()
        self._changed_all()

    def _running_for(self, client: str) -> int:
        return sum(
            1 for j in self.live.values() if j.client == client and j.state == JobState.RUNNING
        )

    def _refusal(self, client: str, cfg: Config, now: float) -> Refused | None:
        limits = queue_limits(cfg)
        running = self._running_for(client)
        free_now = not self.room and self.st.gate.check(now) is None
        reason = self.room.refusal(client, running, limits)
        if reason == QueueReason.QUEUE_FULL and free_now:
            reason = None  # max_waiting 0: no one waits, but a free slot still serves
        if reason is None:
            return None
        q = cfg.admission.queue
        fields: dict[str, Any] = {
            "waiting": len(self.room),
            "max_waiting": q.max_waiting,
            "per_client": q.per_client,
            "max_wait": math.ceil(q.max_wait),
        }
        if reason == QueueReason.CLIENT_LIMIT:
            mine = [j for j in self.live.values() if j.client == client]
            done_in = [self._eta(j, now)[1] for j in mine]
            return Refused(reason, 429, retry_after_client(done_in), fields)
        remaining, slots, expected = self._running_remaining(now)
        return Refused(
            reason,
            cfg.admission.reject_status,
            retry_after_full(remaining, slots, expected),
            fields,
        )

    # ------------------------------------------------------------------ dispatch

    def dispatch(self) -> None:
        """While the gate would admit, start the next fair waiter. Synchronous: called
        from the gate's release, so no arrival on an admit route can take the slot
        between a release and the queue's next job."""
        if self._closing:
            return
        st = self.st
        while self.room:
            now = st.clock()
            if st.gate.check(now) is not None:
                return
            waiter = self.room.pop_next()
            if waiter is None:
                return
            job = self.live.get(waiter.job_id)
            if job is None:  # cannot happen: room and live change together
                continue
            result = st.gate.try_admit(job.route.name, now)
            if isinstance(result, Rejection):  # cannot happen: checked just above
                self.room.join(waiter)
                return
            self._start(job, result, now)

    def _start(self, job: Job, ticket: Ticket, now: float) -> None:
        st = self.st
        job.state, job.started, job.ticket = JobState.RUNNING, now, ticket
        wait = now - job.arrived
        st.metrics.queue_wait.labels(job.route.name).observe(wait)
        st.metrics.jobs.labels(job.route.name, JobState.RUNNING).inc()
        self.store.mark_running(job.id, time.time())
        epoch = st.usage.enter()  # the runner may use this epoch's pools to its end
        rt = st.runtime
        task = asyncio.create_task(self._run(job, rt.config, rt.gated), name=f"job-{job.id[:6]}")
        job.task = task

        def done(t: asyncio.Task[None]) -> None:
            st.usage.leave(epoch)
            if not t.cancelled() and t.exception() is not None:
                log.error("job %s… runner failed", job.id[:6], exc_info=t.exception())
                if not job.final:
                    self._finish(job, JobState.FAILED, "internal", status=500)
            if not job.final:  # cancelled before it could record why
                self._finish(job, JobState.FAILED, "interrupted", status=503)
            ticket.release()  # exactly once: here, whatever ended the task

        task.add_done_callback(done)
        job.notify()
        self._changed_all()

    # ------------------------------------------------------------------ the runner

    async def _run(self, job: Job, cfg: Config, pool: Any) -> None:
        st, store = self.st, self.store
        path = store.body_path(job.id) if job.body_size else None
        headers = list(job.headers)
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        if job.body_size or job.method in ("POST", "PUT", "PATCH"):
            headers.append(("Content-Length", str(job.body_size)))
        writer: ResultWriter | None = None
        upstream_done = False
        sent_at = st.clock()
        try:
            try:
                exchange = await pool.send(
                    job.method,
                    job.target,
                    _multidict(headers),
                    _file_chunks(path) if path is not None else None,
                    max_body_bytes=cfg.limits.max_body_bytes,
                    client_body_timeout=cfg.limits.client_body_timeout,
                )
            except UpstreamError as exc:
                st.count_upstream_error(job.route.name, exc.kind)
                log.warning(
                    "job %s… upstream error: kind=%s status=%d: %s",
                    job.id[:6],
                    exc.kind,
                    exc.status,
                    exc.detail,
                )
                self._finish(job, JobState.FAILED, exc.reason, status=exc.status, detail=exc.detail)
                return
            try:
                resp = exchange.response
                head = downstream_response_headers(resp.headers)
                pairs = list(head.items())
                job.head = (resp.status, resp.reason or "", pairs)
                store.set_result_head(job.id, resp.status, resp.reason, tuple(pairs))
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
                    job.notify()
                upstream_done = True
            except (aiohttp.ClientError, TimeoutError) as exc:
                kind = ErrorKind.TIMEOUT if isinstance(exc, TimeoutError) else ErrorKind.PROTOCOL
                st.count_upstream_error(job.route.name, kind)
                log.warning(
                    "job %s… engine failed mid-answer after %d bytes: kind=%s %r",
                    job.id[:6],
                    job.result_bytes,
                    kind,
                    exc,
                )
                if writer is not None:
                    writer.abort()
                self._finish(job, JobState.FAILED, f"upstream_{kind}_mid_body")
                return
            finally:
                exchange.close(reuse=upstream_done)
            assert writer is not None
            size = writer.commit()
            status = resp.status
            elapsed = st.clock() - sent_at
            st.metrics.upstream_duration.labels(job.route.name, str(status)).observe(elapsed)
            store.set_progress(job.id, job.progress, size)
            if job.cancel_requested:
                self._finish(job, JobState.CANCELLED, "deleted")
            elif 200 <= status < 300:
                st.gate.estimator.observe(elapsed)
                self._finish(job, JobState.DONE, None)
            else:
                self._finish(job, JobState.FAILED, "upstream_status")
        except asyncio.CancelledError:
            if writer is not None:
                writer.abort()
            if not job.final:
                if self._closing:
                    self._finish(job, JobState.FAILED, "interrupted", status=503)
                else:
                    why = "deleted" if job.cancel_requested else "client_gone"
                    self._finish(job, JobState.CANCELLED, why, status=499)
            raise

    # ------------------------------------------------------------------ endings

    def _finish(
        self,
        job: Job,
        state: JobState,
        reason: str | None,
        *,
        status: int | None = None,
        detail: str | None = None,
    ) -> None:
        """The job's final state: stored, counted, announced; it leaves the live set."""
        if job.final:
            return
        st = self.st
        now = st.clock()
        job.state, job.reason, job.finished = state, reason, now
        if status is not None and job.head is None:
            job.error_status, job.error_detail = status, detail
        self.store.finish(job.id, state, reason, time.time())
        st.metrics.jobs.labels(job.route.name, state).inc()
        if state == JobState.DONE and job.predicted_done is not None:
            actual = now - job.arrived
            if actual > 0:
                st.metrics.eta_error.observe(
                    abs(actual - (job.predicted_done - job.arrived)) / actual
                )
        self.live.pop(job.id, None)
        if job.coalesce_key is not None and self._by_key.get(job.coalesce_key) is job:
            del self._by_key[job.coalesce_key]
        job.notify()
        self._changed_all()
        if state == JobState.DONE and self.store.results_bytes() > st.config.jobs.max_bytes:
            self.evict()

    def expire_waiters(self, now: float) -> None:
        for w in self.room.expire(now):
            job = self.live.get(w.job_id)
            if job is None:
                continue
            self.st.count_rejection(job.route.name, QueueReason.QUEUE_TIMEOUT)
            log.info(
                "job %s… waited %.0fs (admission.queue.max_wait) without a slot: queue_timeout",
                job.id[:6],
                now - job.arrived,
            )
            self._finish(job, JobState.FAILED, QueueReason.QUEUE_TIMEOUT, status=503)

    def detach(self, job: Job) -> None:
        """A held client of ``job`` is gone (disconnected, or it stopped reading)."""
        job.followers = max(0, job.followers - 1)
        if job.wanted or job.final:
            return
        if job.state == JobState.QUEUED:
            self.room.leave(job.id)
            self._finish(job, JobState.CANCELLED, "client_gone", status=499)
        elif (
            job.state == JobState.RUNNING
            and self.st.config.admission.on_client_disconnect == "cancel"
            and job.task is not None
        ):
            job.task.cancel(msg="client disconnected")
        # finish mode: the engine keeps computing; its answer is kept as the job's result

    def delete(self, job: Job) -> None:
        """DELETE: queued -> removed; running -> per on_client_disconnect."""
        if job.state == JobState.QUEUED:
            self.room.leave(job.id)
            self._finish(job, JobState.CANCELLED, "deleted", status=409)
            self.dispatch()
        elif job.state == JobState.RUNNING and not job.cancel_requested:
            job.cancel_requested = True
            if self.st.config.admission.on_client_disconnect == "cancel" and job.task is not None:
                job.task.cancel(msg="job deleted")
            job.notify()
            self._changed_all()

    def evict(self) -> list[str]:
        cfg = self.st.config.jobs
        expired = self.store.evict(time.time(), cfg.keep, cfg.max_bytes)
        for job_id in expired:
            row = self.store.get(job_id)
            if row is not None:
                self.st.metrics.jobs.labels(row.route, JobState.EXPIRED).inc()
        if expired:
            log.info("expired %d kept result(s) (jobs.keep / jobs.max_bytes)", len(expired))
        return expired

    # ------------------------------------------------------------------ the background tick

    async def _tick(self) -> None:
        while True:
            now = self.st.clock()
            self.expire_waiters(now)
            self.dispatch()
            if now >= self._next_evict:
                self._next_evict = now + EVICT_EVERY_SECONDS
                try:
                    self.evict()
                except Exception:  # a disk error must not stop the queue
                    log.exception("evicting kept results failed")
            deadline = self.room.next_deadline()
            delay = TICK_SECONDS if deadline is None else min(TICK_SECONDS, deadline - now)
            await asyncio.sleep(max(0.0, delay))

    # ------------------------------------------------------------------ reading

    def _changed_all(self) -> None:
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    def any_change(self) -> asyncio.Event:
        return self._changed

    def depth(self) -> int:
        return len(self.room)

    def oldest_wait(self, now: float) -> float:
        oldest = self.room.oldest_arrival()
        return 0.0 if oldest is None else max(0.0, now - oldest)

    def results_bytes(self) -> int:
        return self.store.results_bytes()

    def find(self, job_id: str) -> Job | JobRow | None:
        live = self.live.get(job_id)
        if live is not None:
            return live
        return self.store.get(job_id)

    def _running_remaining(self, now: float) -> tuple[list[float], int, float]:
        gate = self.st.gate
        expected = gate.estimator.expected
        remaining = [max(0.0, expected - e) for e in gate.elapsed(now)]
        return remaining, gate.limits.max_in_flight, expected

    def _eta(self, job: Job, now: float) -> tuple[float, float]:
        """(starts_in, done_in) seconds for a live job."""
        remaining, slots, expected = self._running_remaining(now)
        if job.state == JobState.RUNNING:
            assert job.started is not None
            return 0.0, max(0.0, expected - (now - job.started))
        pos = self.room.position(job.id)
        if pos is None:
            return 0.0, 0.0
        return eta_for(pos, remaining, slots, expected)

    def _eta_new(self, now: float) -> float:
        """Done-in for a job joining the end of the queue now."""
        remaining, slots, expected = self._running_remaining(now)
        if not self.room and len(remaining) < slots and self.st.gate.check(now) is None:
            return expected
        starts = start_delays(remaining, slots, len(self.room) + 1, expected)
        return starts[-1] + expected

    def retry_after_timeout(self, now: float) -> int:
        from .waitroom import retry_after_timeout

        remaining, slots, expected = self._running_remaining(now)
        return retry_after_timeout(remaining, slots, len(self.room), expected)

    def view(self, found: Job | JobRow, now: float, base: str) -> dict[str, Any]:
        """The public JSON of one job (GET <jobs_path>/<id>, its events, the 202)."""
        links = {
            "self": f"{base}/{found.id}",
            "events": f"{base}/{found.id}/events",
            "result": f"{base}/{found.id}/result",
        }
        if isinstance(found, Job) and not found.final:
            j = found
            starts_in, done_in = self._eta(j, now)
            waited = (j.started if j.started is not None else now) - j.arrived
            return {
                "id": j.id,
                "state": j.state,
                "route": j.route.name,
                "position": self.room.position(j.id) if j.state == JobState.QUEUED else 0,
                "eta_seconds": round(done_in, 1),
                "starts_in_seconds": round(starts_in, 1),
                "waited_seconds": round(waited, 1),
                "elapsed_seconds": round(now - j.started, 1) if j.started is not None else None,
                "progress": j.progress,
                "coalesced": j.coalesced,
                "cancel_requested": j.cancel_requested,
                "reason": None,
                "result": None,
                "links": links,
            }
        row = found if isinstance(found, JobRow) else self.store.get(found.id)
        assert row is not None
        started, finished = row.started, row.finished
        return {
            "id": row.id,
            "state": row.state,
            "route": row.route,
            "position": None,
            "eta_seconds": 0 if row.state not in FINAL_STATES else None,
            "starts_in_seconds": None,
            "waited_seconds": round((started or finished or row.created) - row.created, 1),
            "elapsed_seconds": round(finished - started, 1)
            if started is not None and finished is not None
            else None,
            "progress": row.progress,
            "coalesced": row.coalesced,
            "cancel_requested": False,
            "reason": row.reason,
            "result": {"status": row.result_status, "bytes": row.result_bytes}
            if row.result_status is not None
            else None,
            "links": links,
        }

    def queue_status(self, now: float) -> dict[str, Any]:
        """The ``queue`` object of the status document: no job id ever appears here."""
        cfg = self.st.config
        q = cfg.admission.queue
        entries: list[dict[str, Any]] = []
        running = sorted(
            (j for j in self.live.values() if j.state == JobState.RUNNING),
            key=lambda j: j.started or 0.0,
        )
        for j in running:
            entries.append(self._entry(j, 0, now))
        for pos, w in enumerate(self.room.order(), start=1):
            job = self.live.get(w.job_id)
            if job is not None:
                entries.append(self._entry(job, pos, now))
        full = len(self.room) >= q.max_waiting
        remaining, slots, expected = self._running_remaining(now)
        return {
            "waiting": len(self.room),
            "max_waiting": q.max_waiting,
            "max_wait_seconds": q.max_wait,
            "per_client": q.per_client,
            "retry_after": retry_after_full(remaining, slots, expected) if full else None,
            "entries": entries,
        }

    def _entry(self, j: Job, position: int, now: float) -> dict[str, Any]:
        _, done_in = self._eta(j, now)
        waited = (j.started if j.started is not None else now) - j.arrived
        return {
            "position": position,
            "state": j.state,
            "route": j.route.name,
            "client": client_hash(j.client),
            "held": j.held and j.async_owners == 0,
            "waited_seconds": round(waited, 1),
            "elapsed_seconds": round(now - j.started, 1) if j.started is not None else None,
            "eta_seconds": round(done_in, 1),
            "coalesced": j.coalesced,
        }

    def jobs_status(self) -> dict[str, Any]:
        return {
            "results_bytes": self.store.results_bytes(),
            "max_bytes": self.st.config.jobs.max_bytes,
            "state_dir": str(self.state_dir),
        }

    # ------------------------------------------------------------------ following a result

    async def follow(self, job: Job) -> AsyncIterator[bytes]:
        """The result body as it is written; raises ResultBroken if the engine broke off."""
        f = None
        try:
            while True:
                ev = job.changed()
                if f is None:
                    p = self.store.result_path(job.id)
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
                    complete = job.state == JobState.DONE or (
                        job.state == JobState.FAILED and job.reason == "upstream_status"
                    )
                    if job.head is not None and not complete:
                        raise ResultBroken(job.reason or job.state)
                    if f is None and job.head is not None and job.result_bytes:
                        raise ResultBroken("result file missing")
                    return
                await ev.wait()
        finally:
            if f is not None:
                f.close()


def _multidict(pairs: list[tuple[str, str]]) -> Any:
    from multidict import CIMultiDict

    return CIMultiDict(pairs)


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with open(path, "rb") as f:  # noqa: ASYNC230 - page-cache reads, as spool.py
        while chunk := f.read(READ_CHUNK):
            yield chunk


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
