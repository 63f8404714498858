"""The delivery rules, as plain functions: event filters, the progress throttle, the
backoff schedule and what an answer means. PURE: no I/O, no clock (time is passed in).

A delivery's life (one outbox row; ``outbox.py`` stores it)::

    pending ──2xx──▶ delivered                      (the row is deleted)
       │  ──410──▶ gone        (this destination hears nothing more of this job)
       │  ──other status, timeout, refused──▶ pending again at now + backoff(attempts)
       └──older than max_age──▶ expired             (given up; counted, logged)

The same ``webhook-id`` is sent on every attempt (the row's id), so a receiver
that saw an attempt whose answer got lost drops the duplicate.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable

from gatekeeper.config.webhooks import EVENTS, SHORT_EVENTS, to_events

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "Outcome",
    "backoff",
    "classify",
    "parse_events",
    "progress_due",
]

# The first retry comes after about BACKOFF_BASE seconds, each next one twice as late,
# never more than BACKOFF_CAP apart (Standard Webhooks suggests a schedule of this shape).
BACKOFF_BASE = 1.0
BACKOFF_CAP = 600.0


class Outcome(enum.StrEnum):
    """The ``outcome`` label of gatekeeper_webhook_deliveries_total: one per attempt."""

    DELIVERED = "delivered"  # 2xx
    GONE = "gone"  # 410: this destination stops for this job
    RETRY = "retry"  # any other answer, a timeout, a refused connection: tried again
    EXPIRED = "expired"  # older than max_age: given up


def parse_events(header: str) -> tuple[str, ...] | str:
    """``Gatekeeper-Webhook-Events: started,completed`` -> the events, or why not (``str``)."""
    names = [n.strip() for n in header.split(",") if n.strip()]
    bad = [n for n in names if n not in EVENTS and n not in SHORT_EVENTS]
    if not names or bad:
        return f"names unknown events {bad}: choose from {', '.join(SHORT_EVENTS)}"
    return to_events(names)


def progress_due(last_sent: float | None, now: float, interval: float) -> bool:
    """Is a job.progress due now, the last one sent (to this destination) at ``last_sent``?"""
    return last_sent is None or now - last_sent >= interval


def backoff(attempts: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones (>= 1): exponential,
    capped, with "full jitter" on the upper half (so a restart does not send a whole
    backlog's retries at the same instant, and no retry comes sooner than half its step)."""
    step = min(BACKOFF_CAP, BACKOFF_BASE * float(2 ** min(attempts - 1, 30)))
    return step / 2 + rand() * step / 2


def classify(status: int | None) -> Outcome:
    """An attempt's outcome from the receiver's status (None: no answer at all)."""
    if status is not None and 200 <= status <= 299:
        return Outcome.DELIVERED
    if status == 410:
        return Outcome.GONE
    return Outcome.RETRY
