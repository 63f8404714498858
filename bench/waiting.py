"""Section f: the waiting room's cost with ``plan.waiters`` waiters (issue #9).

1. **pure**: ``waitroom.WaitingRoom`` alone, ``plan.waiters`` waiters over 50 client
   keys: ``join`` each, ``order()``, ``position`` of each, ``pop_next`` until empty,
   then ``join`` all again and ``leave`` each in a shuffled order (µs per call).
2. **async submissions**: ``gatekeeper run`` (``admission.queue.max_waiting`` and
   ``per_client`` = ``plan.waiters`` (+ 1: the song holding the slot is the same
   client's), ``--state-dir`` in the temp dir) in front of
   ``engine-sim --no-cpu``; an async song of an hour holds the one slot, then
   ``plan.waiters`` ``POST /generate`` with ``Prefer: respond-async`` (distinct lyrics,
   so nothing coalesces; 0 s songs) from this process, 32 connections each sending
   the next when answered: each must be
   ``202``. Client-side latency p50/p99 and submissions/s; a status request and one
   job's ``GET`` while they wait.
3. **dispatch**: the holder is ``DELETE``d (``on_client_disconnect: cancel``) and the
   queued 0 s songs drain through the engine: jobs/s, and gatekeeper's CPU seconds
   per job (``/proc/<pid>/stat`` utime + stime over the drain).
4. **held connections**: another hour-long song holds the slot and ``plan.waiters``
   held ``POST /generate`` (no ``Prefer``; one connection each) wait at once:
   gatekeeper's RSS before and while they wait, a status request's time while they
   wait; then the holder is deleted and every held client must get its ``200``.
5. **deep queue** (``bench/depth.py``, issue #18 §6): submit, job view and status at
   1,000 and 10,000 queued jobs, the event loop's longest callback meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench import targets
from bench.client import JSON_HEADERS, sim_stats
from bench.depth import DEPTHS, deep_queue
from bench.procs import Services
from bench.report import CheckFailed, MiB, Plan, Summary, heading, ms, percentile, table
from gatekeeper.jobs.waitroom import Waiter, WaitingRoom

CLIENTS = 50
STATUS_PATH = "/_gatekeeper/status"
ASYNC = {**JSON_HEADERS, "Prefer": "respond-async"}
QUEUE_RULES = """\
  on_client_disconnect: cancel
  queue:
    max_waiting: {n}
    per_client: {per_client}
    max_wait: 1h
"""


def pure_rows(n: int) -> list[list[str]]:
    """Each WaitingRoom operation timed over ``n`` waiters from :data:`CLIENTS` keys."""
    waiters = [Waiter(f"job-{i:06d}", f"client-{i % CLIENTS}", "generate", i, i + 1e6)
               for i in range(n)]  # fmt: skip
    rows: list[list[str]] = []

    def timed(what: str, calls: int, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        spent = time.perf_counter() - t0
        rows.append([what, f"{calls:,}", f"{spent * 1e6 / max(1, calls):,.2f} µs",
                     f"{spent * 1e3:,.2f} ms"])  # fmt: skip
        return out

    room = WaitingRoom()
    timed("join", n, lambda: [room.join(w) for w in waiters])
    order = timed("order() (the whole order, once)", 1, room.order)
    timed("position (each waiter)", n, lambda: [room.position(w.job_id) for w in waiters])
    popped = timed("pop_next (until empty)", n, lambda: [room.pop_next() for _ in waiters])
    if [w.job_id for w in popped] != [w.job_id for w in order]:
        raise CheckFailed("pop_next's order differs from order()")
    for w in waiters:
        room.join(w)
    shuffled = [w.job_id for w in waiters]
    random.Random(9).shuffle(shuffled)
    timed("leave (shuffled)", n, lambda: [room.leave(j) for j in shuffled])
    if len(room):
        raise CheckFailed(f"{len(room)} waiters left after leaving every one")
    return rows


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def timed_get(session: aiohttp.ClientSession, url: str) -> tuple[float, Any]:
    t0 = time.perf_counter()
    async with session.get(url) as resp:
        resp.raise_for_status()
        data = await resp.json()
    return time.perf_counter() - t0, data


async def status_time(session: aiohttp.ClientSession, url: str, runs: int = 5) -> tuple[float, Any]:
    """Median time of ``runs`` status requests, and the last document."""
    times, doc = [], None
    for _ in range(runs):
        t, doc = await timed_get(session, url)
        times.append(t)
    return sorted(times)[len(times) // 2], doc


async def hold_slot(session: aiohttp.ClientSession, proxy: str, tag: str) -> str:
    """An async hour-long song that takes the slot; returns its job URL once it runs."""
    body = {"lyrics": f"holder {tag}", "description": "y", "seconds": 3600}
    async with session.post(proxy + "/generate", json=body, headers=ASYNC) as resp:
        if resp.status != 202:
            raise CheckFailed(f"the holder got {resp.status}: {await resp.text()}")
        url = proxy + resp.headers["Location"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        _, view = await timed_get(session, url)
        if view["state"] == "running":
            return url
        await asyncio.sleep(0.05)
    raise CheckFailed(f"the holder {tag} never ran")


async def wait_queue(
    session: aiohttp.ClientSession, url: str, waiting: int, within: float = 60.0
) -> None:
    deadline = time.monotonic() + within
    got = None
    while time.monotonic() < deadline:
        _, doc = await timed_get(session, url)
        got = doc["queue"]["waiting"]
        if got == waiting:
            return
        await asyncio.sleep(0.05)
    raise CheckFailed(f"the queue never had {waiting} waiting (last seen {got})")


async def wait_completed(
    session: aiohttp.ClientSession, engine: str, target: int, within: float
) -> None:
    deadline = time.monotonic() + within
    done = 0
    while time.monotonic() < deadline:
        done = (await sim_stats(session, engine))["completed_generations"]
        if done >= target:
            return
        await asyncio.sleep(0.01)
    raise CheckFailed(f"the engine completed {done} of {target} generations in {within:.0f} s")


async def section_f(svcs: Services, plan: Plan, summary: Summary) -> None:
    """The waiting room with ``plan.waiters`` waiters: pure core, submit, dispatch, hold."""
    n = plan.waiters
    heading(f"f. waiting room ({n:,} waiters)")
    print(f"  pure: gatekeeper.waitroom.WaitingRoom, {n:,} waiters over {CLIENTS} client keys\n")
    print(table(["operation", "calls", "per call", "total"], pure_rows(n)))
    with svcs.scope():
        _, engine = targets.engine(svcs, "--no-cpu", "--memory-mb", "0")
        state_dir = svcs.workdir / "state-f"
        gk, proxy = targets.gatekeeper(
            svcs,
            engine,
            admission=QUEUE_RULES.format(n=n, per_client=n + 1),  # + the holder
            name="rules-f",
            args=["--state-dir", str(state_dir)],
            action="queue",
        )
        status = proxy + STATUS_PATH
        pid = gk.pid
        connector = aiohttp.TCPConnector(limit=32)
        async with aiohttp.ClientSession(connector=connector) as session:
            rows: list[list[str]] = []
            # -- async submissions behind a held slot
            holder = await hold_slot(session, proxy, "a")
            lat: list[float] = []
            ids: list[str] = []

            todo = iter(range(n))
            codes: list[int] = []

            async def submitter() -> None:  # one of 32: latency from its own send
                for i in todo:
                    body = {"lyrics": f"song {i}", "description": "y", "seconds": 0}
                    t0 = time.perf_counter()
                    async with session.post(proxy + "/generate", json=body, headers=ASYNC) as r:
                        await r.read()
                        lat.append(time.perf_counter() - t0)
                        codes.append(r.status)
                        if r.status == 202:
                            ids.append(r.headers["Location"])

            cpu0, t0 = cpu_seconds(pid), time.perf_counter()
            await asyncio.gather(*(submitter() for _ in range(32)))
            wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
            bad = [c for c in codes if c != 202]
            if bad:
                raise CheckFailed(f"{len(bad)} submissions not 202 (e.g. {bad[0]})")
            rows.append(["async submissions (202)", f"{n:,}", f"{n / wall:,.0f}/s",
                         f"p50 {ms(percentile(lat, 50))}, p99 {ms(percentile(lat, 99))}",
                         f"{cpu / n * 1e3:.2f} ms"])  # fmt: skip
            st_time, doc = await status_time(session, status)
            if doc["queue"]["waiting"] != n:
                raise CheckFailed(f"status shows {doc['queue']['waiting']} waiting, not {n}")
            rows.append(["status while they wait", "5", "-", f"median {ms(st_time)} "
                         f"({len(doc['queue']['entries'])} entries)", "-"])  # fmt: skip
            job_time, view = await status_time(session, proxy + ids[-1])
            rows.append(["GET of the last job", "5", "-",
                         f"median {ms(job_time)} (position {view['position']})", "-"])  # fmt: skip
            # -- dispatch: free the slot, drain the queue through the engine
            base = (await sim_stats(session, engine))["completed_generations"]
            cpu0, t0 = cpu_seconds(pid), time.perf_counter()
            async with session.delete(holder) as resp:
                await resp.read()
            await wait_completed(session, engine, base + n, within=max(60.0, n / 5))
            wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
            await wait_queue(session, status, 0)
            rows.append(["dispatch: queue drained (0 s songs)", f"{n:,}",
                         f"{n / wall:,.0f} jobs/s", f"{wall:.2f} s in all",
                         f"{cpu / n * 1e3:.2f} ms"])  # fmt: skip
            stats = await sim_stats(session, engine)
        # -- held connections: one each
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            holder = await hold_slot(session, proxy, "b")
            proc = psutil.Process(pid)
            rss0 = proc.memory_info().rss

            async def held(i: int) -> int:
                body = {"lyrics": f"held {i}", "description": "y", "seconds": 0}
                async with session.post(proxy + "/generate", json=body, headers=JSON_HEADERS) as r:
                    await r.read()
                    return r.status

            tasks = [asyncio.create_task(held(i)) for i in range(n)]
            try:
                t0 = time.perf_counter()
                await wait_queue(session, status, n)
                joined = time.perf_counter() - t0
                rss1 = proc.memory_info().rss
                st_time, doc = await status_time(session, status)
                rows.append([f"held connections waiting ({len(doc['queue']['entries'])} entries)",
                             f"{n:,}", f"{n / joined:,.0f} joined/s",
                             f"RSS {rss0 / MiB:.1f} -> {rss1 / MiB:.1f} MiB "
                             f"(+{(rss1 - rss0) / 1024 / n:.1f} KiB each)", "-"])  # fmt: skip
                rows.append(["status while they wait", "5", "-", f"median {ms(st_time)}", "-"])
                t0 = time.perf_counter()
                async with session.delete(holder) as resp:
                    await resp.read()
                held_codes = await asyncio.wait_for(
                    asyncio.gather(*tasks), timeout=max(60.0, n / 5)
                )
                wall = time.perf_counter() - t0
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            bad = [c for c in held_codes if c != 200]
            if bad:
                raise CheckFailed(f"{len(bad)} held clients not 200 (e.g. {bad[0]})")
            rows.append(["held drained, every client its 200", f"{n:,}",
                         f"{n / wall:,.0f} jobs/s", f"{wall:.2f} s in all", "-"])  # fmt: skip
            peak = (await sim_stats(session, engine))["peak_active_generations"]
    print(f"\n  real: gatekeeper run --state-dir {state_dir} (max_waiting {n}, per_client {n + 1}),"
          " engine-sim --no-cpu, an hour-long song holding the one slot\n")  # fmt: skip
    print(table(["what", "jobs", "rate", "latency / time", "gatekeeper CPU per job"], rows))
    print(f"\n  engine-sim: {stats['requests'].get('POST /generate', 0)} POST /generate after "
          f"the async drain, peak {peak} active (the cancelled holders keep running there);"
          "\n  a 0 s song costs engine-sim ~24 ms (its WAV): the drain rate")  # fmt: skip
    summary.lines.append(f"waiting room, {n:,} waiters: see section f (figures printed, no target)")
    await deep_queue(svcs, summary, DEPTHS if n >= 1000 else (n,))
