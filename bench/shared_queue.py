"""Several boxes, one queue on PostgreSQL (issue #21): the closing figures.

    python bench/shared_queue.py [--jobs 15] [--seconds 1] [--claims 3000] [--claimers 4]

Starts a throwaway PostgreSQL (``tests/pgserver.py``; exit 2 without it) and, on
127.0.0.1:

1. **claims per second one PostgreSQL sustains**: ``--claims`` queued jobs of 50
   clients, claimed by ``--claimers`` processes at once (each a box: its own store,
   pool and thread, ``claim_next`` called synchronously as the service calls it, in a
   loop until the queue is empty); claims/s over the whole run (every job claimed
   exactly once) and the p50/p99 of one claim, then the same with one claimer;
2. **makespan**: ``--jobs`` async jobs of 3 clients, all submitted to box A, songs of
   ``--seconds`` (``engine-sim``, one slot per box): with one box, then with three
   boxes (``gatekeeper run`` each, one engine each) sharing the schema; the makespan
   is the first submission to the last job's end (each job's ``finished``);
3. **slot free to next start**, from run 2 with three boxes: for each job that a box
   started right after its previous one ended (a queue was waiting), the time from
   that ending (``finished``, stamped when the runner's end is recorded) to the
   next claim's ``started`` (stamped just before its ``claim_next`` statement);
   p50/p99, and with the p50 of one claim's round trip added, the time to the job
   being handed to the runner.

Prints figures; asserts only that nothing was lost (every job done, each engine's
peak 1). Figures: bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

if __package__ in (None, ""):  # run as ``python bench/shared_queue.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pgserver import PgServer, bench_server

from bench.procs import Services
from gatekeeper.cli.procs import free_port, gatekeeper_argv
from gatekeeper.jobs.postgres import PostgresJobStore
from gatekeeper.jobs.record import JobRecord

RULES = """
admission:
  max_in_flight: 1
  expected_seconds: {seconds}
  sample_interval: 0.1
  resources: {{source: file, file: {calm}}}
  queue: {{client_key: "header:X-User", max_waiting: 1000, per_client: 1000}}
upstream: {{probe: {{interval: 0.2s}}}}
jobs:
  store: postgres
  lease: 5s
  postgres: {{dsn_env: BENCH_PG_DSN, schema: {schema}}}
"""


def _ms(x: float) -> str:
    return f"{x * 1000:.1f} ms"


def _pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


# -- 1. claims per second -------------------------------------------------------------------


def _record(i: int) -> JobRecord:
    return JobRecord(
        id=f"q{i:08d}x{os.getpid()}",
        route="generate",
        client=f"c{i % 50}",
        held=False,
        method="POST",
        target="/generate",
        headers=(),
        coalesce_key=None,
        created=time.time(),
        body_size=2,
    )


def _claimer(dsn: str, schema: str, directory: str, start_at: float) -> tuple[float, list[float]]:
    """One box's claims (a process of its own, as a box is): until the queue is empty."""
    store = PostgresJobStore.open(Path(directory), dsn=dsn, schema=schema, timeout=10.0)
    latencies: list[float] = []
    try:
        time.sleep(max(0.0, start_at - time.time()))
        while True:
            t0 = time.perf_counter()
            row = store.claim_next(time.time(), None)
            latencies.append(time.perf_counter() - t0)
            if row is None:
                return time.time(), latencies[:-1]
    finally:
        store.close()


def claims(pg: PgServer, work: Path, n: int, claimers: int) -> tuple[float, list[float]]:
    schema = f"b_claims_{claimers}"
    s = PostgresJobStore.open(work / f"{schema}-fill", dsn=pg.dsn, schema=schema, timeout=10.0)
    try:
        for i in range(n):
            rec = _record(i)
            w = s.body_writer(rec.id)
            w.write(b"{}")
            w.commit()
            s.create(rec)
    finally:
        s.close()
    start_at = time.time() + 3.0  # every claimer connected by then
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(claimers) as pool:
        args = [(pg.dsn, schema, str(work / f"{schema}-{k}"), start_at) for k in range(claimers)]
        done = pool.starmap(_claimer, args)
    elapsed = max(end for end, _ in done) - start_at
    latencies = [x for _, lat in done for x in lat]
    assert len(latencies) == n, (len(latencies), n)  # each job claimed once
    return n / elapsed, latencies


# -- 2. and 3. real boxes -------------------------------------------------------------------


async def _submit(http: aiohttp.ClientSession, url: str, user: str, n: int) -> None:
    body = {"lyrics": f"{user}{n}", "description": "pop"}
    headers = {"Prefer": "respond-async", "X-User": user}
    async with http.post(url + "/generate", json=body, headers=headers) as r:
        assert r.status == 202, await r.text()


async def _rows(dsn: str, schema: str) -> list[Any]:
    con = await asyncpg.connect(dsn)
    try:
        return list(
            await con.fetch(
                f"SELECT state, run_box, started, finished, created FROM {schema}.jobs"
                " ORDER BY started"
            )
        )
    finally:
        await con.close()


async def makespan(
    pg: PgServer, work: Path, boxes: int, jobs: int, seconds: float
) -> tuple[float, list[float]]:
    schema = f"b_boxes_{boxes}"
    calm = work / "calm.json"
    calm.write_text('{"cpu_percent": 5, "memory_percent": 5}')
    procs = Services(work)
    urls, engines = [], []
    try:
        for b in range(boxes):
            port, eport = free_port(), free_port()
            engine = procs.start(
                f"engine-{schema}-{b}",
                gatekeeper_argv(
                    "engine-sim",
                    "--listen",
                    f"127.0.0.1:{eport}",
                    "--seconds",
                    str(seconds),
                    "--no-cpu",
                    "--memory-mb",
                    "1",
                ),
            )
            engine.wait_for_line("listening on http://", timeout=30)
            rules = work / f"rules-{schema}-{b}.yaml"
            rules.write_text(RULES.format(seconds=seconds, calm=calm, schema=schema))
            gk = procs.start(
                f"box-{schema}-{b}",
                gatekeeper_argv(
                    "run",
                    "--config",
                    str(rules),
                    "--upstream",
                    f"http://127.0.0.1:{eport}",
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--admin-listen",
                    f"127.0.0.1:{free_port()}",
                    "--state-dir",
                    str(work / f"state-{schema}-{b}"),
                ),
            )
            gk.wait_for_line("admin listening on http://", timeout=30)
            urls.append(f"http://127.0.0.1:{port}")
            engines.append(f"http://127.0.0.1:{eport}")
        async with aiohttp.ClientSession() as http:
            t0 = time.time()
            for n in range(jobs):
                await _submit(http, urls[0], "abc"[n % 3], n)
            while True:
                rows = await _rows(pg.dsn, schema)
                if all(r["state"] not in ("queued", "running") for r in rows):
                    break
                await asyncio.sleep(0.1)
            peaks = []
            for e in engines:
                async with http.get(e + "/_sim/stats") as r:
                    peaks.append((await r.json())["peak_active_generations"])
    finally:
        procs.stop_all()
    assert len(rows) == jobs and {r["state"] for r in rows} == {"done"}, rows
    assert peaks == [1] * boxes, peaks
    span = max(r["finished"] for r in rows) - t0
    gaps: list[float] = []
    by_box: dict[str, list[Any]] = {}
    for r in rows:
        by_box.setdefault(r["run_box"], []).append(r)
    for mine in by_box.values():
        for prev, nxt in itertools.pairwise(mine):
            if nxt["created"] < prev["finished"]:  # it was waiting when the slot freed
                gaps.append(nxt["started"] - prev["finished"])
    return span, gaps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=15)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--claims", type=int, default=3000)
    ap.add_argument("--claimers", type=int, default=4)
    args = ap.parse_args()
    with bench_server("gk-bench-shared-") as (pg, work):
        os.environ["BENCH_PG_DSN"] = pg.dsn
        print(f"1. claims: {args.claims} queued jobs of 50 clients")
        one_claim = 0.0
        for k in (args.claimers, 1):
            rate, lat = claims(pg, work, args.claims, k)
            one_claim = statistics.median(lat)
            print(
                f"   {k} claimer(s) at once: {rate:,.0f} claims/s;"
                f" one claim p50 {_ms(one_claim)}, p99 {_ms(_pct(lat, 0.99))}"
            )
        print(f"2. makespan: {args.jobs} jobs of {args.seconds:g} s, all submitted to box A")
        spans = {}
        gaps: list[float] = []
        for boxes in (1, 3):
            spans[boxes], g = asyncio.run(makespan(pg, work, boxes, args.jobs, args.seconds))
            gaps += g if boxes == 3 else []
            print(f"   {boxes} box(es): {spans[boxes]:.2f} s")
        print(f"   three boxes / one box: {spans[3] / spans[1]:.2f}")
        if gaps:
            print(
                f"3. slot free -> next claim on the same box ({len(gaps)} starts):"
                f" p50 {_ms(statistics.median(gaps))}, p99 {_ms(_pct(gaps, 0.99))};"
                f" with the claim's round trip (p50 {_ms(one_claim)}):"
                f" p50 {_ms(statistics.median(gaps) + one_claim)}"
            )


if __name__ == "__main__":
    main()
