"""When each job will start and be done: the waiting room's ETAs and Retry-After values.

The arithmetic is pure (``waitroom.start_delays`` and friends, and the
``retry_after_*`` functions below); this class reads
its inputs: the running slots' elapsed times from the gate (each expected to
take the gate's running estimate) and the waiters' order from the room.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gatekeeper.core.admission import Gate
from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.model import Job
from gatekeeper.jobs.waitroom import WaitingRoom, eta_for, eta_new, start_delay


class Schedule:
    def __init__(self, gate: Gate, room: WaitingRoom):
        self.gate = gate
        self.room = room

    def running_remaining(self, now: float) -> tuple[list[float], int, float]:
        """(seconds each running slot has left, slots, expected seconds of one job)."""
        expected = self.gate.estimator.expected
        remaining = [max(0.0, expected - e) for e in self.gate.elapsed(now)]
        return remaining, self.gate.limits.max_in_flight, expected

    def steady_for(self, now: float) -> float:
        """Seconds from ``now`` during which every waiter's ETA counts down with the
        clock: until the first of the slots that bound the schedule is due. 0 when a
        slot is free or overdue (then the waiters' ETAs stand still as time passes)."""
        remaining, slots, _ = self.running_remaining(now)
        if len(remaining) < slots:
            return 0.0
        return sorted(remaining)[-slots]

    def eta(self, job: Job, now: float) -> tuple[float, float]:
        """(starts_in, done_in) seconds for a live job."""
        remaining, slots, expected = self.running_remaining(now)
        if job.state == JobState.RUNNING:
            assert job.started is not None
            return 0.0, max(0.0, expected - (now - job.started))
        pos = self.room.position(job.id)
        if pos is None:
            return 0.0, 0.0
        return eta_for(pos, remaining, slots, expected)

    def done_in_new(self, now: float) -> float:
        """Done-in for a job joining the end of the queue now."""
        remaining, slots, expected = self.running_remaining(now)
        free = (
            not self.room
            and len(remaining) < slots
            and self.gate.check(now, probed_only=True) is None
        )
        return eta_new(remaining, slots, len(self.room), expected, free)

    def retry_after_full(self, now: float) -> int:
        """``queue_full``: when a place frees."""
        return retry_after_full(*self.running_remaining(now))

    def retry_after_client(self, mine: list[Job], now: float) -> int:
        """``client_limit``: when the earliest of the client's jobs is done."""
        return retry_after_client([self.eta(j, now)[1] for j in mine])

    def retry_after_timeout(self, now: float) -> int:
        """``queue_timeout``: when a newcomer behind today's queue would start."""
        remaining, slots, expected = self.running_remaining(now)
        return retry_after_timeout(remaining, slots, len(self.room), expected)


def _seconds(x: float) -> int:
    """A Retry-After value: whole seconds rounded up, at least 1 (RFC 9110 §10.2.3)."""
    return max(1, math.ceil(x))


def retry_after_full(running_remaining: Sequence[float], slots: int, expected: float) -> int:
    """``queue_full``: when a place frees, i.e. when the first waiter starts."""
    return _seconds(start_delay(running_remaining, slots, 0, expected))


def retry_after_timeout(
    running_remaining: Sequence[float], slots: int, waiting: int, expected: float
) -> int:
    """``queue_timeout``: when a newcomer behind today's ``waiting`` would start."""
    return _seconds(start_delay(running_remaining, slots, waiting, expected))


def retry_after_client(client_done_in: Sequence[float]) -> int:
    """``client_limit``: when the client's earliest job (waiting or running) is done."""
    return _seconds(min(client_done_in, default=1.0))
