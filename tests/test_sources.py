"""Which signals are live, and where readings come from: fixture trees and a fake NVML."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from test_cgroup import GiB, v2_tree
from test_gpu import FakeNvml

from gatekeeper.config import Gpu, PressureThreshold, Resources
from gatekeeper.resources.gpu import Nvml, NvmlUnavailable
from gatekeeper.resources.psi import Pressure
from gatekeeper.resources.samplers import HostSampler, Sample, SampleError, file_sampler, probe

PSI = "some avg10=4.00 avg60=0 avg300=0 total=1\nfull avg10=1.00 avg60=0 avg300=0 total=1\n"


def host_psi(root: Path, text: str = PSI) -> None:
    d = root / "proc/pressure"
    d.mkdir(parents=True, exist_ok=True)
    for r in ("cpu", "memory", "io"):
        (d / r).write_text(text)


def no_gpu() -> Nvml:
    raise NvmlUnavailable("nvidia-ml-py not installed (pip install 'gatekeeper[gpu]')")


DEFAULT = Resources()


def sampler(
    root: Path,
    res: Resources = DEFAULT,
    nvml: Callable[[], Nvml] = no_gpu,
    clock: Callable[[], float] = lambda: 0.0,
) -> HostSampler:
    return HostSampler(
        res, root=root, nvml=nvml, clock=clock, host_cpu=lambda: 33.0, host_memory=lambda: 44.0
    )


def v1_host(root: Path) -> None:
    (root / "sys/fs/cgroup/memory").mkdir(parents=True)
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text("4:memory:/x\n0::/\n")


def test_v2_cgroup_with_limits_reads_relative_to_them(tmp_path: Path) -> None:
    """auto, own cgroup with memory.max and cpu.max: CPU and memory relative to them."""
    d = v2_tree(tmp_path, "/kubepods/pod1")
    now = [0.0]
    s = sampler(tmp_path, clock=lambda: now[0])
    (d / "cpu.stat").write_text("usage_usec 1500000\n")  # +0.5 core-s in 1 s of 2 cores
    now[0] = 1.0
    got = s()
    assert (got.cpu_percent, got.memory_percent) == (25.0, 50.0)
    assert got.signals["cgroup"].source == "/kubepods/pod1 (memory.max 16 GiB, cpu.max 2 cores)"
    assert got.signals["cpu"].source == "cgroup /kubepods/pod1 (cpu.max 2 cores)"
    assert got.signals["memory"].source == "cgroup /kubepods/pod1 (memory.max 16 GiB)"
    assert got.cgroup is not None and got.cgroup.memory_max == 16 * GiB


def test_v2_cgroup_with_max_falls_back_to_the_host(tmp_path: Path) -> None:
    """auto, own cgroup with no limit ("max"): host readings, and the cgroup reported
    absent with why (gatekeeper's own usage alone says nothing about the engine)."""
    v2_tree(tmp_path, "/system.slice/gk.service", memory_max="max\n", cpu_max="max 100000\n")
    got = sampler(tmp_path)()
    assert (got.cpu_percent, got.memory_percent) == (33.0, 44.0)
    assert got.signals["cgroup"].reason == (
        "own cgroup /system.slice/gk.service has no memory.max or cpu.max limit"
    )
    assert got.signals["cpu"].source == got.signals["memory"].source == "host (psutil)"


def test_named_cgroup_with_only_a_memory_limit(tmp_path: Path) -> None:
    """A named cgroup is used as it is: memory relative to memory.max, CPU host-wide
    because cpu.max is max."""
    v2_tree(tmp_path, "/system.slice/songgen.service", cpu_max="max 100000\n")
    got = sampler(tmp_path, Resources(cgroup="/system.slice/songgen.service"))()
    assert (got.cpu_percent, got.memory_percent) == (33.0, 50.0)
    assert got.signals["cgroup"].live
    assert got.signals["cpu"].source == "host (psutil)"


def test_v1_host_reports_cgroup_absent_and_reads_the_host(tmp_path: Path) -> None:
    """A v1/hybrid host: cgroup absent with the reason; psutil; PSI from /proc/pressure."""
    v1_host(tmp_path)
    host_psi(tmp_path)
    got = sampler(tmp_path)()
    assert (got.cpu_percent, got.memory_percent) == (33.0, 44.0)
    assert got.signals["cgroup"].reason == (
        "no cgroup v2 at /sys/fs/cgroup, a cgroup v1 or hybrid host"
    )
    assert got.signals["psi"].source == "/proc/pressure (cpu, memory, io)"
    assert got.pressure["memory"] == Pressure(4.0, 1.0)


def test_cgroup_pressure_is_preferred_when_the_cgroup_is_used(tmp_path: Path) -> None:
    """With a v2 cgroup in use, PSI comes from its *.pressure files, not the host's."""
    d = v2_tree(tmp_path, "/system.slice/songgen.service")
    host_psi(tmp_path)
    for r in ("cpu", "memory", "io"):
        (d / f"{r}.pressure").write_text(PSI.replace("1.00", "7.00"))
    got = sampler(tmp_path, Resources(cgroup="/system.slice/songgen.service"))()
    assert got.signals["psi"].source == "cgroup /system.slice/songgen.service (cpu, memory, io)"
    assert got.pressure["io"].full == 7.0


def test_no_psi_is_absent_with_a_reason(tmp_path: Path) -> None:
    """No /proc/pressure: PSI absent, saying which kernels lack it; no pressure readings."""
    v1_host(tmp_path)
    got = sampler(tmp_path)()
    assert not got.signals["psi"].live
    assert "/proc/pressure unreadable" in got.signals["psi"].reason
    assert "kernel < 4.20" in got.signals["psi"].reason
    assert got.pressure == {}
    assert got.readings(Resources()).memory_pressure is None


def test_garbage_psi_is_absent(tmp_path: Path) -> None:
    """A garbage pressure file: absent with the parse error, never an exception."""
    v1_host(tmp_path)
    host_psi(tmp_path, "nonsense\n")
    got = sampler(tmp_path)()
    assert not got.signals["psi"].live and "no 'some' line" in got.signals["psi"].reason


def test_named_cgroup_missing_then_appearing(tmp_path: Path) -> None:
    """The engine's cgroup absent at start (its service not up yet) is found later."""
    v2_tree(tmp_path, "/other")
    s = sampler(tmp_path, Resources(cgroup="/system.slice/songgen.service"))
    first = s()
    assert (
        first.signals["cgroup"].reason
        == "no cgroup /system.slice/songgen.service under /sys/fs/cgroup"
    )
    assert first.memory_percent == 44.0
    d = tmp_path / "sys/fs/cgroup/system.slice/songgen.service"
    d.mkdir(parents=True)
    (d / "memory.max").write_text(f"{4 * GiB}\n")
    (d / "memory.current").write_text(f"{GiB}\n")
    (d / "memory.stat").write_text("inactive_file 0\n")
    (d / "cpu.stat").write_text("usage_usec 0\n")
    second = s()
    assert second.signals["cgroup"].live and second.memory_percent == 25.0


def test_cgroup_garbage_mid_run_falls_back_and_reports(tmp_path: Path) -> None:
    """A cgroup file turning to garbage: host readings this tick, the problem reported."""
    d = v2_tree(tmp_path, "/kubepods/pod1")
    s = sampler(tmp_path)
    assert s().memory_percent == 50.0
    (d / "memory.max").write_text("lots\n")
    got = s()
    assert got.memory_percent == 44.0 and not got.signals["cgroup"].live
    assert got.problems and "cgroup /kubepods/pod1" in got.problems[0]


def test_cgroup_none_is_host_wide(tmp_path: Path) -> None:
    """cgroup: none never reads /sys/fs/cgroup, even where limits exist."""
    v2_tree(tmp_path, "/kubepods/pod1")
    got = sampler(tmp_path, Resources(cgroup="none"))()
    assert got.memory_percent == 44.0
    assert got.signals["cgroup"].reason == "off (admission.resources.cgroup: none)"


def test_gpu_present_reads_every_device(tmp_path: Path) -> None:
    """A working NVML: gpu live with device names; the busiest device counts."""
    v1_host(tmp_path)
    nv = FakeNvml([(4 * GiB, 16 * GiB, 20.0), (12 * GiB, 16 * GiB, 90.0)])
    got = sampler(tmp_path, nvml=lambda: nv)()
    assert got.signals["gpu"].source == "NVML (0 Fake A0, 1 Fake A1)"
    r = got.readings(Resources())
    assert (r.gpu_memory_percent, r.gpu_utilization_percent) == (75.0, 90.0)


def test_gpu_absent_without_nvidia_ml_py(tmp_path: Path) -> None:
    """No nvidia-ml-py: gpu absent with the reason, the rest unaffected."""
    v1_host(tmp_path)
    got = sampler(tmp_path)()
    assert got.signals["gpu"].reason.startswith("nvidia-ml-py not installed")
    assert got.gpus == () and got.readings(Resources()).gpu_memory_percent is None


def test_gpu_driver_error_at_init_is_absent(tmp_path: Path) -> None:
    """NVMLError at init (no driver): absent with NVML's reason."""

    def driverless() -> Nvml:
        raise NvmlUnavailable("NVML: Driver Not Loaded")

    v1_host(tmp_path)
    assert sampler(tmp_path, nvml=driverless)().signals["gpu"].reason == "NVML: Driver Not Loaded"


def test_gpu_unexpected_failure_at_init_is_absent(tmp_path: Path) -> None:
    """Any other exception from NVML's start (a broken install) is absent, not a crash."""

    def broken() -> Nvml:
        raise OSError("libnvidia-ml.so.1: wrong ELF class")

    v1_host(tmp_path)
    reason = sampler(tmp_path, nvml=broken)().signals["gpu"].reason
    assert reason.startswith("NVML failed: OSError")


def test_gpu_devices_empty_is_off(tmp_path: Path) -> None:
    """devices: [] never touches NVML."""

    def explode() -> Nvml:
        raise AssertionError("NVML must not be opened")

    v1_host(tmp_path)
    got = sampler(tmp_path, Resources(gpu=Gpu(devices=())), nvml=explode)()
    assert got.signals["gpu"].reason == "off (admission.resources.gpu.devices: [])"


def test_readings_pick_the_configured_psi_line(tmp_path: Path) -> None:
    """Admission compares the configured line: full by default for memory, some if set."""
    v1_host(tmp_path)
    host_psi(tmp_path)
    got = sampler(tmp_path)()
    assert got.readings(Resources()).memory_pressure == 1.0
    some = Resources(memory_pressure=PressureThreshold(10, 5, "some"))
    assert got.readings(some).memory_pressure == 4.0
    assert got.readings(Resources()).cpu_pressure == 4.0  # cpu: some by default


@pytest.mark.parametrize(
    ("data", "pressure", "gpu"),
    [
        ({}, {}, (None, None)),
        ({"memory_pressure": 30}, {"memory": Pressure(30.0, 30.0)}, (None, None)),
        (
            {"io_pressure": {"some": 5, "full": 2}, "gpu_memory_percent": 97},
            {"io": Pressure(5.0, 2.0)},
            (97.0, None),
        ),
        ({"gpu_utilization_percent": 100}, {}, (None, 100.0)),
    ],
)
def test_file_source_injects_the_new_readings(
    tmp_path: Path,
    data: dict[str, object],
    pressure: dict[str, Pressure],
    gpu: tuple[float | None, float | None],
) -> None:
    """The file source carries PSI and GPU readings too; cpu/memory keys as before."""
    f = tmp_path / "res.json"
    f.write_text(json.dumps({"cpu_percent": 10, "memory_percent": 20, **data}))
    got = file_sampler(str(f))()
    assert (got.cpu_percent, got.memory_percent) == (10.0, 20.0)
    assert dict(got.pressure) == pressure
    r = got.readings(Resources())
    assert (r.gpu_memory_percent, r.gpu_utilization_percent) == gpu
    assert got.signals["psi"].live is bool(pressure)
    assert got.signals["gpu"].live is (gpu != (None, None))


@pytest.mark.parametrize(
    "extra",
    [{"memory_pressure": "high"}, {"io_pressure": {"full": 1}}, {"gpu_memory_percent": True}],
)
def test_file_source_bad_new_readings_are_sample_errors(
    tmp_path: Path, extra: dict[str, object]
) -> None:
    """A bad injected PSI/GPU value is a SampleError (previous readings kept)."""
    f = tmp_path / "res.json"
    f.write_text(json.dumps({"cpu_percent": 10, "memory_percent": 20, **extra}))
    with pytest.raises(SampleError):
        file_sampler(str(f))()


def test_probe_never_raises(tmp_path: Path) -> None:
    """probe (gatekeeper check) turns an unreadable file source into a reason."""
    got = probe(Resources(source="file", file=str(tmp_path / "missing.json")))
    assert isinstance(got, str) and "missing.json" in got
    assert isinstance(probe(Resources()), Sample)
