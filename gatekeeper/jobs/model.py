"""A job while it lives in this process, and the answers ``Jobs.submit`` gives.

``Job`` is mutable and owned by ``jobs.Jobs``; everyone else reads it. Waiting
for a change: take ``job.changed()`` *before* reading its state, then await it
(``notify`` swaps in a fresh event, so no wake-up is ever lost).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from gatekeeper.config import Config, Route
from gatekeeper.core.lease import Lease
from gatekeeper.core.vocab import FINAL_STATES, JobState, QueueReason
from gatekeeper.jobs.store import JobRow
from gatekeeper.jobs.waitroom import QueueLimits


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
    ticket: Lease | None = None
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
