"""The waiting room's limits: ``per_client`` (429 ``client_limit``) and ``max_waiting``
(503 ``queue_full``), each refusal with an honest Retry-After (``schedule``).

Mixed into ``JobService``, which provides the attributes declared here.

- **One box** (SQLite): the room is the whole queue; the limits are decided over it
  and this box's running jobs in the synchronous step of ``submit`` (nothing can
  arrive in between), batch items outside both (``batch.book``).
- **A queue several boxes share** (issue #21, ``jobs.store: postgres``): the limits
  hold over every box's jobs. ``submit`` leaves the decision to the store's
  ``create_limited``, which counts and inserts in one transaction serialised per
  queue (``postgres.sql_places``): a client at ``per_client`` on box A is refused on
  box B, and ``max_waiting`` counts every box's queued jobs, exactly, however the
  boxes race. A refusal from the request's head (``refusal_before_body``) and a
  Gradio guest's are decided by the same rule (``places.refusal``) over the counts
  as stored a moment before (``standing``, no lock: nothing is inserted). This box's
  waiting guests (never stored) count on this box only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from gatekeeper.config import Config
from gatekeeper.core.admission import Gate
from gatekeeper.core.vocab import QueueReason
from gatekeeper.jobs.batch.book import OpenItems
from gatekeeper.jobs.deps import JobDeps
from gatekeeper.jobs.guard import GuardedStore, guarded
from gatekeeper.jobs.guests import Guest
from gatekeeper.jobs.model import Job, Refused, queue_limits
from gatekeeper.jobs.outbox import JobEvents
from gatekeeper.jobs.places import refusal
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.schedule import Schedule, retry_after_client
from gatekeeper.jobs.shared import Limits, OverLimit, SharedQueue, Standing
from gatekeeper.jobs.waitroom import Waiter, WaitingRoom, eta_for


class LimitOps:
    """Mixed into ``JobService`` (module text)."""

    deps: JobDeps
    room: WaitingRoom
    schedule: Schedule
    guests: dict[str, Guest]
    batch_open: OpenItems
    shared: SharedQueue | None
    _running: dict[str, dict[str, Job]]
    retry_after_client: Callable[[Waiter | None, dict[str, Job], float], int]
    store: GuardedStore
    events: JobEvents
    place_soon: Callable[[], None]

    def _refusal(self, client: str, cfg: Config, now: float) -> Refused | None:
        """Why a new entry of ``client`` may not wait now (None: it may)."""
        if self.shared is not None:
            return self._shared_refusal(client, cfg, now)
        limits = queue_limits(cfg)
        mine = self._running.get(client, {})
        running_jobs = (j.record for js in self._running.values() for j in js.values())
        running, limits = self.batch_open.exempt(client, len(mine), limits, running_jobs)
        free_now = not self.room and self.deps.gate.check(now, probed_only=True) is None
        reason = self.room.refusal(client, running, limits)
        if reason == QueueReason.QUEUE_FULL and free_now:
            reason = None  # max_waiting 0: no one waits, but a free slot still serves
        if reason is None:
            return None
        fields = Refused.fields_of(cfg, len(self.room))
        if reason == QueueReason.CLIENT_LIMIT:
            # The earliest of the client's jobs to be done: a running one, or its
            # first waiter (the others of its queue start after that one).
            retry_after = self.retry_after_client(self.room.first_of(client), mine, now)
            return Refused(reason, 429, retry_after, fields)
        retry_after = self.schedule.retry_after_full(now)
        return Refused(reason, cfg.admission.reject_status, retry_after, fields)

    def _shared_refusal(self, client: str, cfg: Config, now: float) -> Refused | None:
        """``_refusal`` over every box's jobs as stored now (no lock: nothing is inserted;
        ``create_limited`` decides a submit's again, exactly)."""
        cap = cfg.admission.queue.max_waiting + 1  # enough to decide (sql_places.COUNTS)
        standing = guarded("standing", lambda: self._shared().standing(client, cap))
        limits = self.shared_limits(client, cfg, now)
        counts = replace(standing.counts, client_guests=limits.client_guests, guests=limits.guests)
        reason = refusal(counts, limits.per_client, limits.max_waiting, limits.free_here)
        if reason is None:
            return None
        return self.over_limit(OverLimit(reason, replace(standing, counts=counts)), cfg, now)

    def _shared(self) -> SharedQueue:
        shared = self.shared
        assert shared is not None
        return shared

    def shared_limits(self, client: str, cfg: Config, now: float) -> Limits:
        """The limits a new job of ``client`` is admitted under over every box's jobs,
        with this box's guests and whether it has a free slot (``shared.Limits``)."""
        q = cfg.admission.queue
        gate: Gate = self.deps.gate
        return Limits(
            per_client=q.per_client,
            max_waiting=q.max_waiting,
            free_here=gate.check(now, probed_only=True) is None,
            client_guests=sum(1 for g in self.guests.values() if g.client == client),
            guests=len(self.guests),
        )

    def _create(self, record: JobRecord) -> JobRecord | Refused:
        """The store's ``create``; with a shared store its ``create_limited`` (module
        text), a refusal as a ``Refused``, and a read of the new job's place soon."""
        events = self.events.queued(record)
        shared = self.shared
        if shared is None:
            return self.store.create(record, events)
        cfg, now = self.deps.config, self.deps.clock()
        limits = self.shared_limits(record.client, cfg, now)
        try:
            row = guarded("create", lambda: shared.create_limited(record, events, limits))
        except OverLimit as exc:
            return self.over_limit(exc, cfg, now)
        self.place_soon()  # its place in the whole queue (service_places)
        return row

    def over_limit(self, exc: OverLimit, cfg: Config, now: float) -> Refused:
        """The answer to a refusal over every box's jobs: the whole queue's figures in its
        message, and a Retry-After from the client's own jobs (``client_limit``: when the
        earliest of them is done, running anywhere or first in its queue) or from the
        whole queue (``queue_full``: when its first waiter starts)."""
        counts = exc.standing.counts
        # Counted up to what the decision needed: the last read's figure when larger.
        picture = self.schedule.picture
        waiting = max(counts.waiting, 0 if picture is None else picture.waiting)
        fields = Refused.fields_of(cfg, waiting + counts.guests)
        if exc.reason == QueueReason.CLIENT_LIMIT:
            return Refused(exc.reason, 429, self._client_retry(exc.standing, now), fields)
        retry_after = self.schedule.retry_after_full(now)
        return Refused(exc.reason, cfg.admission.reject_status, retry_after, fields)

    def _client_retry(self, standing: Standing, now: float) -> int:
        remaining, slots, expected = self.schedule.running_remaining(now)
        done_in = [max(0.0, expected - e) for e in standing.running]
        first = standing.first_queued
        if first is not None:
            picture = self.schedule.picture
            pos = None if picture is None else picture.position(first)
            if pos is None:  # not placed yet: at the end until the next reads place it
                self.schedule.asked[first] = now
                pos = self.schedule.waiting() + 1
            done_in.append(eta_for(pos, remaining, slots, expected)[1])
        return retry_after_client(done_in)
