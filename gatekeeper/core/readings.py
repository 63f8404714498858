"""The host's readings and their hysteresis (PURE): what the resource monitor
samples (``Readings``), and the overloaded state admission decides on
(``ResourceState``), one threshold per signal: trip above ``reject_above``, clear
only below ``recover_below``. ``admission`` reads the state; the monitor advances it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from gatekeeper.config import Resources, Threshold
from gatekeeper.core.vocab import RESOURCE_REASONS, AdmitReason


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


def overloaded_reasons(state: ResourceState) -> list[AdmitReason]:
    """The signals over their threshold in ``state``, in ``RESOURCE_REASONS`` order."""
    return [reason for reason, (_, flag, _) in _WATCHED.items() if getattr(state, flag)]
