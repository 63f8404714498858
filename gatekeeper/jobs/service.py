"""The waiting room at work: jobs queued, dispatched onto the gate, run, kept.

Every request on a ``queue`` route becomes a job (docs/architecture.md):

- ``submit`` decides in one synchronous step: attach to an identical job
  (coalescing), replay a kept result, refuse (``client_limit`` 429,
  ``queue_full`` 503, with a Retry-After computed from the queue: ``schedule``),
  or create a job and put it in the waiting room (``waitroom.WaitingRoom``, pure);
- ``dispatch`` runs whenever a slot may have freed (the gate's ``on_free``, an
  arrival, the tick that notices resources recovered or a raised
  ``max_in_flight``): while the gate would admit, the next fair waiter gets a
  ``Lease`` and a runner task (``runner.run``); the runner task holds the lease
  (``Lease.follow``: the task's end releases it, exactly once, whatever ended it);
- held clients follow the result file as it grows, so an SSE answer stays live;
  async clients (``Prefer: respond-async``) read it later through ``jobs.api``.

A job ends in ``finish`` with one of the ``states.Endings``: the one place its
final state is stored, counted and announced. The store (``store.JobStore``)
is written synchronously on the loop: each call is one small statement in WAL
mode (microseconds; bench/ measures).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import weakref
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from gatekeeper.config import Config
from gatekeeper.core.admission import Rejection
from gatekeeper.core.asyncutil import cancel_and_wait
from gatekeeper.core.lease import Lease
from gatekeeper.core.vocab import FINAL_STATES, JobState, QueueReason
from gatekeeper.jobs import runner
from gatekeeper.jobs.deps import JobDeps
from gatekeeper.jobs.model import Job, Joined, Kept, Refused, Submitted, queue_limits
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.schedule import Schedule
from gatekeeper.jobs.service_handles import HandleOps
from gatekeeper.jobs.states import Ending, Endings
from gatekeeper.jobs.store import JobStore
from gatekeeper.jobs.waitroom import Waiter, WaitingRoom

log = logging.getLogger("gatekeeper.jobs")

# How often the background tick re-checks what no event announces: resources that
# recovered (the monitor publishes a new state), waiters past max_wait.
TICK_SECONDS = 0.25
# How often kept results are checked against jobs.keep and jobs.max_bytes.
EVICT_EVERY_SECONDS = 30.0


class JobService(HandleOps):
    def __init__(self, deps: JobDeps, store: JobStore, state_dir: Path, *, ephemeral: bool = False):
        self.deps = deps
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
        self.schedule = Schedule(deps.gate, self.room)
        self.live: dict[str, Job] = {}
        self._by_key: dict[str, Job] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._next_evict = 0.0
        self._changed = asyncio.Event()  # any queue change (SSE positions)
        deps.gate.on_free = self.dispatch

    @property
    def config(self) -> Config:
        return self.deps.config

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Recover what a previous process left, then start the background tick."""
        deps, cfg = self.deps, self.deps.config
        now, wall = deps.clock(), deps.wall()
        for row in self.store.recover(wall, cfg.jobs.retry_interrupted):
            if row.state in FINAL_STATES:
                deps.metrics.jobs.labels(row.route, row.state).inc()
                log.warning(
                    "job %s… (%s) was %s at the last stop: now %s (%s)",
                    row.id[:6],
                    row.route,
                    "running" if row.reason == Endings.INTERRUPTED.reason else "queued",
                    row.state,
                    row.reason,
                )
        router = deps.live.runtime.router
        for row in self.store.queued():
            route = next((r for r in cfg.routes if r.name == row.route), None)
            if route is None:  # its route was renamed or removed: match its target again
                route = router.match(row.method, row.target.split("?", 1)[0])
            self.restore(Job.from_record(row, now=now, wall=wall, route=route.name), cfg)
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
            if job is not None and job.record.held and job.async_owners == 0:
                self.room.leave(job.id)
                self.finish(job, Endings.DRAINING)
        self._changed_all()

    # ------------------------------------------------------------------ arrivals

    def submit(self, request: JobRecord, save_body: Callable[[Path], None]) -> Submitted:
        """One arrival (``request``: a new record, ``created`` stamped here), decided in
        one synchronous step (see the module text)."""
        deps, cfg = self.deps, self.deps.config
        now = deps.clock()
        held, key, route = request.held, request.coalesce_key, request.route
        if key is not None and cfg.jobs.coalesce:
            twin = self._by_key.get(key)
            if twin is not None and not twin.final:
                twin.record = replace(twin.record, coalesced=self.store.add_coalesced(twin.id))
                deps.metrics.coalesced.labels(route).inc()
                if held:
                    twin.followers += 1
                else:
                    twin.async_owners += 1
                self._changed_all()
                return Joined(twin, coalesced=True, handle=self._new_handle(twin, request))
            kept = self.store.find_coalesce(key, deps.wall(), cfg.jobs.keep)
            if kept is not None and kept.state == JobState.DONE:
                self.store.add_coalesced(kept.id)  # the answer shows the count it found
                deps.metrics.coalesced.labels(route).inc()
                job = Job.from_record(kept, now=now, wall=deps.wall())
                return Kept(job, handle=self._new_handle(job, request, holds=False))
        refusal = self._refusal(request.client, cfg, now)
        if refusal is not None:
            return refusal
        if request.body_size:
            save_body(self.store.body_target(request.id))
        wall = deps.wall()
        job = Job.from_record(self.store.create(replace(request, created=wall)), now=now, wall=wall)
        if held:
            job.followers = 1
        else:
            job.async_owners = 1
        job.predicted_done = now + self.schedule.done_in_new(now)
        handle = self._creator_handle(job)
        self._enter(job, cfg)
        self.dispatch()
        return Joined(job, coalesced=False, handle=handle)

    def _enter(self, job: Job, cfg: Config) -> None:
        self.live[job.id] = job
        key = job.record.coalesce_key
        if key is not None:
            self._by_key[key] = job
        deadline = job.arrived + cfg.admission.queue.max_wait
        self.room.join(Waiter(job.id, job.record.client, job.route, job.arrived, deadline))
        self.deps.metrics.jobs.labels(job.route, JobState.QUEUED).inc()
        self._changed_all()

    def _refusal(self, client: str, cfg: Config, now: float) -> Refused | None:
        limits = queue_limits(cfg)
        running = sum(
            1
            for j in self.live.values()
            if j.record.client == client and j.state == JobState.RUNNING
        )
        free_now = not self.room and self.deps.gate.check(now) is None
        reason = self.room.refusal(client, running, limits)
        if reason == QueueReason.QUEUE_FULL and free_now:
            reason = None  # max_waiting 0: no one waits, but a free slot still serves
        if reason is None:
            return None
        fields = Refused.fields_of(cfg, len(self.room))
        if reason == QueueReason.CLIENT_LIMIT:
            mine = [j for j in self.live.values() if j.record.client == client]
            return Refused(reason, 429, self.schedule.retry_after_client(mine, now), fields)
        retry_after = self.schedule.retry_after_full(now)
        return Refused(reason, cfg.admission.reject_status, retry_after, fields)

    # ------------------------------------------------------------------ dispatch

    def dispatch(self) -> None:
        """While the gate would admit, start the next fair waiter. Synchronous: called
        from the gate's release, so no arrival on an admit route can take the slot
        between a release and the queue's next job."""
        if self._closing:
            return
        deps = self.deps
        while self.room:
            now = deps.clock()
            if deps.gate.check(now) is not None:
                return
            waiter = self.room.pop_next()
            if waiter is None:
                return
            job = self.live.get(waiter.job_id)
            if job is None:  # cannot happen: room and live change together
                continue
            result = deps.gate.try_admit(job.route, now)
            if isinstance(result, Rejection):  # cannot happen: checked just above
                self.room.join(waiter)
                return
            self._start(job, result, now)

    def _start(self, job: Job, ticket: Lease, now: float) -> None:
        deps = self.deps
        job.started, job.ticket = now, ticket
        job.record = self.store.mark_running(job.id, deps.wall())
        deps.metrics.queue_wait.labels(job.route).observe(now - job.arrived)
        deps.metrics.jobs.labels(job.route, JobState.RUNNING).inc()
        epoch = deps.epochs.enter()  # the runner may use this epoch's pools to its end
        rt = deps.live.runtime
        task = asyncio.create_task(
            runner.run(self, job, rt.config, rt.gated_for(ticket.engine)),
            name=f"job-{job.id[:6]}",
        )
        job.task = task

        def done(t: asyncio.Task[None]) -> None:
            deps.epochs.leave(epoch)
            if not t.cancelled() and t.exception() is not None:
                log.error("job %s… runner failed", job.id[:6], exc_info=t.exception())
                if not job.final:
                    self.finish(job, Endings.INTERNAL)
            if not job.final:  # cancelled before it could record why
                self.finish(job, Endings.INTERRUPTED)

        task.add_done_callback(done)
        # The runner task holds the slot: its end, whatever it is, releases it once,
        # after ``done`` has recorded the job's ending (callbacks run in order).
        ticket.follow(task, "queue-job")
        job.notify()
        self._changed_all()

    # ------------------------------------------------------------------ endings

    def finish(self, job: Job, ending: Ending, *, detail: str | None = None) -> None:
        """The job's final state: stored, counted, announced; it leaves the live set."""
        if job.final:
            return
        deps = self.deps
        now = deps.clock()
        job.ending, job.finished = ending, now
        if job.head is None:
            job.error_detail = detail
        job.record = self.store.finish(job.id, ending.state, ending.reason, deps.wall())
        deps.metrics.jobs.labels(job.route, ending.state).inc()
        if ending.state == JobState.DONE and job.predicted_done is not None:
            actual = now - job.arrived
            if actual > 0:
                deps.metrics.eta_error.observe(
                    abs(actual - (job.predicted_done - job.arrived)) / actual
                )
        self.live.pop(job.id, None)
        key = job.record.coalesce_key
        if key is not None and self._by_key.get(key) is job:
            del self._by_key[key]
        job.notify()
        self._changed_all()
        if (
            ending.state == JobState.DONE
            and self.store.results_bytes() > self.config.jobs.max_bytes
        ):
            self.evict()

    def expire_waiters(self, now: float) -> None:
        for w in self.room.expire(now):
            job = self.live.get(w.job_id)
            if job is None:
                continue
            self.deps.counters.rejection(job.route, QueueReason.QUEUE_TIMEOUT)
            log.info(
                "job %s… waited %.0fs (admission.queue.max_wait) without a slot: queue_timeout",
                job.id[:6],
                now - job.arrived,
            )
            self.finish(job, Endings.QUEUE_TIMEOUT)

    def detach(self, job: Job, handle: str | None = None) -> None:
        """A held client of ``job`` (its ``handle``) is gone (disconnected, or stopped reading)."""
        job.followers = max(0, job.followers - 1)
        if handle is not None:
            job.holders.discard(handle)
        if job.wanted or job.final:
            return
        if job.state == JobState.QUEUED:
            self.room.leave(job.id)
            self.finish(job, Endings.CLIENT_GONE)
        elif (
            job.state == JobState.RUNNING
            and self.config.admission.on_client_disconnect == "cancel"
            and job.task is not None
        ):
            job.task.cancel(msg="client disconnected")
        # finish mode: the engine keeps computing; its answer is kept as the job's result

    def delete(self, job: Job) -> None:
        """DELETE: queued -> removed; running -> per on_client_disconnect."""
        if job.state == JobState.QUEUED:
            self.room.leave(job.id)
            self.finish(job, Endings.DELETED_WAITING)
            self.dispatch()
        elif job.state == JobState.RUNNING and not job.cancel_requested:
            job.cancel_requested = True
            if self.config.admission.on_client_disconnect == "cancel" and job.task is not None:
                job.task.cancel(msg="job deleted")
            job.notify()
            self._changed_all()

    def evict(self) -> list[str]:
        cfg = self.config.jobs
        expired = self.store.evict(self.deps.wall(), cfg.keep, cfg.max_bytes)
        for job_id in expired:
            row = self.store.get(job_id)
            if row is not None:
                self.deps.metrics.jobs.labels(row.route, JobState.EXPIRED).inc()
        if expired:
            log.info("expired %d kept result(s) (jobs.keep / jobs.max_bytes)", len(expired))
        return expired

    # ------------------------------------------------------------------ the background tick

    async def _tick(self) -> None:
        while True:
            now = self.deps.clock()
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

    def find(self, job_id: str) -> Job | None:
        """The job: live here, else read back from the store; None if there is no such job."""
        live = self.live.get(job_id)
        if live is not None:
            return live
        row = self.store.get(job_id)
        if row is None:
            return None
        return Job.from_record(row, now=self.deps.clock(), wall=self.deps.wall())


def _release(store: JobStore, temporary: Path | None) -> None:
    store.close()
    if temporary is not None:
        shutil.rmtree(temporary, ignore_errors=True)
