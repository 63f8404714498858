"""What the job service tells its readers (metrics, /status, the tick): mixed into
``JobService``, which provides the attributes declared here."""

from __future__ import annotations

import asyncio

from gatekeeper.jobs.guard import GuardedStore
from gatekeeper.jobs.model import Job
from gatekeeper.jobs.waitroom import WaitingRoom


class ReadOps:
    """Readings of the service's state, none of which changes it."""

    room: WaitingRoom
    store: GuardedStore
    _changed: asyncio.Event
    _running: dict[str, dict[str, Job]]

    def any_change(self) -> asyncio.Event:
        return self._changed

    def running_jobs(self) -> list[Job]:
        """Every running job, in O(running): not a walk over every live job."""
        return [j for mine in self._running.values() for j in mine.values()]

    def depth(self) -> int:
        return len(self.room)

    def oldest_wait(self, now: float) -> float:
        oldest = self.room.oldest_arrival()
        return 0.0 if oldest is None else max(0.0, now - oldest)

    def results_bytes(self) -> int:
        return self.store.results_bytes()
