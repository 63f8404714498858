"""Any box answers for any job (issue #21): what the relay and a cross-box cancel cost.

    python bench/anybox.py [--mb 200] [--rounds 5]

Starts a throwaway PostgreSQL (``tests/pgserver.py``), one ``engine-sim`` and two
``gatekeeper run`` boxes sharing one store (``jobs.store: postgres``), with a queue
route for the simulator's ``GET /download`` so that one async job's result is
``--mb`` MiB. Then, on localhost:

1. the result fetched from the box that produced it, and relayed by the other box
   (``jobs.anybox``: streamed from the producer's admin listener): MiB/s of each,
   and the relaying box's peak resident memory above its idle size (the relay never
   reads a result whole: this stays near the socket buffers, not ``--mb``);
2. a ``Range`` of 1 MiB from the middle, relayed: its latency;
3. a running job deleted on the other box: the time until the producer shows it
   ``cancelled`` (the cancel request is taken every 0.25 s; the boxes run
   ``on_client_disconnect: cancel``: with ``finish`` the engine ends the song first).

Prints figures; asserts nothing about them. Exit 2 when PostgreSQL is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgserver import PgServer, bench_server

from bench.procs import Service, Services
from gatekeeper.cli.procs import free_port, gatekeeper_argv

JOBS = "/_gatekeeper/jobs"
ASYNC = {"Prefer": "respond-async"}
RULES = """
admission:
  {{max_in_flight: 1, expected_seconds: 1, on_client_disconnect: cancel, queue: {{per_client: 50}}}}
upstream: {{probe: {{interval: 0.5s}}, timeouts: {{read: 120s}}}}
routes:
  - {{name: download, match: {{methods: [GET], path: /download}}, action: queue}}
  - {{name: generate, match: {{methods: [POST], path: /generate/**}}, action: queue}}
jobs: {{store: postgres, postgres: {{dsn_file: {dsn}, schema: bench_anybox}}}}
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class PeakRss:
    """The highest resident size of ``pid`` while the block runs (sampled every 5 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, rss_kib(pid), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_kib(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def start(procs: Services, name: str, argv: list[str], ready: str) -> Service:
    svc = procs.start(name, argv)
    svc.wait_for_line(ready, timeout=30)
    return svc


async def until_state(s: aiohttp.ClientSession, url: str, job: str, state: str) -> Any:
    while True:
        async with s.get(f"{url}{JOBS}/{job}") as r:
            view = await r.json()
        if view["state"] == state:
            return view
        await asyncio.sleep(0.01)


async def timed_get(s: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> float:
    t0 = time.perf_counter()
    async with s.get(url, headers=headers) as r:
        assert r.status in (200, 206), r.status
        async for _ in r.content.iter_chunked(1 << 20):
            pass
    return time.perf_counter() - t0


async def run(args: argparse.Namespace, work: Path, pg: PgServer) -> None:
    dsn = work / "dsn"
    dsn.write_text(pg.dsn + "\n")
    procs = Services(work)
    try:
        ep = free_port()
        start(
            procs,
            "engine",
            gatekeeper_argv("engine-sim", "--listen", f"127.0.0.1:{ep}", "--seconds", "30",
                            "--no-cpu", "--memory-mb", "0"),
            "listening on http://",
        )  # fmt: skip
        boxes = []
        for name in ("a", "b"):
            public, admin = free_port(), free_port()
            rules = work / f"rules-{name}.yaml"
            rules.write_text(RULES.format(dsn=dsn))
            svc = start(
                procs,
                f"box-{name}",
                gatekeeper_argv("run", "--config", str(rules), "--upstream",
                                f"http://127.0.0.1:{ep}", "--listen", f"127.0.0.1:{public}",
                                "--admin-listen", f"127.0.0.1:{admin}", "--state-dir",
                                str(work / f"state-{name}"), "--log-level", "WARNING"),
                "admin listening on http://",
            )  # fmt: skip
            boxes.append((f"http://127.0.0.1:{public}", svc))
        (a, _), (b, b_proc) = boxes
        size = args.mb << 20
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
            async with s.get(f"{a}/download?bytes={size}", headers=ASYNC) as r:
                job = (await r.json())["id"]
            await until_state(s, a, job, "done")
            result = f"{JOBS}/{job}/result"
            direct, relayed = [], []
            idle = rss_kib(b_proc.proc.pid)
            with PeakRss(b_proc.proc.pid) as peak:
                for _ in range(args.rounds):
                    direct.append(await timed_get(s, a + result, {}))
                    relayed.append(await timed_get(s, b + result, {}))
            mid = size // 2
            ranged = [
                await timed_get(s, b + result, {"Range": f"bytes={mid}-{mid + (1 << 20) - 1}"})
                for _ in range(args.rounds)
            ]
            cancels = []
            for n in range(args.rounds):
                body = {"lyrics": f"bench {n} {time.time()}", "description": "pop"}
                async with s.post(f"{a}/generate", json=body, headers=ASYNC) as r:
                    song = (await r.json())["id"]
                await until_state(s, a, song, "running")
                t0 = time.perf_counter()
                async with s.delete(f"{b}{JOBS}/{song}") as r:
                    assert r.status == 200
                await until_state(s, a, song, "cancelled")
                cancels.append(time.perf_counter() - t0)

        def mibs(t: list[float]) -> str:
            return f"{args.mb / statistics.median(t):,.0f} MiB/s"

        print(f"\nresult of {args.mb} MiB, {args.rounds} rounds, median:")
        print(f"  from the producing box   {statistics.median(direct):.3f} s  {mibs(direct)}")
        print(f"  relayed by the other box {statistics.median(relayed):.3f} s  {mibs(relayed)}")
        print(f"  relaying box's resident memory: idle {idle / 1024:.1f} MiB, peak during the")
        print(f"    downloads {peak.peak / 1024:.1f} MiB (+{(peak.peak - idle) / 1024:.1f} MiB)")
        print(f"  a relayed Range of 1 MiB: {statistics.median(ranged) * 1000:.1f} ms")
        ms = sorted(c * 1000 for c in cancels)
        print(
            f"  DELETE on the other box -> cancelled on the producer: median {ms[len(ms) // 2]:.0f}"
            f" ms, max {ms[-1]:.0f} ms"
        )
    finally:
        procs.stop_all()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with bench_server("bench-anybox-") as (pg, tmp):
        asyncio.run(run(args, tmp, pg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
