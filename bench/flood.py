"""Section e: how much a flood of rejected requests slows the one running generation.

The figure this product exists for (goal: <= 5 %). One generation of a known length is
sent through gatekeeper and timed from the request to the last byte of the answer:
``plan.repeat`` times on an idle box, then as often while ``wrk -c <flood_connections>``
posts to the gated route of the same gatekeeper (every one answered ``503 busy``: the
flood starts once the engine reports the generation running, and stops when it ends).

Two engines, because the answer depends on what a generation is:

- ``gatekeeper engine-sim`` (its worker spins a core): a generation ends after a
  wall-clock time however little CPU it got, so only gatekeeper's own delay in relaying
  the answer can show.
- ``bench/cpu_engine.py``: a generation is a fixed amount of CPU work, so every CPU
  second the flood costs the box (gatekeeper's rejections *and* the load generator,
  which has to live on the same 2 cores) can slow it down. The same flood aimed at
  nginx's ``return 503`` instead of gatekeeper measures the load generator's share.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench import targets
from bench.client import post_generate, sim_stats, wait_active
from bench.load import Load, parse_wrk, process_cpu, reaped_children_cpu, run_tool, wrk_post_script
from bench.procs import Service, Services
from bench.report import CheckFailed, Plan, Ratio, Summary, heading, median, table

# A flood request that does get through (in the instant after the generation ends)
# costs the engine nothing: engine-sim runs 0 s, cpu_engine skips a body without "work".
FLOOD_BODY = '{"lyrics":"x","description":"flood","seconds":0}'


@dataclass(frozen=True)
class Generation:
    wall: float  # request sent -> answer read, seconds
    engine_work: float | None  # cpu_engine's own wall time for the work
    flood: Load | None
    proxy_cpu: float  # cores, gatekeeper, over the generation
    flooder_cpu: float  # cores, wrk


async def _one(
    session: aiohttp.ClientSession,
    plan: Plan,
    gk: Service,
    proxy: str,
    engine: str,
    body: dict[str, Any],
    flood_url: str | None,
    script: str,
) -> Generation:
    gk_cpu, wrk_cpu = process_cpu([gk.pid]), reaped_children_cpu()
    t0 = time.perf_counter()
    gen = asyncio.create_task(post_generate(session, proxy + "/generate", body))
    flood: asyncio.Task[str] | None = None
    stop = asyncio.Event()
    try:
        await wait_active(session, engine, 1)
        if flood_url is not None:
            argv = ["wrk", "-t", "2", "-c", str(plan.flood_connections), "-s", script]
            argv += ["-d", f"{plan.generation_seconds * 20 + 30:g}s", "--timeout", "10s"]
            flood = asyncio.create_task(
                run_tool([*argv, flood_url + "/generate"], show=False, until=stop)
            )
        status, answer = await gen
        wall = time.perf_counter() - t0
    except BaseException:
        if flood is not None:
            flood.cancel()
            await asyncio.gather(flood, return_exceptions=True)
        raise
    finally:
        stop.set()
        gen.cancel()
    load = parse_wrk(await flood) if flood is not None else None
    elapsed = time.perf_counter() - t0
    if status != 200:
        raise CheckFailed(f"the measured generation answered {status}: {answer[:200]!r}")
    await wait_active(session, engine, 0)
    work = json.loads(answer).get("work_seconds") if "work" in body else None
    return Generation(
        wall,
        work,
        load,
        (process_cpu([gk.pid]) - gk_cpu) / elapsed,
        (reaped_children_cpu() - wrk_cpu) / elapsed,
    )


async def section_e(svcs: Services, plan: Plan, summary: Summary) -> None:
    """One generation's wall time, idle and under a flood of rejected requests."""
    g, c = plan.generation_seconds, plan.flood_connections
    heading(f"e. a {g:g} s generation, idle and under a {c:,}-connection flood of rejections")
    script = str(wrk_post_script(svcs.workdir / "flood.lua", FLOOD_BODY))
    print(f"  flood: wrk -t 2 -c {c} -s {script} (POST {FLOOD_BODY}) <target>/generate")
    print(f"  {plan.repeat} generation(s) per row; the median is shown, range spans all\n")
    rows: list[list[str]] = []
    for kind in ("engine-sim", "cpu_engine"):
        with svcs.scope():
            if kind == "engine-sim":
                _, engine = targets.engine(svcs, "--seconds", f"{g:g}", "--memory-mb", "16")
                body: dict[str, Any] = {"lyrics": "x", "description": "bench", "seconds": g}
            else:
                _, engine = targets.cpu_engine(svcs, g)
                body = {"lyrics": "x", "description": "bench", "work": True}
            _, nginx_url = targets.nginx(svcs)
            gk, proxy = targets.gatekeeper(svcs, engine)
            floods = [("none (idle box)", None), (f"gatekeeper, {c:,} conns", proxy)]
            if kind == "cpu_engine":
                floods.append((f"nginx return 503, {c:,} conns", nginx_url))
            async with aiohttp.ClientSession() as session:
                medians: dict[str | None, float] = {}
                for label, url in floods:
                    gens = [
                        await _one(session, plan, gk, proxy, engine, body, url, script)
                        for _ in range(plan.repeat)
                    ]
                    medians[url] = median([x.wall for x in gens])
                    rows.append(_row(kind, label, gens, medians[None]))
                stats = await sim_stats(session, engine)
            what = f"generation wall time under the flood ({kind})"
            summary.add(Ratio(what, medians[proxy], "idle box", medians[None], "s", 1.05, False))
            if kind == "cpu_engine":
                summary.add(Ratio("  same flood at nginx return 503 (the load generator's share)",
                                  medians[nginx_url], "idle box", medians[None], "s"))  # fmt: skip
            leaked = _leaked(kind, stats, len(floods) * plan.repeat)
            print(f"  {kind}: flood requests that reached the engine (after a generation ended): "
                  f"{leaked}")  # fmt: skip
    print()
    print(table(
        ["engine", "flood at", "generation wall", "range", "slowdown", "engine-side work",
         "flood req/s", "flood non-2xx+errors", "gatekeeper CPU", "flooder CPU"],
        rows,
    ))  # fmt: skip


def _row(kind: str, label: str, gens: list[Generation], idle: float) -> list[str]:
    walls = [x.wall for x in gens]
    m = median(walls)
    work = [x.engine_work for x in gens if x.engine_work is not None]
    floods = [x.flood for x in gens if x.flood is not None]
    return [
        kind,
        label,
        f"{m:.3f} s",
        f"{min(walls):.3f}-{max(walls):.3f}" if len(walls) > 1 else "-",
        f"{(m / idle - 1) * 100:+.1f} %",
        f"{median(work):.3f} s" if work else "-",
        f"{median([f.requests_per_second for f in floods]):,.0f}" if floods else "-",
        f"{sum(f.errors for f in floods):,}" if floods else "-",
        f"{median([x.proxy_cpu for x in gens]) * 100:.0f} %",
        f"{median([x.flooder_cpu for x in gens]):.2f} cores" if floods else "-",
    ]


def _leaked(kind: str, stats: dict[str, Any], generations: int) -> int:
    if kind == "cpu_engine":
        return int(stats["skipped_requests"])
    return int(stats["requests"].get("POST /generate", 0)) - generations
