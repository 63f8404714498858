"""What one monitor tick costs with every signal (issue #11 §3), in µs per sample.

The sampler runs in the event loop every ``admission.sample_interval`` (1 s by
default), so its cost is paid once a second, never per request. Three rows:

- this machine as it is (psutil; cgroup v2, PSI and NVML where present);
- a cgroup v2 fixture tree with limits and pressure files (every file read) plus a
  four-device NVML stand-in answering at once (the Python cost of the GPU path;
  real NVML calls add the driver's own time, typically tens of µs per call);
- the ``file`` source (one JSON file with every key).

    .venv/bin/python bench/signals_tick.py [--samples 2000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gatekeeper.config import Gpu, Resources
from gatekeeper.resources.monitor import Monitor
from gatekeeper.resources.samplers import HostSampler, file_sampler

PSI = "some avg10=1.00 avg60=0.50 avg300=0.10 total=1\nfull avg10=0.20 avg60=0 avg300=0 total=1\n"


class InstantNvml:
    """Four devices that answer at once."""

    def device_count(self) -> int:
        return 4

    def name(self, index: int) -> str:
        return f"bench {index}"

    def memory(self, index: int) -> tuple[int, int]:
        return 8 << 30, 16 << 30

    def utilization(self, index: int) -> float:
        return 50.0

    def close(self) -> None:
        pass


def fixture_root(root: Path) -> None:
    mount = root / "sys/fs/cgroup"
    d = mount / "system.slice/songgen.service"
    d.mkdir(parents=True)
    (mount / "cgroup.controllers").write_text("cpu memory io\n")
    files = {
        "memory.max": f"{16 << 30}\n",
        "memory.current": f"{9 << 30}\n",
        "memory.stat": "anon 1\nfile 2\ninactive_file 1073741824\n" + "x 1\n" * 40,
        "cpu.max": "200000 100000\n",
        "cpu.stat": "usage_usec 1000\nuser_usec 1\nsystem_usec 1\n",
        "cpu.pressure": PSI,
        "memory.pressure": PSI,
        "io.pressure": PSI,
    }
    for name, text in files.items():
        (d / name).write_text(text)
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text("0::/system.slice/songgen.service\n")


def per_tick(mon: Monitor, samples: int) -> float:
    mon.sample_once()  # warm: discovery, first reads
    t0 = time.perf_counter()
    for _ in range(samples):
        mon.sample_once()
    return (time.perf_counter() - t0) / samples * 1e6


def monitor(factory: Callable[[Resources], Callable[[], object]], res: Resources) -> Monitor:
    from dataclasses import replace

    from gatekeeper.config import Admission, Config

    cfg = replace(Config(), admission=replace(Admission(), resources=res))
    return Monitor(lambda: cfg, lambda s: None, clock=time.monotonic, sampler_factory=factory)  # type: ignore[arg-type]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2000)
    n = ap.parse_args().samples
    rows: list[tuple[str, float, str]] = []
    here = HostSampler(Resources())
    sample = here()
    live = ", ".join(k for k, s in sample.signals.items() if s.live)
    here.close()
    rows.append(("this machine", per_tick(monitor(HostSampler, Resources()), n), f"live: {live}"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fixture_root(root)
        res = Resources(cgroup="/system.slice/songgen.service", gpu=Gpu())

        def full(r: Resources) -> HostSampler:
            return HostSampler(r, root=root, nvml=InstantNvml)

        rows.append(
            (
                "cgroup v2 + PSI + 4 GPUs",
                per_tick(monitor(full, res), n),
                "fixture tree, instant NVML stand-in",
            )
        )
        f = root / "readings.json"
        f.write_text(
            json.dumps(
                {
                    "cpu_percent": 5,
                    "memory_percent": 5,
                    "cpu_pressure": 1,
                    "memory_pressure": {"some": 1, "full": 0.5},
                    "io_pressure": 0,
                    "gpu_memory_percent": 50,
                    "gpu_utilization_percent": 50,
                }
            )
        )
        file_res = Resources(source="file", file=str(f))
        rows.append(
            (
                "file source, every key",
                per_tick(monitor(lambda r: file_sampler(str(f)), file_res), n),
                "",
            )
        )
    print(f"monitor tick cost, {n} samples each (µs per sample_once)")
    for name, us, note in rows:
        print(f"  {name:<28} {us:8.1f} µs   {note}")


if __name__ == "__main__":
    main()
