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


class AdmitReason(StrEnum):
    """Why the gate refuses a generation now, most useful first (``admission.reasons``)."""

    DRAINING = "draining"
    BUSY = "busy"
    CPU = "cpu"
    MEMORY = "memory"


class ErrorKind(StrEnum):
    """How talking to the engine failed (``gatekeeper_upstream_errors_total{kind}``)."""

    CONNECT = "connect"
    TIMEOUT = "timeout"
    POOL = "pool"
    PROTOCOL = "protocol"
    CLIENT_DISCONNECT = "client_disconnect"


class JobState(StrEnum):
    """Where a queued generation (a job) is (``gatekeeper_jobs_total{state}``, the jobs API)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


OUTCOMES: tuple[Outcome, ...] = tuple(Outcome)
ERROR_KINDS: tuple[ErrorKind, ...] = tuple(ErrorKind)
# A job in one of these states never changes state again (except to EXPIRED).
FINAL_STATES: frozenset[JobState] = frozenset(
    {JobState.DONE, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED}
)
# Rejection reasons of an admit route that exist (at 0) from the start, in metric order.
ADMIT_REASONS: tuple[AdmitReason, ...] = (
    AdmitReason.BUSY,
    AdmitReason.CPU,
    AdmitReason.MEMORY,
    AdmitReason.DRAINING,
)
