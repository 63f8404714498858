"""The webhook outbox's record: one delivery of one job event to one destination.

A ``Delivery`` is written by the store in the same transaction as the job's state
change it announces (``JobStore.create/mark_running/finish(..., outbox=...)``), so
a state change is never stored without its deliveries nor the other way round,
and a ``kill -9`` loses neither (issue #20 §1). The deliverer
(``jobs/webhooks/deliver.py``) takes due rows, sends them, and deletes them once
delivered, after a 410, or past ``jobs.webhooks.max_age``; ``webhooks/policy.py``
has the table of a delivery's states.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gatekeeper.jobs.record import JobRecord

if TYPE_CHECKING:
    from gatekeeper.jobs.model import Job
    from gatekeeper.jobs.states import Ending

# A request's own webhook (Gatekeeper-Webhook) is the destination "@request:<origin>"
# (scheme://host:port): its concurrency bound is per origin. A configured
# destination's name cannot contain '@'.
REQUEST_DESTINATION = "@request:"


@dataclass(frozen=True)
class Delivery:
    """One outbox row. ``id`` is the ``webhook-id`` of every attempt."""

    id: str
    job_id: str
    destination: str  # a jobs.webhooks.destinations name, or REQUEST_DESTINATION
    url: str
    event: str  # job.queued | job.started | job.progress | job.completed
    payload: bytes  # the signed body, rendered when the event happened
    created: float  # wall clock: max_age counts from here
    next_at: float  # wall clock: due from here (a taken row is leased into the future)
    attempts: int = 0
    last_error: str | None = None


@dataclass(frozen=True)
class Backlog:
    """What the outbox holds: deliveries not yet delivered, and the oldest one's creation."""

    count: int
    oldest: float | None


class JobEvents(Protocol):
    """What the service and the runner tell the webhooks (``webhooks.emit.Emitter``).

    The first three return the deliveries the caller hands to the store call that
    changes the job's state (one transaction); ``progressed`` writes its own."""

    def queued(self, record: JobRecord) -> Sequence[Delivery]: ...

    def started(self, job: Job, wall: float, engine: str | None) -> Sequence[Delivery]: ...

    def completed(self, job: Job, ending: Ending, wall: float) -> Sequence[Delivery]: ...

    def progressed(self, job: Job) -> None: ...

    def recovered(self, record: JobRecord) -> None: ...


class Silent:
    """No webhooks: every event announces nothing."""

    def queued(self, record: JobRecord) -> Sequence[Delivery]:
        return ()

    def started(self, job: Job, wall: float, engine: str | None) -> Sequence[Delivery]:
        return ()

    def completed(self, job: Job, ending: Ending, wall: float) -> Sequence[Delivery]:
        return ()

    def progressed(self, job: Job) -> None:
        return None

    def recovered(self, record: JobRecord) -> None:
        return None
