"""The waiting room at work: jobs queued, dispatched onto the gate, run, kept.

Every request on a ``queue`` route becomes a job (docs/waiting-room.md):

- ``submit`` decides in one synchronous step: attach to an identical job
  (coalescing), replay a kept result, refuse (``client_limit`` 429,
  ``queue_full`` 503, with a Retry-After computed from the queue), or create a
  job and put it in the waiting room (``waitroom.WaitingRoom``, pure);
- ``dispatch`` runs whenever a slot may have freed (the gate's ``on_free``, an
  arrival, the tick that notices resources recovered or a raised
  ``max_in_flight``): while the gate would admit, the next fair waiter gets a
  ``Lease`` and a runner task;
- the runner streams the job's body file to the engine and the engine's answer
  into the job's result file; the runner task holds the lease (``Lease.follow``:
  the task's end releases it, exactly once, whatever ended the task);
- held clients (the frontend, unchanged) follow the result file as it grows,
  so an SSE answer stays live; async clients (``Prefer: respond-async``) read
  it later through ``jobsapi``.

The store (``jobstore``, SQLite + files) is written synchronously on the loop:
each call is one small statement in WAL mode (microseconds; bench/ measures).
"""

from __future__ import annotations

import asyncio
import logging
import math
import shutil
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gatekeeper.config import Config, Route
from gatekeeper.core.admission import Rejection
from gatekeeper.core.asyncutil import cancel_and_wait
from gatekeeper.core.lease import Lease
from gatekeeper.core.vocab import FINAL_STATES, JobState, QueueReason
from gatekeeper.jobs import runner as jobrunner
from gatekeeper.jobs.model import Job, Joined, Kept, Refused, Submitted, queue_limits
from gatekeeper.jobs.store import JobRow, JobStore
from gatekeeper.jobs.waitroom import (
    Waiter,
    WaitingRoom,
    eta_for,
    retry_after_client,
    retry_after_full,
    retry_after_timeout,
    start_delays,
)

if TYPE_CHECKING:  # the wiring's state until this module takes a Protocol of its own
    from gatekeeper.app.state import AppState

__all__ = ["Job", "Jobs", "Joined", "Kept", "Refused", "Submitted"]

log = logging.getLogger("gatekeeper.jobs")

# How often the background tick re-checks what no event announces: resources that
# recovered (the monitor publishes a new state), waiters past max_wait.
TICK_SECONDS = 0.25
# How often kept results are checked against jobs.keep and jobs.max_bytes.
EVICT_EVERY_SECONDS = 30.0


class Jobs:
    def __init__(self, st: AppState, store: JobStore, state_dir: Path, *, ephemeral: bool = False):
        self.st = st
        self.store = store
        self.state_dir = state_dir
        self.ephemeral = ephemeral  # a temporary directory, removed at close
        self.spool_dir = store.bodies_dir  # request bodies spool here: saving is a rename
        # Closes the store (and removes a temporary directory) exactly once: at ``close``,
        # or when this object is collected without it (a state built but never served).
        self._release_store = weakref.finalize(
            self, _release, store, state_dir if ephemeral else None
        )
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

    @property
    def closing(self) -> bool:
        return self._closing

    async def close(self) -> None:
        """Stop: runners still going are cancelled (their jobs end ``interrupted``)."""
        self._closing = True
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        runners = [j.task for j in self.live.values() if j.task is not None]
        await cancel_and_wait([t for t in runners if not t.done()])
        self._release_store()

    def drain(self) -> None:
        """SIGTERM: held waiters hear 503 draining now; async jobs stay queued on disk
        for the next start; the running job finishes."""
        for w in self.room.waiters():
            job = self.live.get(w.job_id)
            if job is not None and job.held and job.async_owners == 0:
                self.room.leave(job.id)
                self.finish(job, JobState.CANCELLED, "draining", status=503)
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
            done_in = [self.eta(j, now)[1] for j in mine]
            return Refused(reason, 429, retry_after_client(done_in), fields)
        remaining, slots, expected = self.running_remaining(now)
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

    def _start(self, job: Job, ticket: Lease, now: float) -> None:
        st = self.st
        job.state, job.started, job.ticket = JobState.RUNNING, now, ticket
        wait = now - job.arrived
        st.metrics.queue_wait.labels(job.route.name).observe(wait)
        st.metrics.jobs.labels(job.route.name, JobState.RUNNING).inc()
        self.store.mark_running(job.id, time.time())
        epoch = st.usage.enter()  # the runner may use this epoch's pools to its end
        rt = st.runtime
        task = asyncio.create_task(
            jobrunner.run(self, job, rt.config, rt.gated_for(ticket.engine)),
            name=f"job-{job.id[:6]}",
        )
        job.task = task

        def done(t: asyncio.Task[None]) -> None:
            st.usage.leave(epoch)
            if not t.cancelled() and t.exception() is not None:
                log.error("job %s… runner failed", job.id[:6], exc_info=t.exception())
                if not job.final:
                    self.finish(job, JobState.FAILED, "internal", status=500)
            if not job.final:  # cancelled before it could record why
                self.finish(job, JobState.FAILED, "interrupted", status=503)

        task.add_done_callback(done)
        # The runner task holds the slot: its end, whatever it is, releases it once,
        # after ``done`` has recorded the job's ending (callbacks run in order).
        ticket.follow(task, "queue-job")
        job.notify()
        self._changed_all()

    # ------------------------------------------------------------------ endings

    def finish(
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
            self.finish(job, JobState.FAILED, QueueReason.QUEUE_TIMEOUT, status=503)

    def detach(self, job: Job) -> None:
        """A held client of ``job`` is gone (disconnected, or it stopped reading)."""
        job.followers = max(0, job.followers - 1)
        if job.wanted or job.final:
            return
        if job.state == JobState.QUEUED:
            self.room.leave(job.id)
            self.finish(job, JobState.CANCELLED, "client_gone", status=499)
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
            self.finish(job, JobState.CANCELLED, "deleted", status=409)
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

    def running_remaining(self, now: float) -> tuple[list[float], int, float]:
        gate = self.st.gate
        expected = gate.estimator.expected
        remaining = [max(0.0, expected - e) for e in gate.elapsed(now)]
        return remaining, gate.limits.max_in_flight, expected

    def eta(self, job: Job, now: float) -> tuple[float, float]:
        """(starts_in, done_in) seconds for a live job."""
        remaining, slots, expected = self.running_remaining(now)
        if job.state == JobState.RUNNING:
            assert job.started is not None
            return 0.0, max(0.0, expected - (now - job.started))
        pos = self.room.position(job.id)
        if pos is None:
            return 0.0, 0.0
        return eta_for(pos, remaining, slots, expected)

    def _eta_new(self, now: float) -> float:
        """Done-in for a job joining the end of the queue now."""
        remaining, slots, expected = self.running_remaining(now)
        if not self.room and len(remaining) < slots and self.st.gate.check(now) is None:
            return expected
        starts = start_delays(remaining, slots, len(self.room) + 1, expected)
        return starts[-1] + expected

    def retry_after_timeout(self, now: float) -> int:
        remaining, slots, expected = self.running_remaining(now)
        return retry_after_timeout(remaining, slots, len(self.room), expected)


def _release(store: JobStore, temporary: Path | None) -> None:
    store.close()
    if temporary is not None:
        shutil.rmtree(temporary, ignore_errors=True)
