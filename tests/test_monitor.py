"""The resource monitor: file source, psutil smoothing, hysteresis, and bad readings."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from gatekeeper.admission import ResourceState
from gatekeeper.config import Admission, Config, Resources, Threshold
from gatekeeper.monitor import Monitor, Reading, SampleError


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
