"""Section h: several engines behind one gatekeeper (issue #11 §1).

1. **spread**: two ``engine-sim --no-cpu`` (gpu0, gpu1) listed in ``upstream.engines``
   (one slot each) behind one ``gatekeeper run`` whose ``/generate`` is a ``queue``
   route; ``n`` async jobs (``Prefer: respond-async``, distinct lyrics so nothing
   coalesces, songs of ``plan.generation_seconds``) submitted at once. Per engine: the
   jobs the job views said ran there, ``gatekeeper_engine_admitted_total``, and the
   engine's own ``peak_active_generations`` and ``completed_generations``
   (``/_sim/stats``). The makespan (first submission to last job done) against the same
   ``n`` through a gatekeeper with one engine (ratio; ideal 0.5).
2. **kill**: a long job runs on gpu0; ``kill -9`` of gpu0, and the next job is
   submitted at once: the time until ``/status`` says gpu0 is down
   (``upstream.probe.interval`` :data:`PROBE_INTERVAL`), and until the next job runs on
   gpu1. The killed engine's job must fail (not be re-run on gpu1); the next job must
   be done on gpu1.

Checks (:class:`CheckFailed`): no engine's own peak above 1; every job done (the killed
engine's running job: failed); per engine, job views = admitted counter = completed.
Figures are printed, not asserted.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench import targets
from bench.client import sim_stats
from bench.procs import Service, Services
from bench.report import SMOKE, CheckFailed, Plan, Summary, heading, table

ASYNC = {"Content-Type": "application/json", "Prefer": "respond-async"}
JOBS = "/_gatekeeper/jobs"
PROBE_INTERVAL = 0.5  # upstream.probe.interval (and timeout) of section h's rules
ENDED = ("done", "failed", "cancelled", "expired")
POLL = 0.01


@dataclass
class Run:
    """What ``n`` async jobs did: where each ran, how each ended, how long all took."""

    engine_of: dict[str, str]  # job id -> the engine its view named while it ran
    state_of: dict[str, str]
    makespan: float


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        resp.raise_for_status()
        return await resp.json()


async def submit(session: aiohttp.ClientSession, proxy: str, lyrics: str, seconds: float) -> str:
    body = {"lyrics": lyrics, "description": "y", "seconds": seconds}
    async with session.post(proxy + "/generate", json=body, headers=ASYNC) as resp:
        if resp.status != 202:
            raise CheckFailed(f"job {lyrics!r} got {resp.status}: {await resp.text()}")
        return str((await resp.json())["id"])


@dataclass(frozen=True)
class End:
    """One job as its view told it: the engine it ran on, how it ended, and when
    (``time.perf_counter``) it was first seen running and seen ended."""

    engine: str
    state: str
    started: float
    ended: float


async def watch(session: aiohttp.ClientSession, proxy: str, job_id: str, within: float) -> End:
    """Poll one job's view every :data:`POLL` until it ends."""
    engine, started = "?", float("nan")
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        view = await get_json(session, f"{proxy}{JOBS}/{job_id}")
        now = time.perf_counter()
        engine = view.get("engine") or engine
        if view["state"] == "running" and started != started:  # nan: not seen yet
            started = now
        if view["state"] in ENDED:
            return End(engine, str(view["state"]), started, now)
        await asyncio.sleep(POLL)
    raise CheckFailed(f"job {job_id} did not end within {within:.0f} s")


async def run_jobs(
    session: aiohttp.ClientSession, proxy: str, n: int, song: float, tag: str
) -> Run:
    t0 = time.perf_counter()
    ids = [await submit(session, proxy, f"{tag} song {i}", song) for i in range(n)]
    ends = await asyncio.gather(*(watch(session, proxy, i, n * song + 30) for i in ids))
    return Run(
        engine_of={i: e.engine for i, e in zip(ids, ends, strict=True)},
        state_of={i: e.state for i, e in zip(ids, ends, strict=True)},
        makespan=max(e.ended for e in ends) - t0,
    )


async def engine_metric(session: aiohttp.ClientSession, admin: str, name: str) -> dict[str, int]:
    """``{engine: value}`` of one per-engine series from ``/metrics``."""
    async with session.get(admin + "/metrics") as resp:
        text = await resp.text()
    out: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('engine="', 1)[1].split('"', 1)[0]] = int(float(value))
    return out


async def engine_rows(
    session: aiohttp.ClientSession,
    admin: str,
    engines: dict[str, str],
    run: Run,
    label: str,
) -> list[list[str]]:
    """One row per engine; raises CheckFailed if the four counts disagree or peak > 1."""
    admitted = await engine_metric(session, admin, "gatekeeper_engine_admitted_total")
    by_view = Counter(run.engine_of.values())
    rows = []
    for name, url in engines.items():
        stats = await sim_stats(session, url)
        peak, done = stats["peak_active_generations"], stats["completed_generations"]
        if peak > 1:
            raise CheckFailed(f"{label}: engine {name} ran {peak} generations at once")
        if not by_view[name] == admitted.get(name, 0) == done:
            raise CheckFailed(
                f"{label}: engine {name}: job views {by_view[name]}, admitted "
                f"{admitted.get(name, 0)}, completed {done} (must be equal)"
            )
        rows.append([label, name, str(by_view[name]), str(admitted.get(name, 0)), str(peak),
                     str(done)])  # fmt: skip
    return rows


def check_done(run: Run, label: str) -> None:
    bad = {i: s for i, s in run.state_of.items() if s != "done"}
    if bad:
        raise CheckFailed(f"{label}: {len(bad)} job(s) not done: {bad}")


async def until(predicate: Any, within: float, what: str) -> float:
    """Poll the async ``predicate`` until true; the perf_counter time it first was."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():
            return time.perf_counter()
        await asyncio.sleep(POLL)
    raise CheckFailed(f"{what} not within {within:.0f} s")


async def kill_one(
    session: aiohttp.ClientSession,
    proxy: str,
    admin: str,
    victim: tuple[str, Service],
    song: float,
) -> list[list[str]]:
    """kill -9 of the engine running a long job; the next job must run on the other."""
    name, svc = victim

    async def status() -> Any:
        return await get_json(session, admin + "/status")

    long_job = await submit(session, proxy, "killed mid-song", 3600)

    async def running_on_victim() -> bool:
        view = await get_json(session, f"{proxy}{JOBS}/{long_job}")
        return bool(view["state"] == "running" and view.get("engine") == name)

    await until(running_on_victim, 20, f"the long job running on {name}")
    t0 = time.perf_counter()
    svc.proc.kill()  # SIGKILL: a crash as far as anyone can tell
    next_job = await submit(session, proxy, "the next job", song)

    async def victim_down() -> bool:
        doc = await status()
        return any(e["name"] == name and e["up"] is False for e in doc["engines"])

    down_at, killed, nxt = await asyncio.gather(
        until(victim_down, 10 * PROBE_INTERVAL + 10, f"{name} reported down"),
        watch(session, proxy, long_job, 30),
        watch(session, proxy, next_job, song + 30),
    )
    if killed.state != "failed":
        raise CheckFailed(f"the killed engine's job ended {killed.state}, not failed")
    if nxt.engine == name or nxt.state != "done":
        raise CheckFailed(
            f"the job submitted after kill -9 of {name} ran on {nxt.engine} and ended "
            f"{nxt.state} (it must be done by the other engine)"
        )
    after = [
        ["killed engine's running job seen failed", killed.ended],
        [f"/status says {name} up: false", down_at],
        [f"next job seen running on {nxt.engine}", nxt.started],
        [f"next job seen done on {nxt.engine} ({song:g} s song)", nxt.ended],
    ]
    return [[what, f"{(t - t0) * 1e3:,.0f} ms"] for what, t in after]


async def section_h(svcs: Services, plan: Plan, summary: Summary) -> None:
    """Two engines: spread, per-engine peaks and counts, makespan, kill -9 of one."""
    n = 4 if plan == SMOKE else 6
    song = plan.generation_seconds
    heading(f"h. several engines ({n} async jobs, {song:g} s songs)")
    sim = ("--no-cpu", "--memory-mb", "0")
    with svcs.scope():
        e0, url0 = targets.engine(svcs, *sim)
        _, url1 = targets.engine(svcs, *sim)
        _, url_alone = targets.engine(svcs, *sim)
        two = {"gpu0": url0, "gpu1": url1}
        _, proxy2, admin2 = targets.gatekeeper_engines(
            svcs, list(two.items()), probe_interval=PROBE_INTERVAL, name="rules-h2"
        )
        _, proxy1, admin1 = targets.gatekeeper_engines(
            svcs, [("gpu0", url_alone)], probe_interval=PROBE_INTERVAL, name="rules-h1"
        )
        async with aiohttp.ClientSession() as session:
            for admin in (admin2, admin1):  # both probed up before the clock starts
                await until(
                    lambda a=admin: _all_up(session, a), 10 * PROBE_INTERVAL + 10, "engines up"
                )
            both = await run_jobs(session, proxy2, n, song, "two")
            check_done(both, "two engines")
            rows = await engine_rows(session, admin2, two, both, "two engines")
            alone = await run_jobs(session, proxy1, n, song, "one")
            check_done(alone, "one engine")
            rows += await engine_rows(session, admin1, {"gpu0": url_alone}, alone, "one engine")
            kill = await kill_one(session, proxy2, admin2, ("gpu0", e0), song)
    print(f"\n  {n} async jobs of {song:g} s each, submitted at once (queue route);"
          " engine-sim --no-cpu, one slot per engine\n")  # fmt: skip
    print(table(["gatekeeper", "engine", "jobs (views)", "admitted_total", "engine peak",
                 "engine completed"], rows))  # fmt: skip
    ratio = both.makespan / alone.makespan
    print()
    print(table(["makespan", "two engines", "one engine", "ratio"],
                [[f"{n} jobs", f"{both.makespan:.2f} s", f"{alone.makespan:.2f} s",
                  f"{ratio:.3f}x (ideal 0.5)"]]))  # fmt: skip
    print(f"\n  kill -9 of gpu0 mid-song (upstream.probe.interval {PROBE_INTERVAL:g} s);"
          " the next job submitted at once, times from the kill\n")  # fmt: skip
    print(table(["what", "after kill -9"], kill))
    summary.lines.append(
        f"several engines: {n} jobs on two engines in {ratio:.2f}x one engine's time; see section h"
    )


async def _all_up(session: aiohttp.ClientSession, admin: str) -> bool:
    doc = await get_json(session, admin + "/status")
    return all(e["up"] is True for e in doc["engines"])
