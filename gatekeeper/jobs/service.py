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
- held clients follow the result file as it grows (an SSE answer stays live); async
  clients read it later through ``jobs.api``.

A job ends in ``finish`` with one of the ``states.Endings``: the one place its final
state is stored, counted and announced. The store (``store.JobStore``) is written
synchronously on the loop, one small statement per call (bench/ measures).

Storage faults never wedge the queue (issue #18 §1): any failure of the state
directory is one ``guard.StorageError``; dispatch stores a claim before it takes
a lease (a waiter whose claim failed waits again) and releases the lease itself
until the runner task owns it (``_admit_and_start``, one and shared dispatch);
``finish`` never raises for a store that cannot write (``unsaved``: ``upkeep``).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from gatekeeper.config import Config
from gatekeeper.core.admission import Rejection
from gatekeeper.core.asyncutil import cancel_and_wait
from gatekeeper.core.lease import Lease
from gatekeeper.core.vocab import JobState
from gatekeeper.jobs import runner, upkeep
from gatekeeper.jobs.batch.book import OpenItems
from gatekeeper.jobs.dbwatch import DbWatch
from gatekeeper.jobs.deps import JobDeps
from gatekeeper.jobs.floor import STORAGE_HOLD_SECONDS, DiskFloor
from gatekeeper.jobs.guard import GuardedStore, StorageError, guarded
from gatekeeper.jobs.guests import Guest, GuestOps
from gatekeeper.jobs.head import RequestHead
from gatekeeper.jobs.model import Job, Joined, Kept, Refused, Submitted
from gatekeeper.jobs.orphans import hold_orphans
from gatekeeper.jobs.outbox import JobEvents, Silent
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.schedule import Schedule
from gatekeeper.jobs.service_handles import HandleOps
from gatekeeper.jobs.service_limits import LimitOps
from gatekeeper.jobs.service_places import PlacesOps
from gatekeeper.jobs.service_reads import ReadOps
from gatekeeper.jobs.service_shared import SharedOps
from gatekeeper.jobs.shared import Fenced
from gatekeeper.jobs.states import Ending, Endings
from gatekeeper.jobs.store import JobStore
from gatekeeper.jobs.waitroom import Waiter, WaitingRoom

log = logging.getLogger("gatekeeper.jobs")


class JobService(HandleOps, GuestOps, LimitOps, ReadOps, SharedOps, PlacesOps):
    def __init__(self, deps: JobDeps, store: JobStore, state_dir: Path, *, ephemeral: bool = False):
        self.deps = deps
        self.store = GuardedStore(store)
        self.floor = DiskFloor(state_dir)
        self.db = DbWatch(deps.metrics.state_db_rehomed.inc)  # the database file (dbwatch)
        # Jobs whose ending the store could not write yet (the tick retries; find reads them).
        self.unsaved: dict[str, Job] = {}
        self._hold_until = 0.0  # no claim before this (loop clock): the store just failed
        self._dispatching = False
        self.state_dir = state_dir
        self.ephemeral = ephemeral  # a temporary directory, removed at close
        self.spool_dir = store.bodies_dir  # request bodies spool here: saving is a rename
        # Closes the store (and removes a temporary directory) exactly once: at ``close``,
        # or when this object is collected without it (a state built but never served).
        self._release_store = weakref.finalize(
            self, upkeep.release, self.store, state_dir if ephemeral else None
        )
        self.room = WaitingRoom()
        self.schedule = Schedule(deps.gate, self.room)
        self.live: dict[str, Job] = {}
        self.guests: dict[str, Guest] = {}  # waiters that are not jobs (jobs/guests.py)
        # Each client's running jobs (at most max_in_flight in all): a submit's
        # client_limit check and Retry-After without a walk over every live job.
        self._running: dict[str, dict[str, Job]] = {}
        self._by_key: dict[str, Job] = {}
        self.batch_open = OpenItems()  # open batch items per client (issue #20 §3)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.next_evict = 0.0
        self._changed = asyncio.Event()  # any queue change (SSE positions)
        deps.gate.on_free = self.dispatch
        self.events: JobEvents = Silent()  # the webhooks, when the app sets them up
        self._shared_init(store)  # a store shared by boxes: a worker of its queue

    @property
    def config(self) -> Config:
        return self.deps.config

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Recover what a previous process left, then start the background tick."""
        deps, cfg = self.deps, self.deps.config
        now, wall = deps.clock(), deps.wall()
        hold_orphans(deps.gate, cfg.upstream, self.own_running(self.store.running()), now, wall)
        upkeep.recover(self, wall)
        router = deps.live.runtime.router
        for row in self.store.queued() if self.shared is None else ():  # shared: the queue
            route = next((r for r in cfg.routes if r.name == row.route), None)
            if route is None:  # its route was renamed or removed: match its target again
                route = router.match(row.method, row.target.split("?", 1)[0])
            self.restore(Job.from_record(row, now=now, wall=wall, route=route.name), cfg)
        if self.live:
            log.info("restored %d queued job(s) from %s", len(self.live), self.state_dir)
        self._task = asyncio.create_task(upkeep.tick(self), name="gatekeeper-jobs")
        self._shared_start()
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
        self.db.lost_at_stop(self.store.check_file, len(self.room), len(runners))
        await cancel_and_wait([t for t in runners if not t.done()])
        upkeep.save_unsaved(self)
        self._release_store()

    def drain(self) -> None:
        """SIGTERM: held waiters hear 503 draining now; async jobs stay queued on disk
        for the next start; the running job finishes."""
        for w in self.room.waiters():
            job = self.live.get(w.job_id)
            if job is not None and job.record.held and job.async_owners == 0:
                self.room.leave(job.id)
                self.finish(job, Endings.DRAINING)
        self.drain_guests()
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
        # A shared queue's limits are decided with the insert (service_limits).
        refusal = self.storage_refusal(now) or (
            self._refusal(request.client, cfg, now) if self.shared is None else None
        )
        if refusal is not None:
            return refusal
        # The body file is the job's: written for every job, an empty body too (a queued
        # job without its file is "body_lost" at the next start; issue #18 §5).
        target = self.store.body_target(request.id)
        guarded("saving the request body", lambda: save_body(target))
        wall = deps.wall()
        try:
            new = replace(request, created=wall)
            row = self.create_or_twin(new)  # a live twin on another box: service_shared
        except StorageError:
            self.store.drop_file(target)
            raise
        if isinstance(row, Refused):  # over a limit of the shared queue (service_limits)
            self.store.drop_file(target)
            return row
        if isinstance(row, Job):
            self.store.drop_file(target)
            return self.submit(request, save_body)  # attaches to it, as to a twin here
        job = Job.from_record(row, now=now, wall=wall)
        if held:
            job.followers = 1
        else:
            job.async_owners = 1
        job.predicted_done = now + self.schedule.done_in_new(now)
        handle = self._creator_handle(job)
        self._enter(job, cfg)
        self.dispatch()
        return Joined(job, coalesced=False, handle=handle)

    def refusal_before_body(self, head: RequestHead) -> Refused | None:
        """What ``submit`` refuses whatever the body; None if a body may coalesce (``head``)."""
        refusal = self._refusal(head.client, self.config, self.deps.clock())
        live = (j.record for j in self.live.values() if not j.final)
        return head.decide(refusal, self.config.jobs, live, self.store, self.deps.wall())

    def _enter(self, job: Job, cfg: Config) -> None:
        self.live[job.id] = job
        key = job.record.coalesce_key
        if key is not None:
            self._by_key[key] = job
        deadline = self.batch_open.entered(job.record, job.arrived, cfg.admission.queue.max_wait)
        self.room.join(Waiter(job.id, job.record.client, job.route, job.arrived, deadline))
        self.deps.metrics.jobs.labels(job.route, JobState.QUEUED).inc()
        self._changed_all()

    def storage_refusal(self, now: float) -> Refused | None:
        waiting = self.schedule.waiting()  # decidable from a head alone (floor, dbwatch)
        return self.floor.refusal(self.config, waiting) or self.db.refusal(self.config, waiting)

    # ------------------------------------------------------------------ dispatch

    def dispatch(self) -> None:
        """While the gate would admit, start the next fair waiter. Synchronous: called
        from the gate's release, so no arrival on an admit route can take the slot
        between a release and the queue's next job."""
        if self._closing or self._dispatching:
            return  # a release inside this loop (a failed claim) is seen by the loop itself
        self._dispatching = True
        try:
            self._dispatch() if self.shared is None else self.dispatch_shared()
        finally:
            self._dispatching = False

    def _dispatch(self) -> None:
        deps = self.deps
        while self.room:
            now = deps.clock()
            # probed_only: a job goes only to an engine a probe has seen up (a queue
            # restored while the engine is down waits for it; issue #18 §5).
            if self._held(now) or deps.gate.check(now, probed_only=True) is not None:
                return
            waiter = self.room.pop_next()
            if waiter is None:
                return
            if self._start_guest(waiter, now):  # a Gradio event, not a job (jobs/guests.py)
                continue
            job = self.live.get(waiter.job_id)
            if job is None:  # cannot happen: room and live change together
                continue
            # The engine the lease will name (nothing before try_admit changes the gate).
            engine = deps.gate.pick(now, probed_only=True)
            try:  # the claim is stored first: no slot is held while the store is asked
                wall = deps.wall()
                events = self.events.started(job, wall, engine)
                job.record = self.store.mark_running(job.id, wall, engine, events)
            except StorageError as exc:
                # Not claimed: it waits again (at its client's tail); the tick retries.
                log.error("job %s… could not start: %s", job.id[:6], exc.detail)
                self.room.join(waiter)
                self._hold_until = now + STORAGE_HOLD_SECONDS
                return
            self._admit_and_start(job, now)

    def _admit_and_start(self, job: Job, now: float) -> None:
        """Take the claimed ``job``'s slot (the gate checked in this same step), start it."""
        result = self.deps.gate.try_admit(job.route, now, probed_only=True)
        if isinstance(result, Rejection):
            self.finish(job, Endings.INTERNAL)
            return
        try:
            self._start(job, result, now)
        except BaseException as exc:
            if job.task is None:  # no runner owns the slot: it is released here, once
                job.started = job.ticket = None
                result.release()
            if not isinstance(exc, Exception):
                raise
            log.exception("job %s… could not start", job.id[:6])
            self.finish(job, Endings.INTERNAL)

    def _held(self, now: float) -> bool:
        """No claim now: the store just failed one, the database is not at its path
        (``dbwatch``), or the state directory is below its floor (until space returns)."""
        held = now < self._hold_until or self.db.detached is not None
        return held or self.floor.below(self.config.jobs.min_free_bytes)

    def _start(self, job: Job, ticket: Lease, now: float) -> None:
        deps = self.deps
        job.started, job.ticket = now, ticket
        self._running.setdefault(job.record.client, {})[job.id] = job
        deps.metrics.queue_wait.labels(job.route).observe(now - job.arrived)
        deps.metrics.jobs.labels(job.route, JobState.RUNNING).inc()
        epoch = deps.epochs.enter()  # the runner may use this epoch's pools to its end
        rt = deps.live.runtime
        task = asyncio.create_task(
            runner.run(self, job, rt.config, rt.gated_for(ticket.engine)),
            name=f"job-{job.id[:6]}",
        )

        def done(t: asyncio.Task[None]) -> None:
            deps.epochs.leave(epoch)
            if not t.cancelled() and t.exception() is not None:
                log.error("job %s… runner failed", job.id[:6], exc_info=t.exception())
                if not job.final:
                    self.finish(job, Endings.INTERNAL)
            if not job.final and not job.returned:  # cancelled before it recorded why
                self.finish(job, Endings.INTERRUPTED)

        task.add_done_callback(done)
        # The runner task holds the slot: its end, whatever it is, releases it once,
        # after ``done`` has recorded the job's ending (callbacks run in order).
        ticket.follow(task, "queue-job")
        job.task = task  # from here the task owns the lease (dispatch reads this)
        job.notify()
        self._changed_all()

    # ------------------------------------------------------------------ endings

    def finish(self, job: Job, ending: Ending, *, detail: str | None = None) -> None:
        """The job's final state: stored, counted, announced; it leaves the live set."""
        if job.final:
            return
        deps = self.deps
        now, wall = deps.clock(), deps.wall()
        try:
            events = self.events.completed(job, ending, wall)
            job.record = self.store.finish(job.id, ending.state, ending.reason, wall, events)
        except Fenced:
            self.fenced(job)  # another box owns it now (service_shared)
            return
        except StorageError as exc:
            # Not stored: whatever the engine answered, this job's result is not kept whole,
            # unless a shared store was unreachable: then it is written when it is back.
            log.error("job %s… could not be stored as %s: %s", job.id[:6], ending.state, exc.detail)
            ending = ending if self.keeps_ending(exc, ending) else Endings.STORAGE_ERROR
            job.record = replace(
                job.record, state=ending.state, reason=ending.reason, finished=wall
            )
            self.unsaved[job.id] = job
        if ending is Endings.STORAGE_ERROR:  # how full is the disk now? (dispatch reads it)
            self.floor.sample(now, self.config.jobs.min_free_bytes)
        job.ending, job.finished = ending, now
        if job.head is None:
            job.error_detail = detail
        deps.metrics.jobs.labels(job.route, ending.state).inc()
        if ending.state == JobState.DONE and job.predicted_done is not None:
            actual = now - job.arrived
            if actual > 0:
                deps.metrics.eta_error.observe(
                    abs(actual - (job.predicted_done - job.arrived)) / actual
                )
        if self.live.pop(job.id, None) is not None:
            self.batch_open.left(job.record)
        mine = self._running.get(job.record.client)
        if mine is not None and mine.pop(job.id, None) is not None and not mine:
            del self._running[job.record.client]
        key = job.record.coalesce_key
        if key is not None and self._by_key.get(key) is job:
            del self._by_key[key]
        job.notify()
        self._changed_all()
        if ending.state == JobState.DONE and self.results_bytes() > self.config.jobs.max_bytes:
            try:
                self.evict()
            except StorageError as exc:
                log.error("evicting kept results failed: %s", exc.detail)

    def evict(self) -> list[str]:
        return upkeep.evict(self)

    # ------------------------------------------------------------------ reading

    def _changed_all(self) -> None:
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()
