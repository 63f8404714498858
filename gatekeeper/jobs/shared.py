"""What the service needs of a job store shared by several boxes (issue #21).

One box's store (SQLite) is its own queue: the service claims by id what its
waiting room chose. A shared store (``jobs.store: postgres``) is one queue for
every box: each box is a worker of it (``service_shared``), and the store gives
it, beside ``JobStore``:

- ``box``: this box's id (``run_box`` of the jobs it runs, ``body_box`` of the
  jobs it took);
- ``watch``: call ``wake`` (from any thread) when a job may be claimable: a
  notification of the schema's channel, and once after each (re)connect of the
  listening connection (notifications are at most once and only to connected
  listeners);
- ``beat`` and ``sweep``: fire and forget (never waited for by the caller);
  ``done`` gets the answer on the store's thread, None when the store failed;
- ``where``: where each of some jobs is now, for the jobs this box watches but
  does not run (its room is a view of the shared queue: ``service_shared``);
- the whole queue's places and limits (``places``): ``create_limited`` decides
  ``per_client`` and ``max_waiting`` over every box's jobs and inserts the job in one
  transaction, serialised per queue (``OverLimit`` when refused); ``counts`` reads
  the same counts without inserting (a refusal from the head); ``picture`` reads the
  whole queue's figures (fire and forget, every ``POLL_SECONDS``: ``service_places``).

``Fenced`` is the store's answer to a runner write of a box that no longer runs the
job (its lease lapsed and another box swept it): that generation is stopped and its
result discarded, so nothing is recorded twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from gatekeeper.core.vocab import QueueReason
from gatekeeper.jobs.outbox import Delivery
from gatekeeper.jobs.places import Counts
from gatekeeper.jobs.record import JobRecord


class Fenced(ValueError):
    """A write of ``job_id`` by a box that no longer runs it (``run_box`` is another)."""

    def __init__(self, job_id: str, run_box: str | None, state: str):
        super().__init__(f"job {job_id} is {state} (run_box {run_box}): not this box's to change")
        self.job_id = job_id
        self.run_box = run_box


class LiveTwin(ValueError):
    """A live job with the same coalescing key exists (maybe on another box): the
    database's unique key over live jobs refused a second one (issue #21)."""

    def __init__(self, key: str):
        super().__init__(f"a queued or running job has coalescing key {key!r}")
        self.key = key


@dataclass(frozen=True)
class Limits:
    """The ``admission.queue`` limits a new job is admitted under, with what only this
    box knows: its Gradio guests waiting (not stored) and whether a slot is free here."""

    per_client: int
    max_waiting: int
    free_here: bool = False
    client_guests: int = 0
    guests: int = 0


@dataclass(frozen=True)
class Standing:
    """A client's jobs over every box when it was refused: when its earliest is done."""

    counts: Counts
    running: tuple[float, ...] = ()  # seconds each of its running jobs has run
    first_queued: str | None = None  # its oldest queued job (the first of its to start)


class OverLimit(ValueError):
    """``create_limited`` refused the job: ``reason`` (``client_limit``, ``queue_full``),
    decided over every box's jobs (``standing``), nothing inserted."""

    def __init__(self, reason: QueueReason, standing: Standing):
        super().__init__(f"refused: {reason}")
        self.reason = reason
        self.standing = standing


@dataclass(frozen=True)
class Where:
    """A job's record as stored now, and the box that runs or ran it (None: no box yet)."""

    record: JobRecord
    run_box: str | None


@runtime_checkable
class SharedQueue(Protocol):
    """The shared store's calls beyond ``JobStore`` (module text)."""

    box: str

    def watch(self, wake: Callable[[], None]) -> None: ...

    def beat(self, done: Callable[[set[str] | None], None]) -> None:
        """Stamp this box and its running jobs (the database's clock); ``done`` gets the
        ids of the jobs the store still has running on this box."""
        ...

    def sweep(
        self,
        lease: float,
        retry_interrupted: bool,
        wall: float,
        done: Callable[[list[JobRecord] | None], None],
        body_wait: float | None = None,
    ) -> None:
        """End (or queue again) the running jobs of boxes silent for over ``lease``
        seconds, and fail ``body_lost`` the queued jobs whose body only a box silent for
        over ``body_wait`` keeps; ``done`` gets the changed records."""
        ...

    def where(self, job_ids: Sequence[str], *, queued: bool = True) -> list[Where]:
        """Where each of ``job_ids`` is now (unknown ids are left out; ``queued`` False:
        queued ones left out)."""
        ...

    def create_limited(
        self, record: JobRecord, outbox: Sequence[Delivery], limits: Limits
    ) -> JobRecord:
        """``create`` if ``limits`` allow it over every box's jobs, decided and inserted
        in one transaction serialised per queue; else ``OverLimit``."""
        ...

    def standing(self, client: str, cap: int | None = None) -> Standing:
        """``client``'s counts and running jobs over every box (no lock: a head's look);
        the waiting jobs counted up to ``cap`` (None: all)."""
        ...

    def picture(
        self,
        ids: Sequence[str],
        slots: int,
        done: Callable[[tuple[int, dict[str, int], list[float], int] | None], None],
    ) -> None:
        """Store this box's ``slots``, then read the whole queue (fire and forget):
        ``done`` gets (waiting, the places of ``ids`` still queued, running jobs'
        elapsed seconds, slots of every live box), None if it failed."""
        ...
