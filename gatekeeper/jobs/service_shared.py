"""The service as a worker of a queue shared by several boxes (issue #21; docs/postgres.md).

With a shared store (``shared.SharedQueue``: ``jobs.store: postgres``) every box
is a worker of one waiting room, held in the database (a pull model):

- **claims**: while the gate would admit here (an engine of this box has a free
  slot and this box's CPU/memory/PSI/GPU checks pass), ``dispatch`` takes the
  next job of the whole queue with the store's ``claim_next`` (the fairness rule
  over every box's jobs, one statement with ``SKIP LOCKED``) and runs it, whoever
  took the request. No box is handed work it cannot start.
- **wake-up**: a claim is tried at once when a slot of this box frees (the gate's
  ``on_free``), when a job arrives here, when the store notifies that a job was
  queued anywhere (``LISTEN``), once after the listening connection (re)connects,
  and every ``POLL_SECONDS`` while a slot stays free (the fallback for a lost
  notification).
- **the room is a view**: this box's waiting room holds only the jobs it took
  (their held clients and positions) and its Gradio guests; another box may run
  them. Every ``POLL_SECONDS`` the jobs this box watches but does not run are read
  back (``service_watched``): claimed elsewhere, queued again after running
  elsewhere, or ended elsewhere, this box's view follows the database. Positions,
  ETAs and the limits are the whole queue's, not the room's (``service_places``,
  ``service_limits``).
- **heartbeats and the lease**: every ``jobs.lease / 3`` the tick (on this loop:
  a wedged box stops beating) asks the store to stamp the box and its running jobs
  (fire and forget: run on the store's thread, never waited for); every
  ``jobs.lease / 2`` it asks for the sweep of boxes silent longer than
  ``jobs.lease``, but only once this box's own beats have succeeded for a whole
  lease (after an outage of the database every box is "silent": none is swept
  before the others had a lease to beat again).
- **fencing**: a beat answers which jobs the database still has running here; a
  job of ours missing there was swept while this box was away: its generation is
  stopped and its result discarded (the store's runner writes are fenced too:
  ``shared.Fenced``).
- **coalescing across boxes**: ``create`` refused as a ``LiveTwin`` (the
  database's unique key over live jobs): the request attaches to that job as to a
  twin on this box (``attach_twin``), with the same identity rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from gatekeeper.config import Config
from gatekeeper.core.vocab import FINAL_STATES
from gatekeeper.jobs.deps import JobDeps
from gatekeeper.jobs.floor import STORAGE_HOLD_SECONDS
from gatekeeper.jobs.guard import GuardedStore, StorageError, guarded
from gatekeeper.jobs.model import Job, Refused
from gatekeeper.jobs.outbox import JobEvents
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.service_bodies import BodyOps
from gatekeeper.jobs.service_watched import WatchedOps
from gatekeeper.jobs.shared import LiveTwin, SharedQueue, Where
from gatekeeper.jobs.states import Ending, Endings
from gatekeeper.jobs.waitroom import WaitingRoom

log = logging.getLogger("gatekeeper.jobs")

# A box with a free slot claims unprompted, and reads back the jobs it watches, this often.
POLL_SECONDS = 1.0


class SharedOps(BodyOps, WatchedOps):
    """Mixed into ``JobService`` (which provides the attributes declared here)."""

    deps: JobDeps
    store: GuardedStore
    room: WaitingRoom
    live: dict[str, Job]
    unsaved: dict[str, Job]
    events: JobEvents
    _by_key: dict[str, Job]
    _running: dict[str, dict[str, Job]]
    _hold_until: float
    _closing: bool
    _held: Callable[[float], bool]
    _admit_and_start: Callable[[Job, float], None]
    _start_guest: Callable[..., bool]
    _changed_all: Callable[[], None]
    finish: Callable[..., None]
    dispatch: Callable[[], None]
    _create: Callable[[JobRecord], JobRecord | Refused]  # service_limits
    places_tick: Callable[[float], None]
    _places_init: Callable[[], None]

    def _shared_init(self, store: object) -> None:
        self.shared: SharedQueue | None = store if isinstance(store, SharedQueue) else None
        self._polled = 0.0  # the last claim that found nothing (loop clock)
        self._synced = self._beat_at = self._sweep_at = 0.0
        self._beat_ok_since: float | None = None  # beats succeeding since (loop clock)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Jobs another box took that this box watches (a twin attached to across boxes):
        # their holders are not all here, so nothing here cancels them (``owns``).
        self._foreign: set[str] = set()
        self._places_init()
        self._bodies_init(store)  # large bodies another box keeps (service_bodies)

    def owns(self, job: Job) -> bool:
        """This box took ``job`` (its held clients and handles are here): a held client
        gone or a DELETE may end it. Another box's job is that box's to end."""
        return job.id not in self._foreign

    def _shared_start(self) -> None:
        """Listen for queued jobs (each notification schedules a claim here)."""
        if self.shared is None:
            return
        self._loop = asyncio.get_running_loop()
        self.shared.watch(lambda: self._soon(self.dispatch))  # dispatch: one at a time

    def _soon(self, fn: Callable[..., None], *args: object) -> None:
        """``fn(*args)`` on the service's loop, from the store's thread."""
        loop = self._loop
        if loop is not None and not self._closing:
            with contextlib.suppress(RuntimeError):  # the loop closed under us: we stop
                loop.call_soon_threadsafe(fn, *args)

    def own_running(self, running: list[JobRecord]) -> list[JobRecord]:
        """Of the store's running jobs, those this box runs (the others are other boxes')."""
        if self.shared is None or not running:
            return running
        box = self.shared.box
        mine = {w.record.id for w in self._where([r.id for r in running]) if w.run_box == box}
        return [r for r in running if r.id in mine]

    def _where(self, ids: list[str], *, queued: bool = True) -> list[Where]:
        """``SharedQueue.where``, its faults as ``StorageError`` (as the guarded store's)."""
        shared = self.shared
        assert shared is not None
        return guarded("where", lambda: shared.where(ids, queued=queued))

    # ------------------------------------------------------------------ claims

    def dispatch_shared(self) -> None:
        if self._closing or self._loop is None:
            return  # not before ``start`` recovered this box's jobs
        deps = self.deps
        while True:
            now = deps.clock()
            if self._held(now) or deps.gate.check(now, probed_only=True) is not None:
                return
            first = self.room.first(1)
            if first and self._start_guest_first(first[0].job_id, now):
                continue
            engine = deps.gate.pick(now, probed_only=True)
            wall = deps.wall()
            self.skip_bodies(now)
            try:
                row = self.store.claim_next(wall, engine)
            except StorageError as exc:
                log.error("claiming the next job failed: %s", exc.detail)
                self._hold_until = now + STORAGE_HOLD_SECONDS
                return
            if row is None:
                self._polled = now
                return
            job = self._claimed(row, now, wall)
            self._announce_started(job, wall, engine)
            self._admit_and_start(job, now)

    def _start_guest_first(self, waiter_id: str, now: float) -> bool:
        """A Gradio guest at the head of this box's room runs here before a claim."""
        if waiter_id in self.live:
            return False
        waiter = self.room.pop_next()
        return waiter is not None and self._start_guest(waiter, now)

    def _claimed(self, row: JobRecord, now: float, wall: float) -> Job:
        """The local job of a claimed record: this box's own (it leaves the room), or one
        another box took (built here: it is live on this box while it runs)."""
        job = self.live.get(row.id)
        if job is not None:
            self.room.leave(job.id)
            job.record = row
        else:
            job = Job.from_record(row, now=now, wall=wall, route=self._route_of(row))
            self.live[job.id] = job
            if row.coalesce_key is not None:
                self._by_key[row.coalesce_key] = job
        job.run_box = self.shared.box if self.shared is not None else None
        job.returned = False  # a watched twin given back once may be claimed again
        return job

    def _route_of(self, row: JobRecord) -> str:
        cfg: Config = self.deps.config
        if any(r.name == row.route for r in cfg.routes):
            return row.route
        route = self.deps.live.runtime.router.match(row.method, row.target.split("?", 1)[0])
        return row.route if route is None else route.name

    def _announce_started(self, job: Job, wall: float, engine: str | None) -> None:
        """job.started: written after the claim (``claim_next`` takes no deliveries)."""
        events = list(self.events.started(job, wall, engine))
        if events:
            try:
                self.store.outbox_add(events)
            except StorageError as exc:
                log.error("job %s… job.started not written: %s", job.id[:6], exc.detail)

    # ------------------------------------------------------------------ coalescing

    def create_or_twin(self, record: JobRecord) -> JobRecord | Job | Refused:
        """``create`` (with a shared store under the whole queue's limits:
        ``service_limits``); or, refused as a ``LiveTwin`` (another box's live job has its
        key), that job, watched here for the request to attach to. A twin that ended
        between the two leaves its key free: created then (a few tries, then the
        refusal as it is)."""
        for _ in range(2):
            try:
                return self._create(record)
            except LiveTwin as exc:
                twin = self.attach_twin(exc.key)
                if twin is not None:
                    return twin
        return self._create(record)

    def attach_twin(self, key: str) -> Job | None:
        """The live job with ``key`` on any box, watched here (None: it just ended)."""
        deps = self.deps
        try:
            row = self.store.find_coalesce(key, deps.wall(), 0.0)
        except StorageError:
            return None
        if row is None or row.state in FINAL_STATES:
            return None
        job = self.live.get(row.id)
        if job is None:
            job = Job.from_record(
                row, now=deps.clock(), wall=deps.wall(), route=self._route_of(row)
            )
            self._follow(job, row)
            self.live[job.id] = job
            self._foreign.add(job.id)
        self._by_key[key] = job
        return job

    # ------------------------------------------------------------------ the tick

    def shared_tick(self, now: float) -> None:
        """The tick's step with a shared store (module text): beat, sweep, read back the
        watched jobs, and claim when a slot stayed free for ``POLL_SECONDS``."""
        if self.shared is None:
            return
        lease = self.deps.config.jobs.lease
        if now >= self._beat_at:
            self._beat_at = now + lease / 3
            sent = {j.id for js in self._running.values() for j in js.values()}
            self.shared.beat(lambda ids: self._soon(self._beaten, sent, ids))
        if now >= self._sweep_at:
            self._sweep_at = now + lease / 2
            ok = self._beat_ok_since
            if ok is not None and now - ok >= lease:
                retry = self.deps.config.jobs.retry_interrupted
                wait = self.deps.config.admission.queue.max_wait  # large bodies' box: gone
                self.shared.sweep(
                    lease, retry, self.deps.wall(), lambda rows: self._soon(self._swept, rows), wait
                )
        if now - self._synced >= POLL_SECONDS:
            self._synced = now
            self.sync_watched()
        if self._returning:
            self.give_back_pending()
        if now - self._polled >= POLL_SECONDS:
            self.dispatch()
        self.places_tick(now)  # the whole queue's places (service_places)

    def _beaten(self, sent: set[str], ids: set[str] | None) -> None:
        now = self.deps.clock()
        if ids is None:
            self._beat_ok_since = None
            return
        if self._beat_ok_since is None:
            self._beat_ok_since = now
        for job_id in sent - ids:  # running here when the beat left, not in the database
            job = self.live.get(job_id)
            if job is not None and not job.final and job.task is not None:
                log.warning(
                    "job %s… was taken from this box (its lease lapsed: jobs.lease):"
                    " this generation stops and its result is discarded",
                    job_id[:6],
                )
                job.task.cancel()

    def _swept(self, rows: list[JobRecord] | None) -> None:
        for row in rows or ():
            if row.state in FINAL_STATES:
                self.events.recovered(row)
                self.deps.metrics.jobs.labels(row.route, row.state).inc()
            log.warning(
                "job %s… (%s) was on a box silent for over jobs.lease: now %s (%s)",
                row.id[:6],
                row.route,
                row.state,
                row.reason,
            )

    def fenced(self, job: Job) -> None:
        """A write of ``job``'s ending was refused: another box owns it now.

        Ran here (a generation of this box, swept while the box was away): the
        generation is over for this box, its result file deleted, and the job ends
        *here* (interrupted, or as stored if it ended there) without a write: the
        database may have queued it again or given it to another box, which this box
        must never end (the runner task's own end would otherwise try to). Not run here
        (this box's view lagged: another box claimed it a moment ago): followed as it is.
        """
        found: list[Where] = []
        with contextlib.suppress(StorageError):
            found = self._where([job.id])
        if job.task is None:
            if found:
                self._moved(job, found[0])
            return
        log.warning(
            "job %s… was taken from this box (its lease lapsed: jobs.lease): its"
            " result here is discarded",
            job.id[:6],
        )
        path = self.store.result_path(job.id)
        if path is not None:
            self.store.drop_file(path)
        mine = self._running.get(job.record.client)
        if mine is not None and mine.pop(job.id, None) is not None and not mine:
            del self._running[job.record.client]
        if found and found[0].record.state in FINAL_STATES:
            self._follow(job, found[0].record)
        else:
            job.ending = Endings.INTERRUPTED
        self._ended_elsewhere(job)
        job.notify()
        self._changed_all()

    def keeps_ending(self, exc: StorageError, ending: Ending) -> bool:
        """The store was unreachable when ``ending`` was to be written: with a shared store
        the ending is kept and written when the store is back (the tick), never lost."""
        return (
            self.shared is not None
            and exc.reason == "store_unavailable"
            and (ending is not Endings.STORAGE_ERROR)
        )
