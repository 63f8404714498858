"""PSI: parsing pressure files and reading them from a root path (fixture trees)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatekeeper.resources.psi import Pressure, PsiReader, parse_pressure

SOME = "some avg10=1.50 avg60=0.80 avg300=0.10 total=12345\n"
FULL = "full avg10=0.25 avg60=0.10 avg300=0.00 total=678\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SOME + FULL, Pressure(1.5, 0.25)),
        (SOME, Pressure(1.5, None)),  # system-wide cpu before Linux 5.13: no full line
        (FULL + SOME, Pressure(1.5, 0.25)),
        ("some avg10=100.00 avg60=0 avg300=0 total=0\n\n", Pressure(100.0, None)),
    ],
)
def test_parse_pressure(text: str, expected: Pressure) -> None:
    """The avg10 of the some and full lines, in percent."""
    assert parse_pressure(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        FULL,  # no some line
        "some avg60=1 avg300=1 total=1\n",
        "some avg10=hot avg60=0 avg300=0 total=0\n",
        "some avg10=101 avg60=0 avg300=0 total=0\n",
    ],
)
def test_parse_pressure_garbage(text: str) -> None:
    """A file without a usable some avg10 is a ValueError."""
    with pytest.raises(ValueError):
        parse_pressure(text)


def test_pressure_line() -> None:
    """line() picks the configured line."""
    p = Pressure(3.0, 1.0)
    assert (p.line("some"), p.line("full")) == (3.0, 1.0)


def test_host_reader_reads_proc_pressure_under_root(tmp_path: Path) -> None:
    """PsiReader.host reads <root>/proc/pressure/{cpu,memory,io}."""
    d = tmp_path / "proc/pressure"
    d.mkdir(parents=True)
    for r in ("cpu", "memory", "io"):
        (d / r).write_text(SOME + FULL)
    got = PsiReader.host(tmp_path).read()
    assert got == {r: Pressure(1.5, 0.25) for r in ("cpu", "memory", "io")}


def test_cgroup_reader_reads_the_cgroups_pressure_files(tmp_path: Path) -> None:
    """PsiReader.cgroup reads <cgroup>/{cpu,memory,io}.pressure."""
    for r in ("cpu", "memory", "io"):
        (tmp_path / f"{r}.pressure").write_text(SOME)
    reader = PsiReader.cgroup(tmp_path, "/x")
    assert reader.where == "cgroup /x"
    assert reader.read()["memory"] == Pressure(1.5, None)


def test_missing_psi_is_an_os_error(tmp_path: Path) -> None:
    """No /proc/pressure (kernel < 4.20): OSError, for the caller to report absent."""
    with pytest.raises(OSError):
        PsiReader.host(tmp_path).read()
