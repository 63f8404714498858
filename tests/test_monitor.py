"""The resource monitor: file source, psutil smoothing, hysteresis, and bad readings."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from test_gpu import FakeNvml

from gatekeeper.config import Admission, Config, Gpu, PressureThreshold, Resources, Threshold
from gatekeeper.core.readings import ResourceState
from gatekeeper.resources.monitor import Monitor, Reading, SampleError
from gatekeeper.resources.samplers import HostSampler, Sample


def cfg_with(resources: Resources) -> Config:
    return replace(Config(), admission=replace(Admission(), resources=resources))


def test_file_source_drives_hysteresis(tmp_path: Path) -> None:
    """Readings from the file walk the hysteresis: trip above 90, clear below 75."""
    f = tmp_path / "res.json"
    cfg = cfg_with(Resources(source="file", file=str(f)))
    published: list[ResourceState] = []
    mon = Monitor(lambda: cfg, published.append, clock=lambda: 0.0)
    states = []
    for cpu in (50, 95, 80, 74):
        f.write_text(json.dumps({"cpu_percent": cpu, "memory_percent": 10}))
        states.append(mon.sample_once().cpu_overloaded)
    assert states == [False, True, True, False]
    assert published[-1].cpu_percent == 74  # the file is taken as-is, never smoothed


def test_bad_file_keeps_previous_readings(tmp_path: Path) -> None:
    """A missing or broken readings file keeps the last good state instead of failing open."""
    f = tmp_path / "res.json"
    cfg = cfg_with(Resources(source="file", file=str(f)))
    mon = Monitor(lambda: cfg, lambda s: None, clock=lambda: 0.0)
    f.write_text('{"cpu_percent": 99, "memory_percent": 10}')
    assert mon.sample_once().cpu_overloaded
    for broken in ("{", '{"cpu_percent": "hot", "memory_percent": 1}', "[]"):
        f.write_text(broken)
        assert mon.sample_once().cpu_percent == 99
    f.unlink()
    assert mon.sample_once().cpu_overloaded


def test_psutil_source_is_smoothed() -> None:
    """The psutil CPU reading is an exponential moving average with weight cpu_smoothing."""
    readings = iter([(100.0, 50.0), (0.0, 50.0), (0.0, 50.0)])

    def factory(_: Resources) -> Callable[[], Reading]:
        return lambda: next(readings)

    cfg = cfg_with(Resources(cpu_smoothing=0.5, cpu_percent=Threshold(90, 75)))
    mon = Monitor(lambda: cfg, lambda s: None, clock=lambda: 0.0, sampler_factory=factory)
    assert [mon.sample_once().cpu_percent for _ in range(3)] == [100.0, 50.0, 25.0]


def test_sampler_error_is_contained() -> None:
    """A sampler raising SampleError leaves the state as it was."""

    def factory(_: Resources) -> Callable[[], Reading]:
        def sample() -> Reading:
            raise SampleError("boom")

        return sample

    mon = Monitor(lambda: Config(), lambda s: None, clock=lambda: 0.0, sampler_factory=factory)
    assert mon.sample_once() == ResourceState()


def test_real_psutil_sample_is_plausible() -> None:
    """The default psutil sampler returns percentages in 0..100."""
    mon = Monitor(lambda: Config(), lambda s: None, clock=lambda: 1.0)
    st = mon.sample_once()
    assert 0.0 <= st.cpu_percent <= 100.0 and 0.0 < st.memory_percent <= 100.0


class Stop(Exception):
    """Raised by a fake sleep to end an endless loop after a few steps."""


def test_poll_once_logs_overload_as_warning_and_recovery_as_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each step logs a change of the overload state (WARNING when worse, INFO when
    better) and nothing when it stays the same; it returns the live sample interval."""
    readings = iter([(50.0, 10.0), (95.0, 10.0), (96.0, 10.0), (60.0, 10.0)])

    def factory(_: Resources) -> Callable[[], Reading]:
        return lambda: next(readings)

    res = Resources(cpu_smoothing=1.0)
    cfg = replace(Config(), admission=replace(Admission(sample_interval=7.0), resources=res))
    mon = Monitor(lambda: cfg, lambda s: None, clock=lambda: 0.0, sampler_factory=factory)
    caplog.set_level(logging.INFO, logger="gatekeeper.monitor")
    logged = []
    for _ in range(4):
        assert mon.poll_once() == 7.0
        logged.append([(r.levelname, r.getMessage()) for r in caplog.records])
        caplog.clear()
    assert logged[0] == [] and logged[2] == []
    assert [lvl for lvl, _ in logged[1]] == ["WARNING"]
    assert "cpu 95.0% overloaded=True" in logged[1][0][1]
    assert [lvl for lvl, _ in logged[3]] == ["INFO"]
    assert "overloaded=False" in logged[3][0][1]


def test_poll_once_survives_a_sampler_bug(caplog: pytest.LogCaptureFixture) -> None:
    """An unexpected exception in sampling is logged and the step still returns."""

    def factory(_: Resources) -> Callable[[], Reading]:
        def sample() -> Reading:
            raise RuntimeError("bug")

        return sample

    mon = Monitor(lambda: Config(), lambda s: None, clock=lambda: 0.0, sampler_factory=factory)
    assert mon.poll_once() == Config().admission.sample_interval
    assert any("resource sampling failed" in r.getMessage() for r in caplog.records)


async def test_run_sleeps_the_live_interval_between_steps(tmp_path: Path) -> None:
    """run sleeps first (the caller took the first sample), then steps; a changed
    sample_interval applies at the next sleep."""
    f = tmp_path / "res.json"
    f.write_text(json.dumps({"cpu_percent": 10, "memory_percent": 10}))
    cfgs = [cfg_with(Resources(source="file", file=str(f)))]
    published: list[ResourceState] = []
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 2:
            cfgs.append(replace(cfgs[0], admission=replace(cfgs[0].admission, sample_interval=3)))
        if len(slept) > 3:
            raise Stop

    mon = Monitor(lambda: cfgs[-1], published.append, clock=lambda: 0.0, sleep=sleep)
    with pytest.raises(Stop):
        await mon.run()
    assert slept == [1.0, 1.0, 3.0, 3.0]
    assert len(published) == 3  # one sample after each completed sleep


def test_overload_present_at_the_first_sample_is_logged(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """The app takes the first sample itself (sample_once, silent) before the loop runs;
    the loop's first step still logs that overload as a WARNING, once."""
    f = tmp_path / "res.json"
    f.write_text(json.dumps({"cpu_percent": 95, "memory_percent": 10}))
    cfg = cfg_with(Resources(source="file", file=str(f)))
    mon = Monitor(lambda: cfg, lambda s: None, clock=lambda: 0.0)
    caplog.set_level(logging.INFO, logger="gatekeeper.monitor")
    assert mon.sample_once().cpu_overloaded
    assert caplog.records == []
    mon.poll_once()
    mon.poll_once()
    changes = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(changes) == 1 and changes[0][0] == "WARNING", changes
    assert "cpu 95.0% overloaded=True" in changes[0][1]


# --------------------------------------------------------------------------- issue #11 §3


def test_file_source_drives_a_pressure_threshold(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An injected memory_pressure walks its hysteresis; the change is logged by name."""
    f = tmp_path / "res.json"
    res = Resources(source="file", file=str(f), memory_pressure=PressureThreshold(10, 2, "full"))
    mon = Monitor(lambda: cfg_with(res), lambda s: None, clock=lambda: 0.0)
    caplog.set_level(logging.INFO, logger="gatekeeper.monitor")
    seen = []
    for p in (1, 11, 5, 1):
        f.write_text(json.dumps({"cpu_percent": 5, "memory_percent": 5, "memory_pressure": p}))
        mon.poll_once()
        seen.append(mon.state.memory_pressure_overloaded)
    assert seen == [False, True, True, False]
    changes = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [lvl for lvl, _ in changes] == ["WARNING", "INFO"]
    assert "memory_pressure 11.0% overloaded=True" in changes[0][1]
    assert "memory_pressure 1.0% overloaded=False" in changes[1][1]


def _gpu_monitor(tmp_path: Path, nv: FakeNvml, cfgs: list[Config]) -> tuple[Monitor, list[Sample]]:
    def factory(res: Resources) -> HostSampler:
        return HostSampler(
            res, root=tmp_path, nvml=lambda: nv, host_cpu=lambda: 1.0, host_memory=lambda: 2.0
        )

    samples: list[Sample] = []
    mon = Monitor(
        lambda: cfgs[-1],
        lambda s: None,
        clock=lambda: 0.0,
        sampler_factory=factory,
        on_sample=samples.append,
    )
    return mon, samples


def test_gpu_threshold_with_a_fake_nvml(tmp_path: Path) -> None:
    """A fake NVML's busiest device trips gpu_memory; on_sample gets every sample."""
    nv = FakeNvml([(50, 100, 10.0), (96, 100, 10.0)])
    res = Resources(gpu=Gpu(memory_percent=Threshold(95, 85)))
    mon, samples = _gpu_monitor(tmp_path, nv, [cfg_with(res)])
    st = mon.sample_once()
    assert st.gpu_memory_overloaded and st.gpu_memory_percent == 96.0
    assert samples[-1].signals["gpu"].live and len(samples[-1].gpus) == 2


def test_gpu_device_error_mid_run_keeps_reading_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A device failing for several ticks keeps its reading; one WARNING, one recovery."""
    nv = FakeNvml([(96, 100, 10.0)])
    res = Resources(gpu=Gpu(memory_percent=Threshold(95, 85)))
    mon, _ = _gpu_monitor(tmp_path, nv, [cfg_with(res)])
    caplog.set_level(logging.INFO, logger="gatekeeper.monitor")
    assert mon.sample_once().gpu_memory_overloaded
    nv.failing.add(0)
    for _ in range(3):
        st = mon.sample_once()
        assert st.gpu_memory_overloaded and st.gpu_memory_percent == 96.0
    nv.failing.clear()
    mon.sample_once()
    msgs = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert msgs == [
        ("WARNING", "resource signal problem (previous reading kept): GPU 0: NVML: GPU is lost"),
        ("INFO", "resource signals recovered"),
    ]


def test_gpu_absent_import_error_is_no_crash(tmp_path: Path) -> None:
    """The default adapter without nvidia-ml-py: the monitor samples, gpu absent."""
    import sys

    mp = pytest.MonkeyPatch()
    mp.setitem(sys.modules, "pynvml", None)
    try:
        samples: list[Sample] = []
        mon = Monitor(lambda: Config(), lambda s: None, clock=lambda: 0.0, on_sample=samples.append)
        mon.sample_once()
    finally:
        mp.undo()
    assert samples[-1].signals["gpu"].reason.startswith("nvidia-ml-py not installed")
    assert samples[-1].signals["cpu"].live


def test_reload_changing_gpu_devices_rebuilds_and_closes_nvml(tmp_path: Path) -> None:
    """A reload that changes the sampler's inputs closes the old one (NVML shutdown)."""
    nv = FakeNvml([(1, 100, 1.0), (1, 100, 1.0)])
    cfgs = [cfg_with(Resources())]
    mon, samples = _gpu_monitor(tmp_path, nv, cfgs)
    mon.sample_once()
    assert not nv.closed
    cfgs.append(cfg_with(Resources(gpu=Gpu(devices=(1,)))))
    mon.sample_once()
    assert nv.closed and [d.index for d in samples[-1].gpus] == [1]
