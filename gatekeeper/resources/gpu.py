"""GPU readings through NVML (the optional ``gatekeeper[gpu]`` extra, ``nvidia-ml-py``).

An engine that runs its model on a GPU fails a generation with CUDA out of
memory long before the host looks busy, so GPU memory used % and utilisation %
per device are signals too (issue #11 §3). NVML sits behind ``Nvml``, a
Protocol of the four calls gatekeeper makes, so the tests drive a fake; the real
adapter imports ``pynvml`` lazily, on first use, never at import time.

Absent is a state, not a crash: no ``nvidia-ml-py`` (ImportError), no driver or
no ``libnvidia-ml.so`` (NVMLError at init), no device -> ``NvmlUnavailable``
with the reason that ``/status`` and ``gatekeeper check`` print. A device that
fails at one sample (a GPU fallen off the bus, a timeout) keeps its previous
reading; the caller logs the problem once.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from typing import Any, Protocol


class NvmlUnavailable(Exception):
    """NVML cannot be used at all; ``str()`` is the reason shown to people."""


class NvmlDeviceError(Exception):
    """One device could not be read this time."""


class Nvml(Protocol):
    """The NVML calls gatekeeper makes (a fake in tests, ``PynvmlAdapter`` for real)."""

    def device_count(self) -> int: ...

    def name(self, index: int) -> str: ...

    def memory(self, index: int) -> tuple[int, int]:
        """(used, total) bytes; raises NvmlDeviceError."""
        ...

    def utilization(self, index: int) -> float:
        """Percent of the last sample period a kernel ran; raises NvmlDeviceError."""
        ...

    def close(self) -> None: ...


class PynvmlAdapter:
    """``Nvml`` over ``pynvml`` (package ``nvidia-ml-py``), initialised once."""

    def __init__(self) -> None:
        try:
            self._nv: Any = importlib.import_module("pynvml")
        except ImportError as exc:
            raise NvmlUnavailable(
                "nvidia-ml-py not installed (pip install 'gatekeeper[gpu]')"
            ) from exc
        try:
            self._nv.nvmlInit()
        except self._nv.NVMLError as exc:
            raise NvmlUnavailable(f"NVML: {exc}") from exc
        self._handles: dict[int, Any] = {}

    def _handle(self, index: int) -> Any:
        if index not in self._handles:
            self._handles[index] = self._nv.nvmlDeviceGetHandleByIndex(index)
        return self._handles[index]

    def device_count(self) -> int:
        try:
            return int(self._nv.nvmlDeviceGetCount())
        except self._nv.NVMLError as exc:
            raise NvmlUnavailable(f"NVML: {exc}") from exc

    def name(self, index: int) -> str:
        try:
            name = self._nv.nvmlDeviceGetName(self._handle(index))
        except self._nv.NVMLError:
            return f"GPU {index}"
        return name.decode() if isinstance(name, bytes) else str(name)

    def memory(self, index: int) -> tuple[int, int]:
        try:
            info = self._nv.nvmlDeviceGetMemoryInfo(self._handle(index))
        except self._nv.NVMLError as exc:
            raise NvmlDeviceError(f"GPU {index}: NVML: {exc}") from exc
        return int(info.used), int(info.total)

    def utilization(self, index: int) -> float:
        try:
            rates = self._nv.nvmlDeviceGetUtilizationRates(self._handle(index))
        except self._nv.NVMLError as exc:
            raise NvmlDeviceError(f"GPU {index}: NVML: {exc}") from exc
        return float(rates.gpu)

    def close(self) -> None:
        with contextlib.suppress(self._nv.NVMLError):
            self._nv.nvmlShutdown()


@dataclass(frozen=True)
class GpuDevice:
    """One device's reading (percentages; None: not reported, e.g. an injected file)."""

    index: int
    name: str
    memory_percent: float | None
    utilization_percent: float | None
    memory_used: int | None = None  # bytes
    memory_total: int | None = None


def device_reading(index: int, name: str, used: int, total: int, util: float) -> GpuDevice:
    pct = 100.0 * used / total if total > 0 else 0.0
    return GpuDevice(index, name, pct, util, used, total)


class GpuReader:
    """Reads the watched devices every sample.

    ``devices`` None watches every device NVML sees; indices it does not see are an
    ``NvmlUnavailable`` when none is left, else dropped (``skipped`` says which).
    """

    def __init__(self, nvml: Nvml, devices: tuple[int, ...] | None):
        self.nvml = nvml
        count = nvml.device_count()
        wanted = tuple(range(count)) if devices is None else devices
        self.indices = tuple(i for i in wanted if i < count)
        self.skipped = tuple(i for i in wanted if i >= count)
        if not self.indices:
            have = f"{count} device(s)" if count else "no device"
            raise NvmlUnavailable(
                f"NVML sees {have}" + (f"; configured {list(wanted)}" if wanted else "")
            )
        self.names = {i: nvml.name(i) for i in self.indices}
        self._last: dict[int, GpuDevice] = {}

    def read(self) -> tuple[tuple[GpuDevice, ...], list[str]]:
        """Every watched device (a failing one at its previous reading, or left out if it
        never answered) and the problems of this sample."""
        problems: list[str] = []
        for i in self.indices:
            try:
                used, total = self.nvml.memory(i)
                util = self.nvml.utilization(i)
            except NvmlDeviceError as exc:
                problems.append(str(exc))
                continue
            self._last[i] = device_reading(i, self.names[i], used, total, util)
        return tuple(self._last[i] for i in self.indices if i in self._last), problems

    def close(self) -> None:
        self.nvml.close()
