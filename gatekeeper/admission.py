"""Admission: may this generation start now, and if not, why and for how long?

Pure: plain values in, a decision out. No aiohttp, no psutil, no I/O; time is
passed in by the caller (read from the loop clock by the adapter), so the
whole module is tested with tables. The one ``asyncio`` object is the event
behind ``Gate.wait_idle`` (the drain awaits it instead of polling).

Invariants (the reliability contract of issue #2):

1. ``in_flight`` counts tickets handed out and not yet released. ``Gate.try_admit``
   checks and increments in one synchronous step, so under asyncio no burst of
   requests can ever overshoot ``max_in_flight``: there is no ``await`` between
   the check and the increment.
2. Every ``Ticket`` is released exactly once. ``Ticket.release`` is idempotent;
   the proxy calls it from a ``finally``, so success, upstream error, timeout,
   client gone, cancellation and shutdown all end in one release.
3. Lowering ``max_in_flight`` (a reload) never touches running tickets; it only
   stops new admissions until the count falls below the new limit.

Reasons are checked in this order, so a client hears the most useful one:
``draining`` (come back to the new instance) > ``busy`` (someone else's song
is running; the ETA is known) > ``cpu`` > ``memory`` > the opt-in signals of
issue #11 §3: ``cpu_pressure`` > ``memory_pressure`` > ``io_pressure`` (PSI
avg10) > ``gpu_memory`` > ``gpu_utilization`` (NVML). A signal that is absent
(no PSI, no GPU) or has no threshold configured never rejects.
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .config import Resources, Threshold
from .vocab import RESOURCE_REASONS, AdmitReason


def next_overloaded(overloaded: bool, reading: float, t: Threshold) -> bool:
    """Hysteresis: trip above ``reject_above``, clear only below ``recover_below``."""
    if overloaded:
        return reading >= t.recover_below
    return reading > t.reject_above


@dataclass(frozen=True)
class Readings:
    """One sample as admission compares it (percentages; None: the signal is absent)."""

    cpu_percent: float
    memory_percent: float
    # PSI avg10 of the configured line (some/full) of each resource.
    cpu_pressure: float | None = None
    memory_pressure: float | None = None
    io_pressure: float | None = None
    # The highest over the watched GPUs: one full device is enough to fail a generation.
    gpu_memory_percent: float | None = None
    gpu_utilization_percent: float | None = None


# reason -> (reading field, overloaded field, the threshold in ``Resources``), reasons() order.
_WATCHED: dict[AdmitReason, tuple[str, str, Callable[[Resources], Threshold | None]]] = {
    AdmitReason.CPU: ("cpu_percent", "cpu_overloaded", lambda r: r.cpu_percent),
    AdmitReason.MEMORY: ("memory_percent", "memory_overloaded", lambda r: r.memory_percent),
    AdmitReason.CPU_PRESSURE: (
        "cpu_pressure",
        "cpu_pressure_overloaded",
        lambda r: r.cpu_pressure,
    ),
    AdmitReason.MEMORY_PRESSURE: (
        "memory_pressure",
        "memory_pressure_overloaded",
        lambda r: r.memory_pressure,
    ),
    AdmitReason.IO_PRESSURE: ("io_pressure", "io_pressure_overloaded", lambda r: r.io_pressure),
    AdmitReason.GPU_MEMORY: (
        "gpu_memory_percent",
        "gpu_memory_overloaded",
        lambda r: r.gpu.memory_percent,
    ),
    AdmitReason.GPU_UTILIZATION: (
        "gpu_utilization_percent",
        "gpu_utilization_overloaded",
        lambda r: r.gpu.utilization_percent,
    ),
}
assert tuple(_WATCHED) == RESOURCE_REASONS
# The ``ResourceState`` field holding each watched resource's reading.
READING_OF: dict[AdmitReason, str] = {reason: f for reason, (f, _, _) in _WATCHED.items()}


@dataclass(frozen=True)
class ResourceState:
    """The monitor's latest view: readings and the hysteresis state derived from them."""

    cpu_percent: float = 0.0
    memory_percent: float = 0.0
    cpu_overloaded: bool = False
    memory_overloaded: bool = False
    sampled_at: float = 0.0
    cpu_pressure: float | None = None
    memory_pressure: float | None = None
    io_pressure: float | None = None
    gpu_memory_percent: float | None = None
    gpu_utilization_percent: float | None = None
    cpu_pressure_overloaded: bool = False
    memory_pressure_overloaded: bool = False
    io_pressure_overloaded: bool = False
    gpu_memory_overloaded: bool = False
    gpu_utilization_overloaded: bool = False

    def advance(self, readings: Readings, thresholds: Resources, now: float) -> ResourceState:
        """The next state: each reading against its threshold, with hysteresis. An absent
        reading (None) or an unconfigured threshold is never overloaded."""
        changes: dict[str, Any] = {"sampled_at": now}
        for reading_field, flag, threshold_of in _WATCHED.values():
            reading: float | None = getattr(readings, reading_field)
            t = threshold_of(thresholds)
            changes[reading_field] = reading
            changes[flag] = (
                reading is not None
                and t is not None
                and next_overloaded(getattr(self, flag), reading, t)
            )
        return replace(self, **changes)

    def overloaded(self) -> dict[AdmitReason, bool]:
        """Each watched resource's flag, by reason code (``/status``, the metric)."""
        return {reason: getattr(self, flag) for reason, (_, flag, _) in _WATCHED.items()}

    def message_fields(self) -> dict[str, float]:
        """The readings a rejection message may quote (an absent one reads 0)."""
        return {f: getattr(self, f) or 0.0 for f, _, _ in _WATCHED.values()}


class DurationEstimator:
    """Expected generation duration: the median of the last ``window`` completed ones.

    The median ignores the odd 30-second failure or 40-minute outlier that a
    mean would chase. Until anything completes it answers the configured prior.
    """

    def __init__(self, prior: float, window: int = 20):
        self.prior = prior
        self._recent: deque[float] = deque(maxlen=window)

    def observe(self, seconds: float) -> None:
        self._recent.append(seconds)

    @property
    def samples(self) -> int:
        return len(self._recent)

    @property
    def expected(self) -> float:
        return statistics.median(self._recent) if self._recent else self.prior


@dataclass(frozen=True)
class Limits:
    """The admission settings the gate decides against (a projection of the config)."""

    max_in_flight: int
    retry_after_default: int


@dataclass(frozen=True)
class Rejection:
    reason: str  # an AdmitReason: busy, cpu, memory, ..., draining
    retry_after: int


@dataclass
class Ticket:
    """One admitted generation. ``release`` frees its slot exactly once."""

    route: str
    started_at: float
    _on_release: Callable[[Ticket], None] = field(repr=False)
    released: bool = False

    def release(self) -> bool:
        """Free the slot; True the first time, False (and no effect) afterwards."""
        if self.released:
            return False
        self.released = True
        self._on_release(self)
        return True


def retry_after(expected: float, running_elapsed: list[float], default: int) -> int:
    """Honest Retry-After: time left of the generation closest to finishing, ≥ 1 s.

    With nothing running there is nothing to wait for that we can measure, so
    the configured default applies.
    """
    if not running_elapsed:
        return default
    remaining = expected - max(running_elapsed)
    return max(1, math.ceil(remaining))


def reasons(
    *, in_flight: int, limits: Limits, resources: ResourceState, draining: bool
) -> list[str]:
    """Every reason a new admit request is refused now, most useful first (see above)."""
    out: list[str] = []
    if draining:
        out.append(AdmitReason.DRAINING)
    if in_flight >= limits.max_in_flight:
        out.append(AdmitReason.BUSY)
    out += [reason for reason, (_, flag, _) in _WATCHED.items() if getattr(resources, flag)]
    return out


def decide(
    *,
    in_flight: int,
    limits: Limits,
    resources: ResourceState,
    draining: bool,
    expected: float,
    running_elapsed: list[float],
) -> Rejection | None:
    """None to admit, else the rejection with its (first) reason and Retry-After."""
    why = reasons(in_flight=in_flight, limits=limits, resources=resources, draining=draining)
    if not why:
        return None
    if why[0] == "draining":  # the wait is for a new instance, not for this engine
        return Rejection("draining", limits.retry_after_default)
    return Rejection(why[0], retry_after(expected, running_elapsed, limits.retry_after_default))


class Gate:
    """The exact in-flight counter plus the decision, in one synchronous call.

    ``limits``, ``resources`` and ``draining`` are plain attributes the adapters
    replace (reload, monitor, shutdown); reading them is free.
    """

    def __init__(self, limits: Limits, estimator: DurationEstimator):
        self.limits = limits
        self.estimator = estimator
        self.resources = ResourceState()
        self.draining = False
        self._tickets: dict[int, Ticket] = {}
        # Called right after a slot frees, in the same synchronous step (the waiting
        # room dispatches its next job there, before any new arrival can take the slot).
        self.on_free: Callable[[], None] | None = None
        # Set while no ticket is held; only ``wait_idle`` awaits it (the shutdown drain).
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return len(self._tickets)

    def running(self) -> list[Ticket]:
        return sorted(self._tickets.values(), key=lambda t: t.started_at)

    def elapsed(self, now: float) -> list[float]:
        return [now - t.started_at for t in self._tickets.values()]

    def check(self, now: float) -> Rejection | None:
        """The decision a new admit request would get now, without taking a slot."""
        return decide(
            in_flight=self.in_flight,
            limits=self.limits,
            resources=self.resources,
            draining=self.draining,
            expected=self.estimator.expected,
            running_elapsed=self.elapsed(now),
        )

    def reasons(self, now: float) -> list[str]:
        """Every reason a new admit request would be refused now (``check`` gives the first)."""
        return reasons(
            in_flight=self.in_flight,
            limits=self.limits,
            resources=self.resources,
            draining=self.draining,
        )

    def try_admit(self, route: str, now: float) -> Ticket | Rejection:
        rejection = self.check(now)
        if rejection is not None:
            return rejection
        ticket = Ticket(route=route, started_at=now, _on_release=self._release)
        self._tickets[id(ticket)] = ticket
        self._idle.clear()
        return ticket

    async def wait_idle(self) -> None:
        """Return once no ticket is held: at once if none is, else when the last is released."""
        while self._tickets:
            await self._idle.wait()

    def _release(self, ticket: Ticket) -> None:
        del self._tickets[id(ticket)]
        if not self._tickets:
            self._idle.set()
        if self.on_free is not None:
            self.on_free()
