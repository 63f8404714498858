"""A job in this process, and the answers ``JobService.submit`` gives.

``Job`` is its stored ``record`` (``record.JobRecord``: what survives the
process) plus what only this process knows (the loop-clock times, the slot's
ticket, the runner task, the held clients following it). It is built from a
record in one place, ``Job.from_record``: a new job, a job restored at start,
a job read back from the store by ``find``. It is mutable and owned by the
service; everyone else reads it. Waiting for a change: take ``job.changed()``
*before* reading its state, then await it (``notify`` swaps in a fresh event,
so no wake-up is ever lost).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any

from gatekeeper.config import Config
from gatekeeper.core.lease import Lease
from gatekeeper.core.vocab import FINAL_STATES, JobState, QueueReason
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.states import Ending
from gatekeeper.jobs.waitroom import QueueLimits


class ResultBroken(Exception):
    """The engine's answer broke off mid-body: a follower must abort its client."""


@dataclass(eq=False)
class Job:
    """One job: live (queued or running, or just ended) or read back from the store."""

    # As stored: replaced by every change this process writes (service, the one owner).
    record: JobRecord
    # The route it runs under: the record's, or the route its target matches now when a
    # reload renamed or removed that one while it waited on disk.
    route: str
    arrived: float  # loop clock
    predicted_done: float | None = None  # loop clock: the ETA given at arrival
    # How it ended (states.Ending), set by this process; None while live, and for a job
    # read back from the store (its record's state and reason say how it ended).
    ending: Ending | None = None
    error_detail: str | None = None  # the engine failure's detail (logged, not shown)
    started: float | None = None  # loop clock
    finished: float | None = None  # loop clock
    ticket: Lease | None = None
    task: asyncio.Task[None] | None = None
    followers: int = 0  # held connections waiting for / streaming its answer now
    async_owners: int = 0  # async handles not deleted (each request has its own: handles)
    # The handles that still hold it: async ones until their DELETE, held ones while their
    # connection is attached. Empty after a DELETE: the generation is cancelled.
    holders: set[str] = field(default_factory=set)
    head: tuple[int, str, list[tuple[str, str]]] | None = None
    result_bytes: int = 0  # streamed so far (the record has it from the end of the run)
    progress: float | None = None  # the latest seen while streaming
    cancel_requested: bool = False
    # A shared store (issue #21): the box that runs or ran it (None: none yet, or one box),
    # read by the relay of results between boxes; and whether a runner write (head,
    # progress) met an unreachable store and is written again with its ending.
    run_box: str | None = None
    unsynced: bool = False
    # Given back to a shared queue before its engine was asked (its body, kept by another
    # box, could not be fetched: ``service_bodies``): not over, and not this box's now.
    returned: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @classmethod
    def from_record(
        cls, record: JobRecord, *, now: float, wall: float, route: str | None = None
    ) -> Job:
        """The job of ``record``; its arrival on the loop clock is ``now`` minus its age,
        and a running one's start too (a job another box runs, read back: issue #21)."""
        started = None
        if record.state is JobState.RUNNING and record.started is not None:
            started = now - max(0.0, wall - record.started)
        return cls(
            record=record,
            route=record.route if route is None else route,
            arrived=now - max(0.0, wall - record.created),
            started=started,
            result_bytes=record.result_bytes,
            progress=record.progress,
        )

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def state(self) -> JobState:
        # The ending first: it is set before the store writes it.
        return self.ending.state if self.ending is not None else self.record.state

    @property
    def reason(self) -> str | None:
        return self.ending.reason if self.ending is not None else self.record.reason

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def wanted(self) -> bool:
        """Someone still wants the answer (a held client, or an async owner)."""
        return self.followers > 0 or self.async_owners > 0

    def changed(self) -> asyncio.Event:
        """The event set at the next change; take it *before* reading the state."""
        return self._changed

    def notify(self) -> None:
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()


@dataclass(frozen=True)
class Refused:
    reason: QueueReason
    status: int
    retry_after: int
    fields: dict[str, Any]

    @staticmethod
    def fields_of(cfg: Config, waiting: int) -> dict[str, Any]:
        """The message fields of a queue refusal (``messages`` placeholders)."""
        q = cfg.admission.queue
        return {
            "waiting": waiting,
            "max_waiting": q.max_waiting,
            "per_client": q.per_client,
            "max_wait": math.ceil(q.max_wait),
        }


@dataclass(frozen=True)
class Joined:
    job: Job
    coalesced: bool  # attached to a job that already existed
    handle: str  # this submitter's own id on the job (handles.Handle), the only one it sees


@dataclass(frozen=True)
class Kept:
    job: Job  # a done job whose 2xx result is replayed (read back from the store)
    handle: str  # this submitter's own id on it (handles.Handle)


Submitted = Refused | Joined | Kept


def queue_limits(cfg: Config) -> QueueLimits:
    q = cfg.admission.queue
    return QueueLimits(max_waiting=q.max_waiting, max_wait=q.max_wait, per_client=q.per_client)
