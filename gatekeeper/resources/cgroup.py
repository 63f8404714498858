"""cgroup v2: CPU % and memory % relative to the limits of the cgroup the engine runs in.

In a container or a systemd slice with ``memory.max`` / ``cpu.max``, the host's
numbers lie: a container capped at 16 GiB on a 256 GiB host is OOM-killed at
"6 % memory used" (issue #11 §3). So, when the cgroup has a limit, the reading
is relative to it:

- memory % = working set / ``memory.max``, the working set being
  ``memory.current`` minus ``inactive_file`` of ``memory.stat``: page cache the
  kernel drops before it OOM-kills anything (what kubelet and ``docker stats``
  call the working set; ``memory.current`` alone reads near 100 % on a box that
  merely read its model weights once);
- CPU % = ``usage_usec`` growth of ``cpu.stat`` / (wall time × quota cores), the
  quota cores being ``cpu.max`` quota / period.

A resource without a limit (``max``) is read host-wide by the caller: an
unlimited cgroup competes with everything else on the host for the same cores
and pages, and gatekeeper's own cgroup alone (``auto`` in a systemd service)
would read only gatekeeper's usage.

Which cgroup (``admission.resources.cgroup``): ``auto``, gatekeeper's own, from
the ``0::/path`` line of ``/proc/self/cgroup``, used only when it has a limit
(a container, a capped slice); a path, e.g. ``/system.slice/songgen.service``,
the engine's; ``none``: host-wide only. Every reader takes a ``root`` path
(``/`` in production, a fixture tree in tests), as prometheus_client's process
collector takes its ``/proc``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CGROUP_MOUNT = "sys/fs/cgroup"


# --------------------------------------------------------------------------- parsers (pure)


def parse_limit(text: str) -> int | None:
    """``memory.max``: bytes, or ``max`` (no limit) -> None. ValueError otherwise."""
    word = text.strip()
    if word == "max":
        return None
    value = int(word)
    if value < 0:
        raise ValueError(f"negative limit {word!r}")
    return value


def parse_cpu_max(text: str) -> float | None:
    """``cpu.max`` ``"<quota> <period>"`` -> the limit in cores; ``max ...`` -> None."""
    parts = text.split()
    if not parts or len(parts) > 2:
        raise ValueError(f"expected '<quota> <period>', got {text.strip()!r}")
    if parts[0] == "max":
        return None
    quota = int(parts[0])
    period = int(parts[1]) if len(parts) == 2 else 100_000  # the kernel's default period
    if quota <= 0 or period <= 0:
        raise ValueError(f"quota and period must be > 0, got {text.strip()!r}")
    return quota / period


def parse_keyed(text: str) -> dict[str, int]:
    """A flat-keyed file (``cpu.stat``, ``memory.stat``): ``key value`` per line."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[0]] = int(parts[1])
    return out


def parse_proc_cgroup(text: str) -> str | None:
    """The v2 path of ``/proc/<pid>/cgroup`` (its ``0::/path`` line), or None (v1 only)."""
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "" and path.startswith("/"):
            return path
    return None


def working_set(current: int, stat: dict[str, int]) -> int:
    """``memory.current`` less the page cache the kernel reclaims first (see the module)."""
    return max(0, current - stat.get("inactive_file", 0))


def memory_percent(used: int, limit: int) -> float:
    return min(100.0, 100.0 * used / limit) if limit > 0 else 100.0


def cpu_percent(usage_delta_usec: int, wall_delta_s: float, cores: float) -> float:
    """Share of the quota used between two samples, 0..100 (a counter reset reads 0)."""
    if wall_delta_s <= 0 or cores <= 0 or usage_delta_usec <= 0:
        return 0.0
    return min(100.0, 100.0 * usage_delta_usec / (wall_delta_s * 1e6 * cores))


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class Cgroup:
    """A cgroup v2 directory: its name (``/system.slice/x``) and where it is on disk."""

    path: str
    dir: Path

    def file(self, name: str) -> Path:
        return self.dir / name


def find(root: Path, name: str) -> Cgroup | str:
    """The cgroup that ``admission.resources.cgroup`` names, or why there is none.

    ``auto`` is gatekeeper's own; whether it is *used* (has a limit) is the caller's
    question, asked of each reading.
    """
    if name == "none":
        return "off (admission.resources.cgroup: none)"
    mount = root / CGROUP_MOUNT
    if not (mount / "cgroup.controllers").is_file():
        return f"no cgroup v2 at /{CGROUP_MOUNT}, a cgroup v1 or hybrid host"
    path = name
    if name == "auto":
        try:
            own = parse_proc_cgroup((root / "proc/self/cgroup").read_text())
        except OSError as exc:
            return f"cannot read /proc/self/cgroup: {exc.strerror or exc}"
        if own is None:
            return "no cgroup v2 line (0::) in /proc/self/cgroup"
        path = own
    directory = mount / path.lstrip("/")
    if not directory.is_dir():
        return f"no cgroup {path} under /{CGROUP_MOUNT}"
    return Cgroup(path=path, dir=directory)


# --------------------------------------------------------------------------- readings


@dataclass(frozen=True)
class CgroupReading:
    """One sample of a cgroup; a percent is None when that resource has no limit."""

    memory_max: int | None  # bytes
    memory_used: int  # the working set, bytes
    cpu_cores: float | None  # cpu.max quota / period
    memory_percent: float | None
    cpu_percent: float | None

    @property
    def limited(self) -> bool:
        return self.memory_max is not None or self.cpu_cores is not None


class CgroupReader:
    """Reads a cgroup's limits and usage every sample (a limit may change at runtime:
    ``systemctl set-property``, ``docker update``). Raises OSError or ValueError when
    the cgroup is gone or a file is garbage; the caller falls back to host readings."""

    def __init__(self, cgroup: Cgroup, clock: Callable[[], float] = time.monotonic):
        self.cgroup = cgroup
        self._clock = clock
        self._last: tuple[float, int] | None = None  # (wall, usage_usec)
        with contextlib.suppress(OSError, ValueError):  # the first read() says why
            self._last = (clock(), self._usage())

    def _read(self, name: str) -> str:
        return self.cgroup.file(name).read_text()

    def _usage(self) -> int:
        stat = parse_keyed(self._read("cpu.stat"))
        if "usage_usec" not in stat:
            raise ValueError("cpu.stat has no usage_usec")
        return stat["usage_usec"]

    def _optional(self, name: str) -> str | None:
        """A controller's file: missing when that controller is not enabled for the
        cgroup (``cgroup.subtree_control`` of its parent), which means no such limit."""
        try:
            return self._read(name)
        except FileNotFoundError:
            return None

    def read(self) -> CgroupReading:
        if not self.cgroup.dir.is_dir():
            raise FileNotFoundError(2, "No such cgroup (removed)", str(self.cgroup.dir))
        mem_text = self._optional("memory.max")
        mem_max = None if mem_text is None else parse_limit(mem_text)
        used = 0
        if mem_max is not None:
            current = int(self._read("memory.current"))
            used = working_set(current, parse_keyed(self._read("memory.stat")))
        cpu_text = self._optional("cpu.max")
        cores = None if cpu_text is None else parse_cpu_max(cpu_text)
        now, usage = self._clock(), self._usage()
        last, self._last = self._last, (now, usage)
        cpu = None
        if cores is not None:
            cpu = 0.0 if last is None else cpu_percent(usage - last[1], now - last[0], cores)
        return CgroupReading(
            memory_max=mem_max,
            memory_used=used,
            cpu_cores=cores,
            memory_percent=None if mem_max is None else memory_percent(used, mem_max),
            cpu_percent=cpu,
        )


def gib(n: int) -> str:
    """``16 GiB`` / ``512 MiB`` for people (check, the startup log)."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n} B"
