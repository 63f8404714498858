"""The job store's interface: what the service asks of wherever jobs are kept.

``JobStore`` is a Protocol; ``sqlite.SqliteJobStore`` (one state directory:
SQLite rows and files, held by one process) is its first implementation,
``postgres.PostgresJobStore`` (rows in PostgreSQL shared by several boxes, files
on the box that made them; issue #21, docs/postgres.md) its second, and
tests/test_store_conformance.py is the suite both pass.

Design notes for an implementation shared by several boxes (PostgreSQL):

- every change of a job's state goes through ``mark_running``, ``finish``,
  ``recover`` and ``evict`` and must follow ``states.TRANSITIONS``; a change the
  table does not allow raises ValueError, an unknown id KeyError, so two boxes
  racing for one row learn it from the store, not from a corrupted row;
- ``claim_next`` takes the next queued job by the waiting room's fairness rule
  (round-robin across client keys, FIFO within a key, a newcomer in the round in
  service: ``waitroom``) and marks
  it running, for exactly one caller (a shared store: one statement with
  ``FOR UPDATE SKIP LOCKED``); ``mark_running`` claims a job by id (the one the
  service's waiting room chose: a single box keeps the same rule in memory
  for positions and ETAs, and both orders agree, as the conformance suite checks);
- ``set_progress`` is where a running job reports to its store: the runner
  writes it once, when the answer is complete; a shared store that leases
  running jobs stamps the lease there, and its runner calls it periodically
  (the heartbeat); ``recover`` is what a store does for jobs whose process
  died (at start here; when a lease lapses in a shared store);
- the result and body files are the store's too: a follower reads the result
  while the runner writes it (``result_path``), and eviction counts their bytes.

Every call is synchronous, on the event loop: each is a few small indexed
statements (the SQLite store's module text has the measurements).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.batch.record import BatchRecord
from gatekeeper.jobs.files import BodyWriter, ResultWriter
from gatekeeper.jobs.handles import Handle
from gatekeeper.jobs.head import RequestHead
from gatekeeper.jobs.outbox import Backlog, Delivery
from gatekeeper.jobs.record import Headers, JobRecord

# An expired job answers "expired" (not 404) for this many times ``jobs.keep`` after it
# finished; then ``evict`` deletes its record.
EXPIRED_ROW_KEEP_FACTOR = 7

# ``client_handles`` reads at most this many of a client's handles per call when it filters
# by state, so a page costs the same whatever the client's history (it may come out short).
LIST_SCAN = 500


@dataclass(frozen=True)
class Listed:
    """One entry of a client's list: the handle, its job's record, and its list ``key``
    (increasing with each handle stored: the order and the cursor of the list)."""

    key: int
    handle: Handle
    record: JobRecord


@dataclass(frozen=True)
class HandlePage:
    """A page of ``client_handles``: newest first; ``next`` is the ``before`` of the next
    page, None when no older handle of the client is left."""

    entries: list[Listed]
    next: int | None


class StateDirError(Exception):
    """The state directory cannot be used; ``str()`` is one line naming the directory and why."""

    def __init__(self, directory: Path, cause: str):
        super().__init__(f"state directory {directory}: {cause}")
        self.directory = directory
        self.cause = cause


class StoreOpenError(Exception):
    """A shared job store cannot be opened (unreachable, refused, a schema of another
    version); ``str()`` is one line naming the store and why, never a password."""


class JobStore(Protocol):
    """Where jobs are kept: records, their bodies and results (module text)."""

    directory: Path

    def close(self) -> None:
        """Release the store; safe to call more than once."""

    def check_file(self) -> str | None:
        """Are the store's records still where it keeps them? None if so; else (its
        database file deleted or replaced under this process) put them back and say
        what was done; raise (``OSError``, ``sqlite3.Error``) when that fails. A store
        that keeps no file returns None."""
        ...

    # -- records

    def create(self, record: JobRecord, outbox: Sequence[Delivery] = ()) -> JobRecord:
        """A new queued job (its body already committed); returns it with its ``seq``.
        ``outbox``: the deliveries announcing it, written in the same transaction."""
        ...

    def get(self, job_id: str) -> JobRecord | None: ...

    def queued(self) -> list[JobRecord]:
        """Queued jobs in arrival (``seq``) order."""
        ...

    def running(self) -> list[JobRecord]:
        """Running jobs in arrival (``seq``) order."""
        ...

    def find_coalesce(self, key: str, now: float, keep: float) -> JobRecord | None:
        """The job a request with coalescing ``key`` attaches to: a queued or running one,
        else the newest done 2xx whose result file is there and finished within ``keep``."""
        ...

    def kept_like(self, head: RequestHead, now: float, keep: float) -> bool:
        """Could a kept 2xx result that ``find_coalesce`` would replay (finished within
        ``keep``) match a request with this ``head``, for some body? May say True for
        one that cannot (``head.RequestHead.may_match``), never False for one that can."""
        ...

    def add_coalesced(self, job_id: str) -> int:
        """One more request attached to this job; returns the new count."""
        ...

    # -- handles: each submitter's own id on a job (``handles``; issue #18 §3)

    def add_handle(self, handle: Handle) -> None:
        """A new handle on an existing job; ValueError if the id is taken, KeyError if
        the job is unknown."""

    def get_handle(self, handle_id: str) -> Handle | None: ...

    def detach_handle(self, handle_id: str, when: float) -> Handle:
        """The handle lets go of its job (stamped once; a second call changes nothing);
        KeyError if unknown."""
        ...

    def handles_of(self, job_id: str) -> list[Handle]:
        """Every handle of a job, attached or not, in creation order. ``evict`` deletes
        them with their job's record."""
        ...

    def client_handles(
        self,
        client: str,
        *,
        limit: int,
        before: int | None = None,
        states: Collection[JobState] | None = None,
        scan: int = LIST_SCAN,
    ) -> HandlePage:
        """The handles the client key ``client`` holds or held (its own list, issue #20 §2),
        newest first, each with its job's record: at most ``limit`` entries with a key
        below ``before``. With ``states``: only entries whose record is in one of them or
        whose handle was detached and ``cancelled`` is asked for (a detached handle reads
        ``cancelled``: ``handle_view``), reading at most ``max(scan, limit + 1)`` handles.
        Keys only grow, so a cursor stays right while handles are added. One indexed
        range read: O(limit) (O(scan) with ``states``), whatever the store holds."""
        ...

    # -- batches: N jobs of one batch request, created together (issue #20 §3)

    def create_batch(
        self,
        batch: BatchRecord,
        items: Sequence[JobRecord],
        outbox: Sequence[Delivery] = (),
    ) -> list[JobRecord]:
        """The batch and its N new queued jobs (``JobRecord.batch`` = its id, bodies
        already committed) and the deliveries announcing them (``outbox``, as ``create``)
        in one transaction, all or nothing: ValueError (nothing
        stored) for a taken id or a job that is not a new queued item of it. Returns the
        jobs with their ``seq``, in order; they join the fairness ring like ``create``'s."""
        ...

    def get_batch(self, batch_id: str) -> BatchRecord | None: ...

    def batch_jobs(self, batch_id: str) -> list[JobRecord]:
        """The batch's jobs in item (``seq``) order; ``evict`` deletes a batch with the
        last of its jobs' rows."""
        ...

    # -- the life of a job (states.TRANSITIONS)

    def mark_running(
        self,
        job_id: str,
        started: float,
        engine: str | None = None,
        outbox: Sequence[Delivery] = (),
    ) -> JobRecord:
        """queued -> running on ``engine`` (a claim by id), with ``outbox`` in the same
        transaction; ValueError from another state,
        KeyError if unknown. Its client's next job is in the next round of the fairness
        ring, and the job's round is the one in service (as a claim_next would)."""
        ...

    def claim_next(self, started: float, engine: str | None = None) -> JobRecord | None:
        """The next queued job by the fairness rule, now running; None if nothing is queued."""
        ...

    def set_result_head(
        self, job_id: str, status: int, reason: str | None, headers: Headers
    ) -> None:
        """The engine's status line and end-to-end headers (running only)."""

    def set_progress(self, job_id: str, progress: float | None, result_bytes: int) -> None:
        """A running job's progress and result bytes (running only; module text)."""

    def finish(
        self,
        job_id: str,
        state: JobState,
        reason: str | None,
        finished: float,
        outbox: Sequence[Delivery] = (),
    ) -> JobRecord:
        """A live job enters the final ``state``; its body goes, its result stays until
        ``evict`` (except for EXPIRED); ``outbox`` is written in the same transaction.
        ValueError if the table does not allow it."""
        ...

    # -- the webhook outbox (``outbox``; issue #20 §1): written only with the state
    # change it announces (above) or by ``outbox_add``; it survives the process.

    def outbox_add(self, deliveries: list[Delivery]) -> None:
        """Deliveries of an event that changes no job state (job.progress)."""

    def outbox_take(
        self, now: float, limit: int, lease_until: float, skip: Collection[str] = ()
    ) -> list[Delivery]:
        """Up to ``limit`` deliveries due at ``now`` (oldest due first), each not due again
        before ``lease_until`` unless released (a shared store: FOR UPDATE SKIP LOCKED);
        none for the destinations in ``skip``, and none while an earlier delivery of its
        job to its destination is in the outbox (one job's events arrive in order)."""
        ...

    def outbox_delivered(self, delivery_id: str) -> None:
        """Delivered, or given up: the delivery goes."""

    def outbox_retry(self, delivery_id: str, next_at: float, error: str) -> None:
        """A failed attempt: one more attempt counted, due again at ``next_at``."""

    def outbox_gone(self, job_id: str, destination: str) -> int:
        """The destination answered 410: its deliveries of this job go, and none is written
        for it any more; returns how many went."""
        ...

    def outbox_wake(self, destination: str, now: float) -> int:
        """The destination answered again: its deliveries waiting for a retry are due
        ``now`` (a backlog drains at once after an outage, not over its backoff steps);
        returns how many."""
        ...

    def outbox_backlog(self) -> Backlog:
        """How many deliveries are undelivered, and the oldest one's creation time."""
        ...

    def outbox_pending(self, job_id: str) -> list[Delivery]:
        """A job's undelivered deliveries, in the order they were written."""
        ...

    def recover(self, now: float, retry_interrupted: bool) -> list[JobRecord]:
        """Make the records true again after their process died; returns the changed ones."""
        ...

    def evict(self, now: float, keep: float, max_bytes: int) -> list[str]:
        """Expire kept results by age, then by total size; returns the ids it expired."""
        ...

    # -- files

    def results_bytes(self) -> int:
        """Bytes of the result files, partial ones included."""
        ...

    def body_writer(self, job_id: str) -> BodyWriter: ...

    def body_target(self, job_id: str) -> Path:
        """Where ``job_id``'s body goes (a spool file written beside it is renamed there)."""
        ...

    @property
    def bodies_dir(self) -> Path:
        """Where bodies live; a spool file written here becomes a body by a rename."""
        ...

    def body_path(self, job_id: str) -> Path | None: ...

    def result_writer(self, job_id: str) -> ResultWriter: ...

    def result_path(self, job_id: str) -> Path | None:
        """The final result file when complete, else the partial one while running."""
        ...
