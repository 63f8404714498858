"""Section f, the deep queue (issue #18 §6): submit, view and status at 1,000 and 10,000
queued jobs, and the event loop's longest callbacks meanwhile.

For each depth: ``gatekeeper run`` (stdlib loop, under ``bench/loopwatch.py``:
every callback of 1 ms or more recorded) in front of ``engine-sim --no-cpu``, an
hour-long async song holding the one slot; the queue is filled with ``depth``
async 0 s songs (32 connections, distinct lyrics); then, at that depth,
:data:`PROBES` submissions one at a time (the cost of one submit, not of waiting
behind 31 others), :data:`PROBES` ``GET`` of random queued jobs (position and ETA),
five status documents as served (the first 100 waiting listed) and one with every
entry (``?limit=all``). Targets at 10,000: submit p99 <= 20 ms, no callback
of 5 ms or more from the first submission to the last probe.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench import targets
from bench.loopwatch import stalls
from bench.procs import Services
from bench.report import CheckFailed, Summary, ms, percentile, table

DEPTHS = (1_000, 10_000)
PROBES = 200
STALL_SECONDS = 0.005
SUBMIT_P99_SECONDS = 0.020
ASYNC = {"Content-Type": "application/json", "Prefer": "respond-async"}
RULES = """\
  on_client_disconnect: cancel
  queue:
    max_waiting: {n}
    per_client: {n}
    max_wait: 1h
"""


async def _submit(session: aiohttp.ClientSession, proxy: str, lyrics: str) -> tuple[float, str]:
    body = {"lyrics": lyrics, "description": "y", "seconds": 0}
    t0 = time.perf_counter()
    async with session.post(proxy + "/generate", json=body, headers=ASYNC) as r:
        await r.read()
        spent = time.perf_counter() - t0
        if r.status != 202:
            raise CheckFailed(f"a submission at depth got {r.status}: {await r.text()}")
        return spent, r.headers["Location"]


async def one_depth(svcs: Services, depth: int) -> tuple[list[str], float, Stalls]:
    """One row of figures at ``depth`` queued jobs; the submit p99; the probes' stalls."""
    from bench.waiting import hold_slot, status_time  # the section's own helpers

    report = svcs.workdir / f"loopwatch-{depth}.json"
    with svcs.scope():
        _, engine = targets.engine(svcs, "--no-cpu", "--memory-mb", "0")
        _, proxy = targets.gatekeeper(
            svcs,
            engine,
            admission=RULES.format(n=depth + min(PROBES, depth) + 1),
            name=f"rules-f-{depth}",
            args=["--state-dir", str(svcs.workdir / f"state-f-{depth}"), "--loop", "asyncio"],
            action="queue",
            command=(str(Path(targets.BENCH_DIR) / "loopwatch.py"), str(report)),
        )
        connector = aiohttp.TCPConnector(limit=32)
        async with aiohttp.ClientSession(connector=connector) as session:
            await hold_slot(session, proxy, f"depth {depth}")
            since = time.monotonic()
            todo = iter(range(depth))
            ids: list[str] = []

            async def filler() -> None:
                for i in todo:
                    ids.append((await _submit(session, proxy, f"fill {i}"))[1])

            t0 = time.perf_counter()
            await asyncio.gather(*(filler() for _ in range(32)))
            fill_rate = depth / (time.perf_counter() - t0)
            filled = time.monotonic()
            probes = min(PROBES, depth)  # --smoke: as many as it queued
            submits = [(await _submit(session, proxy, f"probe {i}"))[0] for i in range(probes)]
            rng = random.Random(depth)
            views: list[float] = []
            for url in rng.sample(ids, probes):
                t1 = time.perf_counter()
                async with session.get(proxy + url) as r:
                    view = await r.json()
                views.append(time.perf_counter() - t1)
                if view["state"] != "queued" or not view["position"]:
                    raise CheckFailed(f"a queued job's view at depth {depth}: {view}")
            probed = time.monotonic()
            # The document as served (the first STATUS_ENTRIES waiting), then the full list.
            st_time, doc = await status_time(session, proxy + "/_gatekeeper/status", runs=5)
            if doc["queue"]["waiting"] != depth + probes:
                raise CheckFailed(f"status shows {doc['queue']['waiting']} waiting")
            listed = time.monotonic()
            full_url = proxy + "/_gatekeeper/status?limit=all"
            full_time, full = await status_time(session, full_url, runs=1)
            if full["queue"]["listed"] != depth + probes:
                raise CheckFailed(f"status?limit=all lists {full['queue']['listed']}")
            done = time.monotonic()
        filling = Stalls.of(stalls(report, since, filled))
        probing = Stalls.of(stalls(report, filled, probed))
        status = Stalls.of(stalls(report, probed, listed))
        status_all = Stalls.of(stalls(report, listed, done))
    row = [
        f"{depth:,}",
        f"{fill_rate:,.0f}/s",
        filling.text(),
        f"p50 {ms(percentile(submits, 50))}, p99 {ms(percentile(submits, 99))}",
        f"p50 {ms(percentile(views, 50))}, p99 {ms(percentile(views, 99))}",
        probing.text(),
        f"{ms(st_time)}; longest callback {status.worst * 1e3:.1f} ms,"
        f" CPU {status.most_cpu * 1e3:.1f} ms",
        f"{ms(full_time)} ({status_all.most_cpu * 1e3:.0f} ms CPU in one)",
    ]
    return row, percentile(submits, 99), probing


@dataclass(frozen=True)
class Stalls:
    worst: float  # the longest callback, wall seconds
    cpu: float  # the thread's CPU seconds in it
    what: str
    over: int  # callbacks of STALL_SECONDS or more

    most_cpu: float  # the most CPU seconds any one callback used
    unpreempted: float  # the longest callback neither preempted nor blocked, wall seconds

    @classmethod
    def of(cls, rows: list[tuple[float, float, float, str]]) -> Stalls:
        _, wall, cpu, what = max(rows, key=lambda r: r[1], default=(0.0, 0.0, 0.0, "-"))
        return cls(
            wall,
            cpu,
            what,
            sum(1 for r in rows if r[1] >= STALL_SECONDS),
            max((r[2] for r in rows), default=0.0),
            max((r[1] for r in rows if "[" not in r[3]), default=0.0),
        )

    def text(self) -> str:
        return (
            f"{self.worst * 1e3:.1f} ms ({self.over} >= 5 ms); on CPU throughout"
            f" {self.unpreempted * 1e3:.1f} ms; CPU {self.most_cpu * 1e3:.1f} ms"
        )


async def deep_queue(svcs: Services, summary: Summary, depths: tuple[int, ...] = DEPTHS) -> None:
    rows: list[list[str]] = []
    p99, probing = 0.0, Stalls(0.0, 0.0, "-", 0, 0.0, 0.0)
    for depth in depths:
        row, p99, probing = await one_depth(svcs, depth)
        rows.append(row)
    print(
        f"\n  deep queue: {PROBES} submissions and {PROBES} job views one at a time at each"
        " depth; event-loop callbacks while filling with 32 connections and while probing"
        " (--loop asyncio under bench/loopwatch.py): the longest (wall), the longest that"
        " was neither preempted nor blocked in the kernel, the most CPU one used; the"
        " status document as served (running jobs and the first 100 waiting: median of 5,"
        " and the callbacks meanwhile) and with every entry (?limit=all, once)\n"
    )
    headers = ["queued", "fill rate", "callbacks, filling", "submit at depth", "job view"]
    print(table([*headers, "callbacks, probing", "status", "status ?limit=all"], rows))
    print(f"\n  longest callback while probing at {depths[-1]:,}: {probing.what}")
    met = p99 <= SUBMIT_P99_SECONDS and probing.worst < STALL_SECONDS
    summary.lines.append(
        f"waiting room at {depths[-1]:,} queued: submit p99 {ms(p99)} (target <= 20 ms), "
        f"longest loop callback at depth {probing.worst * 1e3:.1f} ms (target < 5 ms): "
        + ("met" if met else "MISSED")
        + f"; on CPU throughout {probing.unpreempted * 1e3:.1f} ms, most CPU in one"
        f" {probing.most_cpu * 1e3:.1f} ms"
    )
