"""The issue #11 §3 keys of admission.resources: cgroup, PSI and GPU thresholds, validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatekeeper.config import (
    ConfigError,
    Gpu,
    PressureThreshold,
    Resources,
    Threshold,
    load_config,
)


def resources(text: str) -> Resources:
    return load_config("admission:\n  resources:\n" + text).admission.resources


def test_defaults_change_nothing() -> None:
    """Unconfigured: own cgroup (auto), no PSI or GPU threshold, every GPU watched."""
    r = Resources()
    assert (r.cgroup, r.cpu_pressure, r.memory_pressure, r.io_pressure) == (
        "auto",
        None,
        None,
        None,
    )
    assert r.gpu == Gpu(devices=None, memory_percent=None, utilization_percent=None)


def test_packaged_rules_yaml_loads_to_the_code_defaults(repo_root: Path) -> None:
    """The documented rules.yaml leaves the new signals exactly at their defaults."""
    r = load_config((repo_root / "rules.yaml").read_text()).admission.resources
    assert r == Resources()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("    cgroup: auto\n", "auto"),
        ("    cgroup: null\n", "auto"),
        ("    cgroup: none\n", "none"),
        ("    cgroup: false\n", "none"),
        ("    cgroup: /system.slice/songgen.service/\n", "/system.slice/songgen.service"),
        ("    cgroup: /\n", "/"),
    ],
)
def test_cgroup_values(text: str, expected: str) -> None:
    """auto / none / a path (trailing slash dropped); null is auto, false is none."""
    assert resources(text).cgroup == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "    memory_pressure: {reject_above: 20, recover_below: 5}\n",
            PressureThreshold(20, 5, "full"),
        ),
        ("    cpu_pressure: {reject_above: 60}\n", PressureThreshold(60, 60, "some")),
        ("    io_pressure: {reject_above: 30, line: some}\n", PressureThreshold(30, 30, "some")),
        ("    memory_pressure: null\n", None),
    ],
)
def test_pressure_thresholds(text: str, expected: PressureThreshold | None) -> None:
    """reject_above is required; recover_below defaults to it; line defaults to full for
    memory and io, some for cpu."""
    r = resources(text)
    got = r.memory_pressure or r.cpu_pressure or r.io_pressure
    assert got == expected


def test_gpu_section() -> None:
    """devices: all, a list, or [] (off); thresholds are plain percent thresholds."""
    r = resources(
        "    gpu:\n      devices: [1, 0, 1]\n"
        "      memory_percent: {reject_above: 95, recover_below: 85}\n"
    )
    assert r.gpu == Gpu(devices=(1, 0), memory_percent=Threshold(95, 85))
    assert type(r.gpu.memory_percent) is Threshold
    assert resources("    gpu: {devices: all}\n").gpu.devices is None
    assert resources("    gpu: {devices: []}\n").gpu.devices == ()


@pytest.mark.parametrize(
    ("text", "line", "path", "fragment"),
    [
        (
            "    memory_pressure: {reject_above: 150}\n",
            3,
            "admission.resources.memory_pressure.reject_above",
            "must be <= 100 (got 150)",
        ),
        (
            "    memory_pressure: {reject_above: high}\n",
            3,
            "admission.resources.memory_pressure.reject_above",
            "must be a finite number (got 'high')",
        ),
        (
            "    memory_pressure:\n      recover_below: 5\n",
            4,  # the mapping's line: the key is missing
            "admission.resources.memory_pressure.reject_above",
            "is required",
        ),
        (
            "    io_pressure: {reject_above: 10, recover_below: 20}\n",
            3,
            "admission.resources.io_pressure.recover_below",
            "must be <= reject_above (10) for hysteresis (got 20.0)",
        ),
        (
            "    cpu_pressure: {reject_above: 10, line: half}\n",
            3,
            "admission.resources.cpu_pressure.line",
            "must be one of some, full (got 'half')",
        ),
        (
            "    cpu_pressure: {reject_above: 10, on: full}\n",
            3,
            "admission.resources.cpu_pressure",
            "keys must be strings (got True)",  # YAML 1.1: bare `on` is a boolean
        ),
        (
            "    memory_pressure: 20\n",
            3,
            "admission.resources.memory_pressure",
            "must be a mapping (got 20)",
        ),
        (
            "    cgroup: system.slice/x\n",
            3,
            "admission.resources.cgroup",
            "(got 'system.slice/x')",
        ),
        (
            "    cgroup: /a/../b\n",
            3,
            "admission.resources.cgroup",
            "(got '/a/../b')",
        ),
        (
            "    gpu:\n      devices: [0, -1]\n",
            4,
            "admission.resources.gpu.devices",
            "list of device indices",
        ),
        (
            "    gpu:\n      utilization_percent: {reject_above: 101}\n",
            4,
            "admission.resources.gpu.utilization_percent.reject_above",
            "must be <= 100 (got 101)",
        ),
        (
            "    gpu:\n      memory: {reject_above: 90}\n",
            4,
            "admission.resources.gpu.memory",
            "unknown key; did you mean 'memory_percent'?",
        ),
        (
            "    memory_presure: {reject_above: 20}\n",
            3,
            "admission.resources.memory_presure",
            "unknown key; did you mean 'memory_pressure'?",
        ),
    ],
)
def test_bad_values_name_path_line_and_value(
    text: str, line: int, path: str, fragment: str
) -> None:
    """Every bad value is reported with its YAML path, line and the value itself."""
    with pytest.raises(ConfigError) as caught:
        resources(text)
    found = [(p.line, p.path, str(p)) for p in caught.value.problems]
    assert any(ln == line and pth == path and fragment in s for ln, pth, s in found), found


def test_all_problems_reported_together() -> None:
    """Several bad signal keys: every one is listed, not only the first."""
    with pytest.raises(ConfigError) as caught:
        resources(
            "    cgroup: relative\n"
            "    memory_pressure: {reject_above: 200}\n"
            "    gpu: {devices: [a]}\n"
        )
    paths = {p.path for p in caught.value.problems}
    assert paths == {
        "admission.resources.cgroup",
        "admission.resources.memory_pressure.reject_above",
        "admission.resources.gpu.devices",
    }
