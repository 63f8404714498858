"""When each job will start and be done: the waiting room's ETAs and Retry-After values.

The arithmetic is pure (``waitroom.start_delays`` and friends, and the
``retry_after_*`` functions below); this class reads
its inputs: the running slots' elapsed times from the gate (each expected to
take the gate's running estimate) and the waiters' order from the room.

With a queue several boxes share (issue #21) the room holds only this box's jobs:
``picture`` (``places.Picture``, read every ``POLL_SECONDS`` by ``service_places``) is
the whole queue, and every figure here is computed from it instead: a job's place in
the whole queue, the running jobs and slots of every live box, every box's waiting
jobs. A job the last read did not place yet (it arrived since) is counted at the end
of the queue until the next read (asked for at once: ``asked``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gatekeeper.core.admission import Gate
from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.model import Job
from gatekeeper.jobs.places import Picture
from gatekeeper.jobs.waitroom import WaitingRoom, eta_for, eta_new, start_delay


class Schedule:
    def __init__(self, gate: Gate, room: WaitingRoom):
        self.gate = gate
        self.room = room
        self.picture: Picture | None = None  # the whole shared queue; None: the room is
        # Queued jobs shown here that the last picture did not place (job id -> when asked).
        self.asked: dict[str, float] = {}

    def running_remaining(self, now: float) -> tuple[list[float], int, float]:
        """(seconds each running slot has left, slots, expected seconds of one job): this
        box's, or every live box's with a shared queue (module text)."""
        p = self.picture
        if p is None:
            return self.running_here(now)
        expected = self.gate.estimator.expected
        remaining = [max(0.0, expected - e) for e in p.elapsed(now)]
        return remaining, max(1, p.slots), expected

    def running_here(self, now: float) -> tuple[list[float], int, float]:
        """``running_remaining`` of this box's own slots (its Gradio guests start here)."""
        expected = self.gate.estimator.expected
        remaining = [max(0.0, expected - e) for e in self.gate.elapsed(now)]
        return remaining, self.gate.limits.max_in_flight, expected

    def waiting(self) -> int:
        """Jobs waiting in the queue: the room's, or the whole shared queue's."""
        return len(self.room) if self.picture is None else self.picture.waiting

    def position(self, job: Job, now: float) -> int | None:
        """``job``'s 1-based place (None: not waiting): in the room, or in the whole
        shared queue (one not placed yet: at the end, and asked for)."""
        p = self.picture
        if p is None:
            return self.room.position(job.id)
        if job.state != JobState.QUEUED:
            return None
        self.asked[job.id] = now  # shown here: placed by the next reads (service_places)
        pos = p.position(job.id)
        return p.waiting + 1 if pos is None else pos

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
        pos = self.position(job, now)
        if pos is None:
            return 0.0, 0.0
        return eta_for(pos, remaining, slots, expected)

    def done_in_new(self, now: float) -> float:
        """Done-in for a job joining the end of the queue now."""
        remaining, slots, expected = self.running_remaining(now)
        waiting = self.waiting()
        free = (
            not waiting
            and len(remaining) < slots
            and self.gate.check(now, probed_only=True) is None
        )
        return eta_new(remaining, slots, waiting, expected, free)

    def retry_after_full(self, now: float) -> int:
        """``queue_full``: when a place frees."""
        return retry_after_full(*self.running_remaining(now))

    def retry_after_client(self, mine: list[Job], now: float) -> int:
        """``client_limit``: when the earliest of the client's jobs is done."""
        return retry_after_client([self.eta(j, now)[1] for j in mine])

    def retry_after_timeout(self, now: float) -> int:
        """``queue_timeout``: when a newcomer behind today's queue would start."""
        remaining, slots, expected = self.running_remaining(now)
        return retry_after_timeout(remaining, slots, self.waiting(), expected)


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
