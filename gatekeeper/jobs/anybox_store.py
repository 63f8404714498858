"""What a job store shared by several boxes offers beyond ``JobStore`` (issue #21).

With ``jobs.store: postgres`` every box answers for every job (docs/postgres.md,
"Every box answers for every job"): the job's record and its handles are in the
shared store, so status, ``/events``, ``DELETE`` and listing need nothing more;
what does:

- a **result** lives on the box that produced it (``ResultPlace``: its ``run_box``
  and that box's internal address), fetched from there through the relay
  (``anybox``), which only boxes of the store may use (``relay_secret``);
- a **cancel** of a job another box holds is a request in the store
  (``request_cancel``), which that box takes with its next look (``take_cancels``);
- a **large request body** (over ``jobs.postgres.max_body_bytes``) lives on the box
  that took the request (``body_place``); the box that claims the job fetches it from
  there (``bodyrelay``), or gives the job back to the queue (``give_back``) when it
  cannot; ``skipped_bodies`` are the taking boxes its claims leave alone for now
  (``bodyplan.Backoff``): ``BodyStore``;
- **operators** see every box and the whole queue (``fleet``: ``Fleet``), read every
  second by ``fleet.FleetWatch``, which also stamps this box's ``seen``.

The SQLite store is one box's and has none of this: ``anybox_store_of`` returns None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from gatekeeper.jobs.record import JobRecord

__all__ = [
    "AnyBoxStore",
    "BodyStore",
    "BoxRow",
    "Fleet",
    "ResultPlace",
    "RunningJob",
    "anybox_store_of",
    "body_store_of",
]


@dataclass(frozen=True)
class ResultPlace:
    """Where a job's file is: the box that keeps it (its result: the box that ran it; its
    large request body: the box that took it) and that box's internal URL."""

    box: str
    address: str | None


@dataclass(frozen=True)
class RunningJob:
    """A job running on some box, as operators see it (no job id: ids are capabilities)."""

    box: str
    route: str
    engine: str | None
    client: str  # the full client key (status shows its keyed hash only)
    elapsed: float  # seconds since it started, by the database's clock
    progress: float | None


@dataclass(frozen=True)
class BoxRow:
    """One box of the store as the database saw it (times on the database's clock)."""

    id: str
    address: str | None
    uptime: float  # seconds since it (re)started
    seen_age: float  # seconds since its last ``seen`` stamp
    running: int  # jobs running on it
    stopped: bool  # it stopped cleanly (it is not silent: it left)


@dataclass(frozen=True)
class Fleet:
    """Every box and the whole queue, read in one round (``AnyBoxStore.fleet``)."""

    box: str  # the box that read it
    boxes: tuple[BoxRow, ...]
    queued: int  # jobs waiting in the whole queue
    running: int  # jobs running on any box
    oldest_wait: float  # seconds the longest-waiting job of the whole queue has waited
    jobs: tuple[RunningJob, ...] = ()  # the running jobs (the first RUNNING_LISTED)


@runtime_checkable
class AnyBoxStore(Protocol):
    """The calls of a store several boxes share (``postgres.sql_anybox``)."""

    box: str

    def result_place(self, job_id: str) -> ResultPlace | None: ...

    def relay_secret(self) -> str: ...

    def request_cancel(self, job_id: str) -> None: ...

    async def take_cancels(self) -> list[str]: ...

    async def fleet(self) -> Fleet: ...

    async def leave(self) -> None: ...


def anybox_store_of(store: Any) -> AnyBoxStore | None:
    """The store's shared side (a ``guard.GuardedStore``'s inner one too); None for a
    store of one box."""
    inner = getattr(store, "inner", store)
    return inner if isinstance(inner, AnyBoxStore) else None


@runtime_checkable
class BodyStore(Protocol):
    """The calls the claiming box needs for a large body another box keeps."""

    box: str
    skipped_bodies: frozenset[str]

    def body_place(self, job_id: str) -> ResultPlace | None: ...

    def give_back(self, job_id: str) -> JobRecord | None: ...

    def relay_secret(self) -> str: ...


def body_store_of(store: Any) -> BodyStore | None:
    """The store's large-body side (a ``guard.GuardedStore``'s inner one too); None for a
    store of one box."""
    inner = getattr(store, "inner", store)
    return inner if isinstance(inner, BodyStore) else None
