"""A job's state machine: every state change a job can make, and every way it can end.

Everything that changes a job's state is decided here (after h11's ``_state.py``):
the store checks every change against ``TRANSITIONS``; the service and the
runner end a job only with one of the ``Endings``; the HTTP layer reads an
ending's status and Retry-After policy instead of re-deriving them from the
reason string. PURE: no I/O, no clock.

The states are ``core.vocab.JobState`` (they are metric labels and API values)::

    queued ──claim──▶ running ──▶ done | failed | cancelled ──evict──▶ expired
       │                 ╲
       │                  ╲__ recover(retry_interrupted) ──▶ queued (same seq)
       └──▶ failed | cancelled | expired      (and a live job may expire at once)

An ``Ending`` is how a queued or running job becomes final: its final state,
its reason code (the ``reason`` of the job JSON, the access log and the
refusal body), the HTTP status a held client hears when the job ended before
the engine's answer began, and where the Retry-After of that answer comes from.
Every ending a job can have is a constant of ``Endings``; ``upstream_refused`` and
``mid_body`` pick the constant for an engine failure.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from gatekeeper.core.errors import UpstreamError
from gatekeeper.core.vocab import FINAL_STATES, ErrorKind, JobState

__all__ = [
    "ALL_ENDINGS",
    "KEPT_STATES",
    "LIVE_STATES",
    "TRANSITIONS",
    "Ending",
    "Endings",
    "RetryAfter",
    "allowed",
    "kept_whole",
    "mid_body",
    "sources",
    "upstream_refused",
]

QUEUED, RUNNING = JobState.QUEUED, JobState.RUNNING
DONE, FAILED, CANCELLED, EXPIRED = (
    JobState.DONE,
    JobState.FAILED,
    JobState.CANCELLED,
    JobState.EXPIRED,
)

# Every allowed change, from -> to. Anything else is a bug (the store raises ValueError).
TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    # claimed by a free slot; or ended while waiting (timeout, cancel, a drain, a lost body)
    QUEUED: frozenset({RUNNING, FAILED, CANCELLED, EXPIRED}),
    # the engine answered (or not); QUEUED again only by recover with retry_interrupted
    RUNNING: frozenset({DONE, FAILED, CANCELLED, EXPIRED, QUEUED}),
    # a kept result is evicted (jobs.keep, jobs.max_bytes)
    DONE: frozenset({EXPIRED}),
    FAILED: frozenset({EXPIRED}),
    CANCELLED: frozenset({EXPIRED}),
    # the row is deleted EXPIRED_ROW_KEEP_FACTOR * keep later: no state after this one
    EXPIRED: frozenset(),
}
# The states a job is live in: it may be claimed, write a result, or end.
LIVE_STATES: tuple[JobState, ...] = (QUEUED, RUNNING)
# The states whose result file (if any) is kept until eviction.
KEPT_STATES: tuple[JobState, ...] = (DONE, FAILED, CANCELLED)


def allowed(before: JobState, after: JobState) -> bool:
    """May a job go from ``before`` to ``after``?"""
    return after in TRANSITIONS[before]


def sources(after: JobState) -> tuple[JobState, ...]:
    """The states a job may enter ``after`` from, in ``JobState`` order."""
    return tuple(s for s in JobState if after in TRANSITIONS[s])


class RetryAfter(enum.Enum):
    """Where the Retry-After of a held client's answer comes from when its job ended early."""

    NONE = "none"  # no Retry-After header
    DEFAULT = "default"  # admission.retry_after_default: a restart or a drain
    QUEUE = "queue"  # when a newcomer behind today's queue would start (waitroom)


@dataclass(frozen=True, slots=True)
class Ending:
    """How a job became final (module text)."""

    state: JobState
    reason: str | None
    # What a held client hears when the job ended before the engine's answer head
    # (None: 503, the status of "no answer"); ignored once the head was streamed.
    status: int | None
    retry_after: RetryAfter = RetryAfter.NONE
    # The result file is a whole answer (the engine's 2xx, or its own error answer):
    # a follower may end it as complete; any other ending after the head truncated it.
    whole_answer: bool = False

    def __post_init__(self) -> None:
        if self.state not in FINAL_STATES:
            raise ValueError(f"an ending is a final state, not {self.state}")

    @property
    def engine_failed(self) -> bool:
        """The engine failed the job: its message names the route only, the detail is logged."""
        return self.reason is not None and self.reason.startswith("upstream")


class Endings:
    """Every ending a job can have (a namespace: ``Endings.DRAINING``)."""

    # The engine answered 2xx; its answer is the job's result.
    DONE: Final = Ending(DONE, None, None, whole_answer=True)
    # The engine answered with its own error status: the result is that answer, whole.
    UPSTREAM_STATUS: Final = Ending(FAILED, "upstream_status", None, whole_answer=True)
    # The engine could not be asked (core.errors: the UpstreamError it raised).
    UPSTREAM_UNAVAILABLE: Final = Ending(FAILED, "upstream_unavailable", 502)
    UPSTREAM_BUSY: Final = Ending(FAILED, "upstream_busy", 503)
    UPSTREAM_TIMEOUT: Final = Ending(FAILED, "upstream_timeout", 504)
    # The engine broke off after its head: what was streamed is truncated.
    UPSTREAM_TIMEOUT_MID_BODY: Final = Ending(FAILED, "upstream_timeout_mid_body", None)
    UPSTREAM_PROTOCOL_MID_BODY: Final = Ending(FAILED, "upstream_protocol_mid_body", None)
    # Waited admission.queue.max_wait without a slot.
    QUEUE_TIMEOUT: Final = Ending(FAILED, "queue_timeout", 503, RetryAfter.QUEUE)
    # SIGTERM: a held waiter is told now; async jobs stay queued for the next start.
    DRAINING: Final = Ending(CANCELLED, "draining", 503, RetryAfter.DEFAULT)
    # The runner was stopped by a shutdown (or was running at the last stop: recover).
    INTERRUPTED: Final = Ending(FAILED, "interrupted", 503, RetryAfter.DEFAULT)
    # The runner raised: a bug, logged with its traceback.
    INTERNAL: Final = Ending(FAILED, "internal", 500)
    # The state directory failed a read or a write (jobs.guard.StorageError: a full disk,
    # an I/O error, a read-only remount, a deleted or corrupt database or result file):
    # what was written of the answer is never served as whole.
    STORAGE_ERROR: Final = Ending(FAILED, "storage_error", 503, RetryAfter.DEFAULT)
    # Nobody wants the answer any more (every held client left; on_client_disconnect).
    CLIENT_GONE: Final = Ending(CANCELLED, "client_gone", 499)
    # DELETE <id>: a waiting job is removed (409 to a held follower of it) ...
    DELETED_WAITING: Final = Ending(CANCELLED, "deleted", 409)
    # ... a running one is stopped (cancel mode) or its answer discarded (finish mode).
    DELETED_RUNNING: Final = Ending(CANCELLED, "deleted", 499)
    # recover at start, for rows the last process left: nobody holds a held job's
    # connection any more; an async job's body file went missing.
    RESTART: Final = Ending(CANCELLED, "restart", None)
    BODY_LOST: Final = Ending(FAILED, "body_lost", None)
    # evict: a kept result's age passed jobs.keep, or the results passed jobs.max_bytes.
    EXPIRED_KEEP: Final = Ending(EXPIRED, "keep", None)
    EXPIRED_MAX_BYTES: Final = Ending(EXPIRED, "max_bytes", None)


ALL_ENDINGS: tuple[Ending, ...] = tuple(
    v for k, v in vars(Endings).items() if not k.startswith("_") and isinstance(v, Ending)
)

_REFUSED = {
    e.reason: e
    for e in (Endings.UPSTREAM_UNAVAILABLE, Endings.UPSTREAM_BUSY, Endings.UPSTREAM_TIMEOUT)
}
_MID_BODY = {
    ErrorKind.TIMEOUT: Endings.UPSTREAM_TIMEOUT_MID_BODY,
    ErrorKind.PROTOCOL: Endings.UPSTREAM_PROTOCOL_MID_BODY,
}


_WHOLE = frozenset((e.state, e.reason) for e in ALL_ENDINGS if e.whole_answer)


def kept_whole(state: JobState, reason: str | None) -> bool:
    """A job that ended in ``state`` with ``reason`` (as stored) kept a whole answer: only
    those results may be served (a truncated or failed write is never a 200)."""
    return (state, reason) in _WHOLE


def upstream_refused(exc: UpstreamError) -> Ending:
    """The ending of a job whose engine failed before its answer head (``exc``)."""
    known = _REFUSED.get(exc.reason)
    if known is not None and known.status == exc.status:
        return known
    # An UpstreamError raised with its own status or reason: carried as it is.
    return Ending(FAILED, exc.reason, exc.status)


def mid_body(kind: ErrorKind) -> Ending:
    """The ending of a job whose engine broke off mid-answer (a timeout or a broken stream)."""
    return _MID_BODY[kind]
