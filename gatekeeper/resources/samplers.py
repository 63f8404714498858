"""Where the monitor's readings come from, and which signals are live.

One ``Sample`` per tick, from one of two samplers chosen by
``admission.resources.source``:

- ``HostSampler`` (``psutil``): CPU % and memory % of the engine's cgroup v2 when
  it has limits (``cgroup``), else host-wide (psutil); PSI avg10 of cpu, memory
  and io (``psi``: the cgroup's pressure files, else ``/proc/pressure``); GPU
  memory and utilisation per device (``gpu``: NVML). A signal that cannot be
  read is *absent*, with the reason, never an exception: ``/status``,
  ``gatekeeper check`` and the startup log print ``Sample.signals``.
- ``file_sampler`` (``file``): every reading from a JSON file re-read each tick,
  ``{"cpu_percent": 95, "memory_percent": 40}`` plus, optionally,
  ``cpu_pressure`` / ``memory_pressure`` / ``io_pressure`` (a number for both
  lines, or ``{"some": 5, "full": 2}``), ``gpu_memory_percent`` and
  ``gpu_utilization_percent``: tests and fire drills drive every signal.

Only the background monitor calls a sampler; the request path never reads a file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from gatekeeper.config import Resources
from gatekeeper.core.readings import Readings
from gatekeeper.resources.cgroup import Cgroup, CgroupReader, CgroupReading, find, gib
from gatekeeper.resources.gpu import GpuDevice, GpuReader, Nvml, NvmlUnavailable, PynvmlAdapter
from gatekeeper.resources.psi import RESOURCES, Pressure, PsiReader

HOST_SIGNALS = ("cgroup", "cpu", "memory", "psi", "gpu")
HOST = "host (psutil)"


class SampleError(Exception):
    """A reading could not be taken; the previous one stays in force."""


@dataclass(frozen=True)
class HostSignal:
    """Whether one signal is read now: where from when live, why not when absent."""

    live: bool
    source: str = ""
    reason: str = ""

    def describe(self) -> str:
        return self.source if self.live else f"absent: {self.reason}"


@dataclass(frozen=True)
class Sample:
    cpu_percent: float
    memory_percent: float
    pressure: Mapping[str, Pressure] = field(default_factory=dict)
    gpus: tuple[GpuDevice, ...] = ()
    cgroup: CgroupReading | None = None
    signals: Mapping[str, HostSignal] = field(default_factory=dict)
    # Trouble that did not stop the sample (a GPU that did not answer): logged once each.
    problems: tuple[str, ...] = ()

    def readings(self, res: Resources, cpu_percent: float | None = None) -> Readings:
        """What admission compares: the configured PSI line of each resource, the
        busiest watched GPU. ``cpu_percent`` overrides the raw CPU (the smoothed one)."""

        def psi(resource: str) -> float | None:
            t = getattr(res, f"{resource}_pressure")
            p = self.pressure.get(resource)
            line = t.line if t is not None else ("some" if resource == "cpu" else "full")
            return p.line(line) if p is not None else None

        def busiest(values: list[float | None]) -> float | None:
            known = [v for v in values if v is not None]
            return max(known) if known else None

        return Readings(
            cpu_percent=self.cpu_percent if cpu_percent is None else cpu_percent,
            memory_percent=self.memory_percent,
            cpu_pressure=psi("cpu"),
            memory_pressure=psi("memory"),
            io_pressure=psi("io"),
            gpu_memory_percent=busiest([g.memory_percent for g in self.gpus]),
            gpu_utilization_percent=busiest([g.utilization_percent for g in self.gpus]),
        )


Sampler = Callable[[], Sample]


# --------------------------------------------------------------------------- the host


class HostSampler:
    """psutil, cgroup v2, PSI and NVML, discovered once (``root`` is ``/`` for real)."""

    def __init__(
        self,
        res: Resources,
        *,
        root: Path = Path("/"),
        nvml: Callable[[], Nvml] = PynvmlAdapter,
        clock: Callable[[], float] = time.monotonic,
        host_cpu: Callable[[], float] | None = None,
        host_memory: Callable[[], float] | None = None,
    ):
        self._root = root
        self._name = res.cgroup
        self._clock = clock
        if host_cpu is None:
            psutil.cpu_percent(interval=None)  # primes the counter: the first call says 0.0
        self._host_cpu = host_cpu or (lambda: psutil.cpu_percent(interval=None))
        self._host_memory = host_memory or (lambda: psutil.virtual_memory().percent)
        self._cgroup: CgroupReader | None = None
        self._cgroup_absent = ""
        self._discover_cgroup()
        self._host_psi = PsiReader.host(root)
        self._gpu: GpuReader | None = None
        self._gpu_absent = ""
        if res.gpu.devices == ():
            self._gpu_absent = "off (admission.resources.gpu.devices: [])"
        else:
            try:
                self._gpu = GpuReader(nvml(), res.gpu.devices)
            except NvmlUnavailable as exc:
                self._gpu_absent = str(exc)
            except Exception as exc:  # a broken driver stack must not stop gatekeeper
                self._gpu_absent = f"NVML failed: {exc!r}"

    def _discover_cgroup(self) -> None:
        found = find(self._root, self._name)
        if isinstance(found, Cgroup):
            self._cgroup, self._cgroup_absent = CgroupReader(found, self._clock), ""
        else:
            self._cgroup, self._cgroup_absent = None, found

    def _read_cgroup(self, problems: list[str]) -> tuple[CgroupReading | None, str]:
        """The cgroup's reading when it is used (named, or auto with a limit), and its
        path; else (None, why not)."""
        if self._cgroup is None and self._name.startswith("/"):
            self._discover_cgroup()  # the engine's service may start after gatekeeper
        reader = self._cgroup
        if reader is None:
            return None, self._cgroup_absent
        path = reader.cgroup.path
        try:
            reading = reader.read()
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            problems.append(f"cgroup {path}: {why}; host-wide readings")
            if self._name.startswith("/"):
                self._cgroup = None  # gone (a restarted service): found again later
                self._cgroup_absent = f"cgroup {path} unreadable: {why}"
                return None, self._cgroup_absent
            return None, f"cgroup {path} unreadable: {why}"
        if self._name == "auto" and not reading.limited:
            return None, f"own cgroup {path} has no memory.max or cpu.max limit"
        return reading, path

    def __call__(self) -> Sample:
        problems: list[str] = []
        cg, where = self._read_cgroup(problems)
        signals: dict[str, HostSignal] = {}
        host_cpu = self._host_cpu()  # every tick: keeps psutil's delta fresh for a fallback
        if cg is not None:
            limits = [
                f"memory.max {gib(cg.memory_max)}" if cg.memory_max is not None else "",
                f"cpu.max {cg.cpu_cores:g} cores" if cg.cpu_cores is not None else "",
            ]
            text = ", ".join(x for x in limits if x) or "no memory.max or cpu.max limit"
            signals["cgroup"] = HostSignal(True, f"{where} ({text})")
        else:
            signals["cgroup"] = HostSignal(False, reason=where)
        if cg is not None and cg.cpu_percent is not None:
            cpu = cg.cpu_percent
            signals["cpu"] = HostSignal(True, f"cgroup {where} (cpu.max {cg.cpu_cores:g} cores)")
        else:
            cpu = host_cpu
            signals["cpu"] = HostSignal(True, HOST)
        if cg is not None and cg.memory_percent is not None and cg.memory_max is not None:
            memory = cg.memory_percent
            signals["memory"] = HostSignal(
                True, f"cgroup {where} (memory.max {gib(cg.memory_max)})"
            )
        else:
            memory = self._host_memory()
            signals["memory"] = HostSignal(True, HOST)
        pressure, signals["psi"] = self._read_psi(cg is not None)
        gpus: tuple[GpuDevice, ...] = ()
        if self._gpu is not None:
            gpus, gpu_problems = self._gpu.read()
            problems += gpu_problems
            names = ", ".join(f"{i} {self._gpu.names[i]}" for i in self._gpu.indices)
            skipped = f"; not present: {list(self._gpu.skipped)}" if self._gpu.skipped else ""
            signals["gpu"] = HostSignal(True, f"NVML ({names}{skipped})")
        else:
            signals["gpu"] = HostSignal(False, reason=self._gpu_absent)
        return Sample(cpu, memory, pressure, gpus, cg, signals, tuple(problems))

    def _read_psi(self, in_cgroup: bool) -> tuple[dict[str, Pressure], HostSignal]:
        readers = [self._host_psi]
        if in_cgroup and self._cgroup is not None:
            cgroup = self._cgroup.cgroup
            readers.insert(0, PsiReader.cgroup(cgroup.dir, cgroup.path))
        why = ""
        for reader in readers:
            try:
                return reader.read(), HostSignal(True, f"{reader.where} ({', '.join(RESOURCES)})")
            except OSError as exc:
                why = why or f"{reader.where} unreadable: {exc.strerror or exc}"
            except ValueError as exc:
                why = why or f"{reader.where}: {exc}"
        if "/proc/pressure unreadable" in why:
            why += " (kernel < 4.20, or booted with psi=0)"
        return {}, HostSignal(False, reason=why)

    def close(self) -> None:
        if self._gpu is not None:
            self._gpu.close()


# --------------------------------------------------------------------------- injected


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _pressure(path: str, key: str, v: Any) -> Pressure:
    if _number(v):
        return Pressure(some=float(v), full=float(v))
    if isinstance(v, dict) and _number(v.get("some")) and _number(v.get("full", 0)):
        full = v.get("full")
        return Pressure(some=float(v["some"]), full=None if full is None else float(full))
    raise SampleError(f"resource file {path}: {key} must be a number or {{some, full}}, got {v!r}")


def file_sampler(path: str) -> Sampler:
    p = Path(path)
    here = f"file {path}"

    def sample() -> Sample:
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            cpu, mem = data["cpu_percent"], data["memory_percent"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SampleError(f"resource file {path}: {exc!r}") from exc
        if not (_number(cpu) and _number(mem)):
            raise SampleError(f"resource file {path}: readings must be numbers, got {data!r}")
        pressure = {
            r: _pressure(path, f"{r}_pressure", data[f"{r}_pressure"])
            for r in RESOURCES
            if f"{r}_pressure" in data
        }
        gpu = {k: data.get(f"gpu_{k}_percent") for k in ("memory", "utilization")}
        for k, v in gpu.items():
            if v is not None and not _number(v):
                raise SampleError(f"resource file {path}: gpu_{k}_percent must be a number")
        gpus: tuple[GpuDevice, ...] = ()
        if any(v is not None for v in gpu.values()):
            mem_pct, util = gpu["memory"], gpu["utilization"]
            gpus = (
                GpuDevice(
                    0,
                    "file",
                    None if mem_pct is None else float(mem_pct),
                    None if util is None else float(util),
                ),
            )
        missing = f"not in {here}"
        signals = {
            "cgroup": HostSignal(False, reason="not read with source: file"),
            "cpu": HostSignal(True, here),
            "memory": HostSignal(True, here),
            "psi": HostSignal(True, here) if pressure else HostSignal(False, reason=missing),
            "gpu": HostSignal(True, here) if gpus else HostSignal(False, reason=missing),
        }
        return Sample(float(cpu), float(mem), pressure, gpus, None, signals)

    return sample


def make_sampler(resources: Resources) -> Sampler:
    if resources.source == "file":
        assert resources.file is not None  # validated by config
        return file_sampler(resources.file)
    return HostSampler(resources)


def probe(resources: Resources) -> Sample | str:
    """One sample now, for ``gatekeeper check``: never raises (a reason instead)."""
    sampler: Sampler | None = None
    try:
        sampler = make_sampler(resources)
        return sampler()
    except SampleError as exc:
        return str(exc)
    except Exception as exc:  # check must report, never crash
        return f"signals could not be probed: {exc!r}"
    finally:
        close = getattr(sampler, "close", None)
        if close is not None:
            close()
