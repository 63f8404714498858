"""The words gatekeeper's counters, logs, metrics and answers are made of, defined once.

``StrEnum`` members are ``str``: they are the label values, JSON values and log
fields as they always were (``Outcome.ADMITTED == "admitted"``), and mypy checks
that every writer uses one of them. Reason codes of gatekeeper's own answers
are open-ended (the errors hierarchy adds its own); the ones the gate decides
are ``AdmitReason``.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """What became of one request (``gatekeeper_requests_total{outcome}``)."""

    ADMITTED = "admitted"
    PASSED = "passed"
    REJECTED = "rejected"
    BLOCKED = "blocked"
    # A queue-route request that found no free slot and waits its turn (held or an
    # async job accepted with 202). Counted once, at arrival: one that starts at once
    # is ADMITTED, and a waiter later dispatched is not counted again.
    QUEUED = "queued"
    # Attached to an existing job, or answered by replaying a kept result.
    COALESCED = "coalesced"


class AdmitReason(StrEnum):
    """Why the gate refuses a generation now, most useful first (``admission.reasons``)."""

    DRAINING = "draining"
    BUSY = "busy"
    # Every engine with a free slot failed its probe (issue #11 §1): no new job goes to one.
    ENGINE_DOWN = "engine_down"
    CPU = "cpu"
    MEMORY = "memory"
    # The signals of a real engine box (issue #11 §3): PSI avg10 and NVML, opt-in thresholds.
    CPU_PRESSURE = "cpu_pressure"
    MEMORY_PRESSURE = "memory_pressure"
    IO_PRESSURE = "io_pressure"
    GPU_MEMORY = "gpu_memory"
    GPU_UTILIZATION = "gpu_utilization"


class QueueReason(StrEnum):
    """Why a queue route turns a request away instead of letting it wait (issue #9)."""

    QUEUE_FULL = "queue_full"
    QUEUE_TIMEOUT = "queue_timeout"
    CLIENT_LIMIT = "client_limit"
    # The state directory is below jobs.min_free_bytes (issue #18 §1): no new job is written.
    STORAGE_FULL = "storage_full"
    # The job database was deleted or replaced and cannot be put back (issue #18 §1).
    STORAGE_ERROR = "storage_error"


class JobState(StrEnum):
    """Where a job of a ``queue`` route is (``gatekeeper_jobs_total{state}``, the jobs API).

    queued -> running -> done | failed; queued | running -> cancelled; queued -> failed
    ``queue_timeout`` (max_wait); a final result -> expired (evicted).
    """

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class ErrorKind(StrEnum):
    """How talking to the engine failed (``gatekeeper_upstream_errors_total{kind}``)."""

    CONNECT = "connect"
    TIMEOUT = "timeout"
    POOL = "pool"
    PROTOCOL = "protocol"
    CLIENT_DISCONNECT = "client_disconnect"


OUTCOMES: tuple[Outcome, ...] = tuple(Outcome)
ERROR_KINDS: tuple[ErrorKind, ...] = tuple(ErrorKind)
JOB_STATES: tuple[JobState, ...] = tuple(JobState)
QUEUE_REASONS: tuple[QueueReason, ...] = tuple(QueueReason)
# The resources the gate watches, in reasons() order (``gatekeeper_overloaded{resource}``).
RESOURCE_REASONS: tuple[AdmitReason, ...] = (
    AdmitReason.CPU,
    AdmitReason.MEMORY,
    AdmitReason.CPU_PRESSURE,
    AdmitReason.MEMORY_PRESSURE,
    AdmitReason.IO_PRESSURE,
    AdmitReason.GPU_MEMORY,
    AdmitReason.GPU_UTILIZATION,
)
# Rejection reasons of an admit route that exist (at 0) from the start, in metric order.
ADMIT_REASONS: tuple[AdmitReason, ...] = (
    AdmitReason.BUSY,
    AdmitReason.ENGINE_DOWN,
    *RESOURCE_REASONS,
    AdmitReason.DRAINING,
)
# A job in one of these never changes state again (except a kept result's eviction to expired).
FINAL_STATES: frozenset[JobState] = frozenset(
    {JobState.DONE, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED}
)
