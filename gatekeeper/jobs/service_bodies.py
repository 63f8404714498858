"""A claimed job whose request body another box keeps (issue #21; docs/postgres.md,
"Large bodies through the relay"). The rules are ``bodyplan``'s (pure); the bytes
move through ``bodyrelay``.

The job's runner task (``runner.run``, which holds the job's slot: ``Lease.follow``)
asks ``fetch_body`` for the body file before its engine is asked. The body is
streamed from the taking box into this box's ``bodies/`` and committed only whole
(exactly its recorded ``body_size``); only then does the engine get a byte. When
the fetch fails:

- **the body may still come back** (the taking box refused, timed out, broke off,
  answered another box's 404, or this box's disk failed): the job is **given back**
  (``give_back``: queued again in its place, fenced to this box's claim), its
  partial file deleted, and this box skips that taking box's large bodies for a
  while (``bodyplan.Backoff``). The runner then returns without asking the engine;
  its task's end releases the slot, once, as for any job (``job.returned`` tells
  ``JobService._start``'s callback and the runner that the job is not over). A
  give-back the store cannot take now (it is unreachable) is kept and made again by
  the tick (``give_back_pending``);
- **it can never come back** (the taking box answers that it has no such body, or
  announces another length, or this box took the request and lost the file): the
  job ends ``body_lost``.

The taking box keeps a body while its job is queued or running anywhere: its
``recover`` keeps those files; it deletes one when it sees its job end elsewhere
(``drop_kept_body``), and its eviction sweeps the bodies of jobs that ended while it
was not watching them (``PostgresHousekeeping.evict``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from gatekeeper.jobs import bodyrelay
from gatekeeper.jobs.anybox_store import BodyStore, body_store_of
from gatekeeper.jobs.bodyplan import Backoff, Step, judge, step
from gatekeeper.jobs.deps import JobDeps
from gatekeeper.jobs.guard import GuardedStore, StorageError, guarded
from gatekeeper.jobs.model import Job
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.states import Endings

log = logging.getLogger("gatekeeper.jobs")


class BodyOps:
    """Mixed into ``JobService`` through ``SharedOps`` (which declares these)."""

    deps: JobDeps
    store: GuardedStore
    live: dict[str, Job]
    _running: dict[str, dict[str, Job]]
    _by_key: dict[str, Job]
    _foreign: set[str]
    finish: Callable[..., None]
    _changed_all: Callable[[], None]

    def _bodies_init(self, store: object) -> None:
        self.bodies: BodyStore | None = body_store_of(store)
        self._backoff = Backoff()
        self._returning: dict[str, Job] = {}  # given back, not yet stored (the store failed)
        self._body_secret: str | None = None

    def skip_bodies(self, now: float) -> None:
        """Tell the store which taking boxes' large bodies a claim leaves alone now."""
        if self.bodies is not None:
            self.bodies.skipped_bodies = self._backoff.skipped(now)

    async def fetch_body(self, job: Job) -> Path | None:
        """The body file of ``job``, claimed here, whose file is not here (module text);
        None: the job ended ``body_lost`` or was given back, and the engine is not asked."""
        bodies, me = self.bodies, None if self.bodies is None else self.bodies.box
        place = None
        if bodies is not None:
            try:
                place = guarded("body_place", lambda: bodies.body_place(job.id))
            except StorageError as exc:
                self._give_back(job, f"where its body is could not be read: {exc.detail}")
                return None
        first = step(
            body_size=job.record.body_size,
            have_file=False,
            body_box=None if place is None else place.box,
            me=me or "",
            address=None if place is None else place.address,
        )
        if first is Step.LOST:
            self._lost(job, "this box took the request and its body file is gone")
            return None
        if first is Step.GIVE_BACK or place is None or place.address is None or bodies is None:
            self._give_back(job, "the box that keeps its body registered no address")
            return None
        return await self._fetch(job, bodies, place.box, place.address)

    async def _fetch(self, job: Job, bodies: BodyStore, box: str, address: str) -> Path | None:
        started = self.deps.clock()
        try:
            if self._body_secret is None:
                self._body_secret = guarded("relay_secret", bodies.relay_secret)
            writer = self.store.body_writer(job.id)
        except StorageError as exc:
            self._backoff.failed(box, self.deps.clock())
            self._give_back(job, exc.detail)
            return None
        try:
            rid = f"body-{job.id[:6]}"
            got = await bodyrelay.fetch(address, box, job.id, self._body_secret, writer, rid)
            verdict = judge(got, job.record.body_size)
            if verdict is Step.RUN:
                try:
                    writer.commit()
                except StorageError as exc:
                    verdict = Step.GIVE_BACK
                    log.error("job %s… the fetched body: %s", job.id[:6], exc.detail)
        except asyncio.CancelledError:
            writer.abort()
            if not job.cancel_requested and not job.final:  # stopping: not run, not lost
                self._give_back(job, "this box stopped before the body arrived")
            raise
        finally:
            writer.abort()  # nothing after a commit
        took = self.deps.clock() - started
        if verdict is Step.RUN:
            self._backoff.worked(box)
            self.deps.metrics.body_fetches.labels("fetched").inc()
            log.info(
                "job %s… body of %d bytes fetched from box %s in %.3f s",
                job.id[:6],
                got.received,
                box,
                took,
            )
            return self.store.body_path(job.id)
        if verdict is Step.LOST:
            self._lost(
                job, f"box {box} answered {got.status} ({got.reason}, {got.announced} bytes)"
            )
            return None
        self._backoff.failed(box, self.deps.clock())
        why = f"box {box} at {address}: status {got.status}, {got.received} bytes in {took:.1f} s"
        self._give_back(job, why)
        return None

    def _lost(self, job: Job, why: str) -> None:
        log.error("job %s… its request body can never come back (%s): body_lost", job.id[:6], why)
        self.deps.metrics.body_fetches.labels("lost").inc()
        self.finish(job, Endings.BODY_LOST, detail=why)

    def _give_back(self, job: Job, why: str) -> None:
        """``job`` queued again in its place (module text); this box lets go of it."""
        log.warning("job %s… given back to the queue, its body not fetched: %s", job.id[:6], why)
        self.deps.metrics.body_fetches.labels("given_back").inc()
        job.returned = True
        row: JobRecord | None = None
        try:
            row = self._store_give_back(job)
        except StorageError as exc:
            log.error("job %s… give-back not stored yet: %s", job.id[:6], exc.detail)
            self._returning[job.id] = job
        self._let_go(job, row)

    def _store_give_back(self, job: Job) -> JobRecord | None:
        bodies = self.bodies
        if bodies is None:  # one box's store: nothing to give back to (never reached)
            return None
        return guarded("give_back", lambda: bodies.give_back(job.id))

    def give_back_pending(self) -> None:
        """The tick: the give-backs the store could not take when they happened."""
        for job_id, job in list(self._returning.items()):
            try:
                self._store_give_back(job)
            except StorageError:
                return  # still unreachable: the next tick tries again
            del self._returning[job_id]

    def _let_go(self, job: Job, row: JobRecord | None) -> None:
        """This box's view of a job given back: not running here; watched only if this box
        watched it before its claim (a twin of a request here)."""
        mine = self._running.get(job.record.client)
        if mine is not None and mine.pop(job.id, None) is not None and not mine:
            del self._running[job.record.client]
        if row is not None:
            job.record = row
        job.task = job.ticket = job.started = job.run_box = None
        if job.id not in self._foreign:
            self.live.pop(job.id, None)
            key = job.record.coalesce_key
            if key is not None and self._by_key.get(key) is job:
                del self._by_key[key]
        job.notify()
        self._changed_all()

    def drop_kept_body(self, job: Job) -> None:
        """``job`` ended on another box: the body this box kept for it goes (a disk that
        fails here leaves it to the eviction's sweep, ``PostgresHousekeeping.evict``)."""
        with contextlib.suppress(StorageError):
            path = self.store.body_path(job.id)
            if path is not None:
                self.store.drop_file(path)
