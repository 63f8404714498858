"""cgroup v2: the parsers, discovery and the CPU/memory math, on fixture trees under tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatekeeper.resources.cgroup import (
    Cgroup,
    CgroupReader,
    cpu_percent,
    find,
    gib,
    memory_percent,
    parse_cpu_max,
    parse_keyed,
    parse_limit,
    parse_proc_cgroup,
    working_set,
)

GiB = 1 << 30


def v2_tree(
    root: Path,
    path: str = "/system.slice/songgen.service",
    *,
    memory_max: str = f"{16 * GiB}\n",
    memory_current: int = 9 * GiB,
    inactive_file: int = 1 * GiB,
    cpu_max: str = "200000 100000\n",
    usage_usec: int = 1_000_000,
    own: str | None = None,
) -> Path:
    """A cgroup v2 mount under ``root`` with one cgroup at ``path``; returns its directory."""
    mount = root / "sys/fs/cgroup"
    mount.mkdir(parents=True)
    (mount / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    d = mount / path.lstrip("/")
    d.mkdir(parents=True, exist_ok=True)
    (d / "memory.max").write_text(memory_max)
    (d / "memory.current").write_text(f"{memory_current}\n")
    (d / "memory.stat").write_text(f"anon 123\nfile 456\ninactive_file {inactive_file}\n")
    (d / "cpu.max").write_text(cpu_max)
    (d / "cpu.stat").write_text(f"usage_usec {usage_usec}\nuser_usec 1\nsystem_usec 2\n")
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(f"0::{own or path}\n")
    return d


@pytest.mark.parametrize(
    ("text", "expected"),
    [("max\n", None), ("17179869184\n", 16 * GiB), ("0", 0), (" 42 ", 42)],
)
def test_parse_limit(text: str, expected: int | None) -> None:
    """memory.max is bytes, or "max" for no limit."""
    assert parse_limit(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "-1", "12.5"])
def test_parse_limit_garbage(text: str) -> None:
    """Anything else in memory.max is a ValueError, never a guess."""
    with pytest.raises(ValueError):
        parse_limit(text)


@pytest.mark.parametrize(
    ("text", "cores"),
    [
        ("max 100000\n", None),
        ("200000 100000\n", 2.0),
        ("50000 100000", 0.5),
        ("150000", 1.5),  # period omitted: the kernel's default 100 ms
    ],
)
def test_parse_cpu_max(text: str, cores: float | None) -> None:
    """cpu.max "<quota> <period>" is the limit in cores; "max ..." is none."""
    assert parse_cpu_max(text) == cores


@pytest.mark.parametrize("text", ["", "1 2 3", "0 100000", "x 100000", "100000 0"])
def test_parse_cpu_max_garbage(text: str) -> None:
    """A malformed or zero cpu.max is a ValueError."""
    with pytest.raises(ValueError):
        parse_cpu_max(text)


def test_parse_keyed_reads_key_value_lines() -> None:
    """Flat-keyed files: two-field lines become a dict; other lines are skipped."""
    assert parse_keyed("usage_usec 10\nnr_periods 0\n\nodd line here\n") == {
        "usage_usec": 10,
        "nr_periods": 0,
    }


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("0::/system.slice/gk.service\n", "/system.slice/gk.service"),
        ("0::/\n", "/"),
        ("12:memory:/docker/abc\n0::/docker/abc\n", "/docker/abc"),
        ("4:memory:/x\n1:cpu:/\n", None),  # v1 only
        ("", None),
    ],
)
def test_parse_proc_cgroup(text: str, path: str | None) -> None:
    """The v2 path is the 0:: line of /proc/self/cgroup; a v1-only host has none."""
    assert parse_proc_cgroup(text) == path


@pytest.mark.parametrize(
    ("used", "wall", "cores", "pct"),
    [
        (1_000_000, 1.0, 2.0, 50.0),  # one core-second in one second of a 2-core quota
        (2_000_000, 1.0, 2.0, 100.0),
        (3_000_000, 1.0, 2.0, 100.0),  # timing jitter never reads over 100
        (250_000, 0.5, 0.5, 100.0),
        (0, 1.0, 2.0, 0.0),
        (-5, 1.0, 2.0, 0.0),  # a counter reset (a recreated cgroup) reads 0, not negative
        (100, 0.0, 2.0, 0.0),  # no time passed
    ],
)
def test_cpu_percent_math(used: int, wall: float, cores: float, pct: float) -> None:
    """CPU % is the usage growth over wall time times the quota in cores."""
    assert cpu_percent(used, wall, cores) == pytest.approx(pct)


def test_memory_math_subtracts_inactive_file() -> None:
    """The working set is memory.current less inactive_file, and never negative."""
    assert working_set(9 * GiB, {"inactive_file": GiB}) == 8 * GiB
    assert working_set(GiB, {"inactive_file": 2 * GiB}) == 0
    assert working_set(GiB, {}) == GiB
    assert memory_percent(8 * GiB, 16 * GiB) == 50.0
    assert memory_percent(20 * GiB, 16 * GiB) == 100.0


def test_find_auto_uses_the_own_cgroup(tmp_path: Path) -> None:
    """auto: gatekeeper's own cgroup, the 0:: line of /proc/self/cgroup."""
    d = v2_tree(tmp_path, "/system.slice/gatekeeper.service")
    assert find(tmp_path, "auto") == Cgroup("/system.slice/gatekeeper.service", d)


def test_find_a_named_cgroup(tmp_path: Path) -> None:
    """A named path is that cgroup, whatever gatekeeper's own is."""
    d = v2_tree(tmp_path, "/system.slice/songgen.service", own="/system.slice/gk.service")
    assert find(tmp_path, "/system.slice/songgen.service") == Cgroup(
        "/system.slice/songgen.service", d
    )


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("none", "off (admission.resources.cgroup: none)"),
        ("/nope.slice", "no cgroup /nope.slice under /sys/fs/cgroup"),
    ],
)
def test_find_absent_reasons(tmp_path: Path, name: str, reason: str) -> None:
    """none and a missing cgroup are absent, each with its reason."""
    v2_tree(tmp_path)
    assert find(tmp_path, name) == reason


def test_find_on_a_v1_host(tmp_path: Path) -> None:
    """No cgroup.controllers at /sys/fs/cgroup (v1 or hybrid): absent, saying so."""
    (tmp_path / "sys/fs/cgroup/memory").mkdir(parents=True)
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text("4:memory:/x\n0::/\n")
    assert find(tmp_path, "auto") == "no cgroup v2 at /sys/fs/cgroup, a cgroup v1 or hybrid host"


def test_reader_with_limits(tmp_path: Path) -> None:
    """With memory.max and cpu.max: memory % of the working set, CPU % of the quota."""
    d = v2_tree(tmp_path)
    now = [100.0]
    reader = CgroupReader(Cgroup("/system.slice/songgen.service", d), clock=lambda: now[0])
    (d / "cpu.stat").write_text("usage_usec 2000000\n")  # +1 core-second
    now[0] += 1.0
    r = reader.read()
    assert (r.memory_max, r.memory_used, r.cpu_cores) == (16 * GiB, 8 * GiB, 2.0)
    assert r.memory_percent == 50.0 and r.cpu_percent == pytest.approx(50.0)
    assert r.limited


def test_reader_with_max_reports_no_percent(tmp_path: Path) -> None:
    """memory.max and cpu.max "max": no limit, so no cgroup-relative percent (host-wide)."""
    d = v2_tree(tmp_path, memory_max="max\n", cpu_max="max 100000\n")
    r = CgroupReader(Cgroup("/x", d)).read()
    assert (r.memory_max, r.cpu_cores, r.memory_percent, r.cpu_percent) == (None,) * 4
    assert not r.limited


def test_reader_without_a_controller_reads_that_limit_absent(tmp_path: Path) -> None:
    """A cgroup without the memory controller (no memory.* files) has no memory limit."""
    d = v2_tree(tmp_path)
    for f in ("memory.max", "memory.current", "memory.stat"):
        (d / f).unlink()
    r = CgroupReader(Cgroup("/x", d)).read()
    assert r.memory_max is None and r.cpu_cores == 2.0


@pytest.mark.parametrize(
    ("file", "text"),
    [
        ("memory.max", "lots\n"),
        ("cpu.max", "fast\n"),
        ("cpu.stat", "user_usec 5\n"),
        ("memory.current", "?\n"),
    ],
)
def test_reader_garbage_is_a_value_error(tmp_path: Path, file: str, text: str) -> None:
    """A garbage file is a ValueError for the caller to report (and fall back on)."""
    d = v2_tree(tmp_path)
    reader = CgroupReader(Cgroup("/x", d))
    (d / file).write_text(text)
    with pytest.raises(ValueError):
        reader.read()


def test_reader_of_a_removed_cgroup_is_an_os_error(tmp_path: Path) -> None:
    """A cgroup removed (its service stopped) is an OSError, not "no limits"."""
    d = v2_tree(tmp_path)
    reader = CgroupReader(Cgroup("/x", d))
    for f in d.iterdir():
        f.unlink()
    d.rmdir()
    with pytest.raises(OSError):
        reader.read()


def test_gib_for_people() -> None:
    """Sizes read as GiB/MiB in check and the startup log."""
    assert (gib(16 * GiB), gib(512 << 20), gib(12)) == ("16 GiB", "512 MiB", "12 B")
