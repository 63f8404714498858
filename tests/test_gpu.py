"""GPU readings behind the Nvml seam: a fake NVML, and the real adapter's absent paths."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from gatekeeper.resources.gpu import GpuReader, NvmlDeviceError, NvmlUnavailable, PynvmlAdapter

GiB = 1 << 30


class FakeNvml:
    """Devices with (used, total, utilisation); ``failing`` indices raise at a sample."""

    def __init__(self, devices: list[tuple[int, int, float]]):
        self.devices = devices
        self.failing: set[int] = set()
        self.closed = False

    def device_count(self) -> int:
        return len(self.devices)

    def name(self, index: int) -> str:
        return f"Fake A{index}"

    def memory(self, index: int) -> tuple[int, int]:
        if index in self.failing:
            raise NvmlDeviceError(f"GPU {index}: NVML: GPU is lost")
        used, total, _ = self.devices[index]
        return used, total

    def utilization(self, index: int) -> float:
        if index in self.failing:
            raise NvmlDeviceError(f"GPU {index}: NVML: GPU is lost")
        return self.devices[index][2]

    def close(self) -> None:
        self.closed = True


def test_reader_reads_every_device_by_default() -> None:
    """devices None: every device NVML sees, memory % from used/total."""
    nv = FakeNvml([(8 * GiB, 16 * GiB, 30.0), (15 * GiB, 16 * GiB, 99.0)])
    devices, problems = GpuReader(nv, None).read()
    assert problems == []
    assert [(d.index, d.name, d.memory_percent, d.utilization_percent) for d in devices] == [
        (0, "Fake A0", 50.0, 30.0),
        (1, "Fake A1", 93.75, 99.0),
    ]


def test_reader_watches_only_the_configured_devices() -> None:
    """devices (1,) reads device 1 only; an index NVML does not see is skipped."""
    nv = FakeNvml([(1, 2, 0.0), (1, 4, 10.0)])
    reader = GpuReader(nv, (1, 5))
    assert reader.indices == (1,) and reader.skipped == (5,)
    assert [d.index for d in reader.read()[0]] == [1]


@pytest.mark.parametrize(
    ("devices", "wanted", "reason"),
    [
        ([], None, "NVML sees no device"),
        ([(1, 2, 0.0)], (3,), "NVML sees 1 device(s); configured [3]"),
    ],
)
def test_reader_without_a_device_is_unavailable(
    devices: list[tuple[int, int, float]], wanted: tuple[int, ...] | None, reason: str
) -> None:
    """No device to watch is NvmlUnavailable with the reason people read."""
    with pytest.raises(NvmlUnavailable) as caught:
        GpuReader(FakeNvml(devices), wanted)
    assert str(caught.value) == reason


def test_device_error_mid_run_keeps_the_previous_reading() -> None:
    """A device failing at one sample keeps its last reading and reports the problem."""
    nv = FakeNvml([(4, 8, 20.0), (2, 8, 40.0)])
    reader = GpuReader(nv, None)
    reader.read()
    nv.devices[0] = (8, 8, 90.0)
    nv.failing.add(0)
    devices, problems = reader.read()
    assert [d.memory_percent for d in devices] == [50.0, 25.0]  # device 0 as it was
    assert problems == ["GPU 0: NVML: GPU is lost"]
    nv.failing.clear()
    devices, problems = reader.read()
    assert devices[0].memory_percent == 100.0 and problems == []


def test_a_device_that_never_answered_is_left_out() -> None:
    """A device failing from its first sample has no reading to keep: left out."""
    nv = FakeNvml([(4, 8, 20.0), (2, 8, 40.0)])
    nv.failing.add(1)
    devices, problems = GpuReader(nv, None).read()
    assert [d.index for d in devices] == [0] and len(problems) == 1


def test_close_shuts_nvml_down() -> None:
    """close() reaches the seam (nvmlShutdown for real)."""
    nv = FakeNvml([(1, 2, 0.0)])
    GpuReader(nv, None).close()
    assert nv.closed


def test_real_adapter_without_nvidia_ml_py(monkeypatch: pytest.MonkeyPatch) -> None:
    """No nvidia-ml-py installed: NvmlUnavailable naming the package, never ImportError."""
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    with pytest.raises(NvmlUnavailable, match="nvidia-ml-py not installed"):
        PynvmlAdapter()


@pytest.mark.skipif(
    importlib.util.find_spec("pynvml") is None, reason="nvidia-ml-py not installed here"
)
def test_real_adapter_without_a_driver() -> None:
    """nvidia-ml-py installed on a box without the NVIDIA driver: NVML: <its reason>."""
    try:
        nv = PynvmlAdapter()
    except NvmlUnavailable as exc:
        assert str(exc).startswith("NVML: ")
    else:  # a real GPU box: the adapter works
        assert nv.device_count() >= 0
        nv.close()
