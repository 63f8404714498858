"""Large bodies through the relay (issue #21): what running a job whose body another box
keeps costs.

    python bench/bodies.py [--rounds 5] [--big-mb 100]

Starts a throwaway PostgreSQL (``tests/pgserver.py``), two ``engine-sim`` and two
``gatekeeper run`` boxes sharing one store, with a queue route for the simulator's
``POST /upload`` (it reads a body of any size and answers its sha256). Box A's engine
is kept busy by one long song; every measured job is submitted to A, so idle box B
claims it and fetches its body from A's admin listener (``jobs.bodyrelay``) before
its engine is asked. For bodies of 3 MiB and ``--big-mb`` MiB (over
``jobs.postgres.max_body_bytes``: kept by A) and, for reference, of 1 KiB (in the
database: no fetch), on localhost:

1. the fetch itself (B's log line ``body of N bytes fetched ... in T s``): the start
   latency a large body adds, and the relay's throughput in MiB/s;
2. submit -> done through A (the job's whole path, the engine reading the body too);
3. B's peak resident memory above its idle size while it fetches (the fetch is
   streamed into B's spool: this stays near the socket buffers, not the body's size).

Each job's engine answer is checked: its sha256 is the body's. Prints figures; asserts
nothing about them. Exit 2 when PostgreSQL is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgserver import PgServer, bench_server

from bench.anybox import PeakRss, rss_kib, start, until_state
from bench.procs import Service, Services
from gatekeeper.cli.procs import free_port, gatekeeper_argv

JOBS = "/_gatekeeper/jobs"
ASYNC = {"Prefer": "respond-async"}
RULES = """
admission:
  {{max_in_flight: 1, expected_seconds: 1, queue: {{per_client: 50}}}}
upstream: {{probe: {{interval: 0.5s}}, timeouts: {{read: 120s}}}}
limits: {{max_body_bytes: 1073741824}}
routes:
  - {{name: upload, match: {{methods: [POST], path: /upload}}, action: queue}}
  - {{name: generate, match: {{methods: [POST], path: /generate/**}}, action: queue}}
jobs: {{store: postgres, postgres: {{dsn_file: {dsn}, schema: bench_bodies}}}}
"""
FETCHED = re.compile(r"job (\S+)… body of (\d+) bytes fetched from box \S+ in ([0-9.]+) s")


def box(procs: Services, work: Path, name: str, dsn: Path) -> tuple[str, str, Service]:
    """An engine-sim and a box in front of it: (box URL, engine URL, the box)."""
    ep = free_port()
    start(
        procs,
        f"engine-{name}",
        gatekeeper_argv("engine-sim", "--listen", f"127.0.0.1:{ep}", "--seconds", "600",
                        "--no-cpu", "--memory-mb", "0"),
        "listening on http://",
    )  # fmt: skip
    public, admin = free_port(), free_port()
    rules = work / f"rules-{name}.yaml"
    rules.write_text(RULES.format(dsn=dsn))
    svc = start(
        procs,
        f"box-{name}",
        gatekeeper_argv("run", "--config", str(rules), "--upstream", f"http://127.0.0.1:{ep}",
                        "--listen", f"127.0.0.1:{public}", "--admin-listen",
                        f"127.0.0.1:{admin}", "--state-dir", str(work / f"state-{name}")),
        "admin listening on http://",
    )  # fmt: skip
    return f"http://127.0.0.1:{public}", f"http://127.0.0.1:{ep}", svc


async def one(
    s: aiohttp.ClientSession, a: str, b_proc: Service, size: int
) -> tuple[float, float | None, int]:
    """One job of ``size`` bytes submitted to A: (submit -> done seconds, the fetch's
    seconds from B's log (None: no fetch), B's peak RSS above idle in KiB)."""
    body = os.urandom(size)
    idle = rss_kib(b_proc.proc.pid)
    t0 = time.perf_counter()
    with PeakRss(b_proc.proc.pid) as peak:
        async with s.post(f"{a}/upload", data=body, headers=ASYNC) as r:
            assert r.status == 202, await r.text()
            job = (await r.json())["id"]
        await until_state(s, a, job, "done")
    took = time.perf_counter() - t0
    async with s.get(f"{a}{JOBS}/{job}/result") as r:
        answer: Any = await r.json()
    assert answer["sha256"] == hashlib.sha256(body).hexdigest(), answer
    fetched = [float(m[2]) for m in FETCHED.findall(b_proc.output()) if job.startswith(m[0])]
    return took, (fetched[-1] if fetched else None), peak.peak - idle


async def run(args: argparse.Namespace, work: Path, pg: PgServer) -> None:
    dsn = work / "dsn"
    dsn.write_text(pg.dsn + "\n")
    procs = Services(work)
    try:
        a, a_engine, _ = box(procs, work, "a", dsn)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
            song = {"lyrics": "busy", "description": "pop"}
            async with s.post(f"{a}/generate", json=song, headers=ASYNC) as r:
                busy = (await r.json())["id"]
            await until_state(s, a, busy, "running")  # A's only slot, until the end
            _, _, b_proc = box(procs, work, "b", dsn)  # after: B never takes the song
            sizes = [("1 KiB (in the database)", 1024), ("3 MiB", 3 << 20)]
            sizes.append((f"{args.big_mb} MiB", args.big_mb << 20))
            print(f"\nbodies submitted to busy box A, run by idle box B, {args.rounds} rounds:")
            for label, size in sizes:
                runs = [await one(s, a, b_proc, size) for _ in range(args.rounds)]
                total = statistics.median(r[0] for r in runs)
                fetches = [r[1] for r in runs if r[1] is not None]
                peak = max(r[2] for r in runs) / 1024
                line = f"  {label:>24}: submit -> done {total * 1000:8.1f} ms"
                if fetches:
                    f = statistics.median(fetches)
                    line += f"; fetch {f * 1000:7.1f} ms ({size / (1 << 20) / f:,.0f} MiB/s)"
                else:
                    line += "; no fetch"
                print(line + f"; B's RSS +{peak:.1f} MiB at most", flush=True)
            async with s.post(f"{a_engine}/_sim/finish") as r:
                assert r.status == 200

    finally:
        procs.stop_all()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--big-mb", type=int, default=100)
    args = ap.parse_args()
    with bench_server("bench-bodies-") as (pg, tmp):
        asyncio.run(run(args, tmp, pg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
