"""One system across boxes (issue #21): what this box sees of the others, kept fresh.

``FleetWatch.run`` is a background task of the waiting room (``app.wiring``) with a
store several boxes share. It never blocks the proxy's loop: its store calls are
awaited (``Bridge.acall``). Every ``FLEET_EVERY`` seconds it stamps this box's
``seen`` and reads every box and the whole queue (``anybox_store.Fleet``), which
``/status``, ``gatekeeper status``, the box gauges and the heartbeat alert read
(``latest``, ``ages``); every ``CANCELS_EVERY`` seconds it takes the cancel requests
other boxes left for jobs this box holds and hands them to ``on_cancels`` (the app
passes ``anybox.apply_cancels``).

A heartbeat age is the database's (``now() - seen`` on its clock) plus the time since
this box read it on its own loop clock, so it keeps growing while the store does not
answer, as a silent box's does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from gatekeeper.jobs.anybox_store import AnyBoxStore, Fleet
from gatekeeper.jobs.guard import StorageError
from gatekeeper.jobs.ids import client_hash

log = logging.getLogger("gatekeeper.jobs")

FLEET_EVERY = 1.0  # seconds between two reads of every box and the whole queue
CANCELS_EVERY = 0.25  # seconds between two looks for cancel requests
_LOG_EVERY = 60.0  # at most one line a minute while the store does not answer


class FleetWatch:
    """The boxes and the whole queue as last read, and the cancels of other boxes."""

    def __init__(
        self,
        shared: AnyBoxStore,
        clock: Callable[[], float],
        on_cancels: Callable[[list[str]], None] = lambda ids: None,
    ):
        self.shared = shared
        self.clock = clock
        self.on_cancels = on_cancels  # the cancel requests for jobs this box holds
        self.latest: Fleet | None = None
        self.read_at = 0.0  # loop clock of ``latest``
        self.error: str | None = None  # why the last read failed; None after a good one
        self._logged = -_LOG_EVERY
        # Called after each read (the box gauges follow the boxes that come and go).
        self.on_read: Callable[[], None] = lambda: None

    @property
    def box(self) -> str:
        return self.shared.box

    def ages(self, now: float) -> dict[str, float]:
        """Each running box's heartbeat age (stopped ones left: they have none)."""
        if self.latest is None:
            return {}
        since = max(0.0, now - self.read_at)
        return {b.id: b.seen_age + since for b in self.latest.boxes if not b.stopped}

    @property
    def queued(self) -> int | None:
        return None if self.latest is None else self.latest.queued

    @property
    def running(self) -> int | None:
        return None if self.latest is None else self.latest.running

    def running_on(self) -> dict[str, int]:
        """Each running box's running jobs, as last read."""
        if self.latest is None:
            return {}
        return {b.id: b.running for b in self.latest.boxes if not b.stopped}

    async def run(self) -> None:
        next_fleet = self.clock()
        while True:
            try:
                self.on_cancels(await self.shared.take_cancels())
                if self.clock() >= next_fleet:
                    next_fleet = self.clock() + FLEET_EVERY
                    self.latest = await self.shared.fleet()
                    self.read_at, self.error = self.clock(), None
                    self.on_read()
            except StorageError as exc:
                self.error = exc.detail
                if self.clock() - self._logged >= _LOG_EVERY:
                    self._logged = self.clock()
                    log.warning("reading the other boxes failed: %s", exc.detail)
            except Exception:  # a bug must not end the box's heartbeat: logged, next round
                log.exception("reading the other boxes failed")
            await asyncio.sleep(CANCELS_EVERY)

    async def leave(self) -> None:
        """This box stops cleanly: marked ``stopped`` (it left; it is not silent)."""
        try:
            await self.shared.leave()
        except StorageError as exc:
            log.warning("could not mark this box stopped in the store: %s", exc.detail)

    def status(self, now: float) -> dict[str, Any]:
        """The ``boxes`` and ``shared_queue`` sections of the status document."""
        f = self.latest
        since = max(0.0, now - self.read_at)
        runs: dict[str, list[dict[str, Any]]] = {}
        for j in f.jobs if f is not None else ():
            runs.setdefault(j.box, []).append(
                {
                    "route": j.route,
                    "engine": j.engine,
                    "client": client_hash(j.client),
                    "elapsed_seconds": round(j.elapsed + since, 1),
                    "progress": None if j.progress is None else round(j.progress, 4),
                }
            )
        boxes = [
            {
                "id": b.id,
                "this": b.id == self.box,
                "address": b.address,
                "seen_age_seconds": None if b.stopped else round(b.seen_age + since, 1),
                "uptime_seconds": round(b.uptime + since, 1),
                "running": b.running,
                "jobs": runs.get(b.id, []),
                "stopped": b.stopped,
            }
            for b in (f.boxes if f is not None else ())
        ]
        queue = {
            "waiting": None if f is None else f.queued,
            "running": None if f is None else f.running,
            "oldest_wait_seconds": None if f is None else round(f.oldest_wait + since, 1),
            "read_seconds_ago": None if f is None else round(since, 1),
            "error": self.error,
        }
        return {"boxes": boxes, "shared_queue": queue}
