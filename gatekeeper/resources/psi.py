"""PSI (pressure stall information): how much of the time tasks stalled on CPU, memory, io.

A box about to freeze says so in ``/proc/pressure/memory`` seconds before memory
% looks alarming: ``full avg10=40`` means that for 40 % of the last ten seconds
every non-idle task was stalled waiting for memory (the kernel's
Documentation/accounting/psi.rst). gatekeeper reads the ``avg10`` of both lines:

    some avg10=0.00 avg60=0.00 avg300=0.00 total=0
    full avg10=0.00 avg60=0.00 avg300=0.00 total=0

from the cgroup's ``cpu.pressure`` / ``memory.pressure`` / ``io.pressure`` when a
v2 cgroup is in use (the engine's stalls, not the host's), else from
``/proc/pressure/{cpu,memory,io}``. avg10 is already a ten-second average, so
it is taken as it is (no smoothing). Readers take a root path for fixture trees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RESOURCES = ("cpu", "memory", "io")


@dataclass(frozen=True)
class Pressure:
    """The avg10 of one pressure file, in percent; ``full`` is None where the kernel
    has no such line (system-wide cpu before Linux 5.13)."""

    some: float
    full: float | None = None

    def line(self, which: str) -> float | None:
        return self.some if which == "some" else self.full


def parse_pressure(text: str) -> Pressure:
    """``some avg10=... ``/``full avg10=...`` lines -> their avg10. ValueError on garbage."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        kind, *fields = line.split() or [""]
        if kind not in ("some", "full"):
            continue
        values = dict(f.partition("=")[::2] for f in fields)
        if "avg10" not in values:
            raise ValueError(f"no avg10 in {line!r}")
        avg10 = float(values["avg10"])
        if not 0.0 <= avg10 <= 100.0:
            raise ValueError(f"avg10 out of range in {line!r}")
        found[kind] = avg10
    if "some" not in found:
        raise ValueError(f"no 'some' line in {text.strip()[:80]!r}")
    return Pressure(some=found["some"], full=found.get("full"))


class PsiReader:
    """Reads the three pressure files of one place (the host, or one cgroup)."""

    def __init__(self, files: dict[str, Path], where: str):
        self.files = files
        self.where = where  # "/proc/pressure" or "cgroup /system.slice/x"

    @classmethod
    def host(cls, root: Path) -> PsiReader:
        return cls({r: root / "proc/pressure" / r for r in RESOURCES}, "/proc/pressure")

    @classmethod
    def cgroup(cls, directory: Path, path: str) -> PsiReader:
        return cls({r: directory / f"{r}.pressure" for r in RESOURCES}, f"cgroup {path}")

    def read(self) -> dict[str, Pressure]:
        """Every resource's avg10s; OSError (no PSI: kernel < 4.20, psi=0) or ValueError."""
        return {r: parse_pressure(f.read_text()) for r, f in self.files.items()}
