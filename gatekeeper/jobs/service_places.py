"""Places in the whole shared queue, kept fresh on this box (issue #21; ``places``).

Mixed into ``JobService``, which provides the attributes declared here. With a
shared store, every ``POLL_SECONDS`` the tick fires one read of the whole queue at
the store's thread (``SharedQueue.picture``: never awaited on the proxy's loop,
whose only work is to swap in the answer): how many wait, the place of each queued
job this box took and of each job shown here lately (``Schedule.asked``: a job view,
an ``/events`` watcher of another box's job), every running job's elapsed time and
the slots of every live box (this box's own written with it). ``Schedule`` reads
every place, ETA and Retry-After from it (``schedule.Schedule.picture``), so a job's
view, its ``/events``, the held answers' Retry-After and ``/status`` show the same
whole-queue figure on every box, at most ``POLL_SECONDS`` (plus one read) old. A job
arriving here is placed by a read made soon after (``SOON``), not a second later.

A watcher is woken (``_changed_all``) only when a read changed a place or the count
of waiting jobs; a failed read keeps the last picture (its running jobs' elapsed
times keep growing with the clock).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gatekeeper.jobs.deps import JobDeps
from gatekeeper.jobs.places import Picture
from gatekeeper.jobs.schedule import Schedule
from gatekeeper.jobs.shared import SharedQueue

# Seconds between two reads of the whole queue (service_shared's POLL_SECONDS).
EVERY = 1.0
# A read soon after an arrival here, at most this often: it places the new job.
SOON = 0.1
# A job shown here stays in the reads this long after it was last shown (seconds).
ASKED_FOR = 10.0

Read = tuple[int, dict[str, int], list[float], int]


class PlacesOps:
    """Mixed into ``JobService`` (module text)."""

    deps: JobDeps
    schedule: Schedule
    shared: SharedQueue | None
    _loop: asyncio.AbstractEventLoop | None
    _changed_all: Callable[[], None]
    _soon: Callable[..., None]

    def _places_init(self) -> None:
        self._places_due = 0.0  # the next read (loop clock)
        self._places_last = -SOON  # the last read fired
        self._places_reading = False  # a read in flight
        self._places_timer = False  # a read soon after an arrival is scheduled

    def places_tick(self, now: float) -> None:
        """The tick's step: a read every ``EVERY`` seconds (none in flight)."""
        if now >= self._places_due:
            self.read_places(now)

    def place_soon(self) -> None:
        """A job arrived here: read the whole queue within ``SOON`` seconds."""
        now = self.deps.clock()
        self._places_due = min(self._places_due, max(now, self._places_last + SOON))
        if self._loop is not None and not self._places_timer:
            self._places_timer = True
            self._loop.call_later(max(0.0, self._places_due - now), self._places_timer_fired)

    def _places_timer_fired(self) -> None:
        self._places_timer = False
        self.places_tick(self.deps.clock())

    def read_places(self, now: float) -> None:
        """Fire one read of the whole queue at the store's thread (module text)."""
        shared = self.shared
        if shared is None or self._places_reading:
            return
        self._places_reading = True
        self._places_last = now
        self._places_due = now + EVERY
        asked = self.schedule.asked
        for job_id in [i for i, t in asked.items() if now - t > ASKED_FOR]:
            del asked[job_id]
        slots = self.deps.gate.limits.max_in_flight
        shared.picture(list(asked), slots, lambda read: self._soon(self._pictured, read))

    def _pictured(self, read: Read | None) -> None:
        """On the proxy's loop: the read's answer becomes the schedule's picture."""
        self._places_reading = False
        if read is None:
            return
        waiting, places, running, slots = read
        old = self.schedule.picture
        self.schedule.picture = Picture(
            waiting=waiting,
            positions=places,
            running=tuple(running),
            slots=max(1, slots),
            read_at=self.deps.clock(),
        )
        if old is None or old.waiting != waiting or old.positions != places:
            self._changed_all()
