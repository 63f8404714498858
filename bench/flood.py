"""Section e: how much a flood of rejected requests slows the one running generation.

The figure this product exists for (goal: <= 5 %). One generation of a known length is
sent through gatekeeper and timed from the request to the last byte of the answer:
``plan.repeat`` times on an idle box, then as often while a flood posts to the gated
route of the same gatekeeper (every one answered ``503 busy``: the flood starts once
the engine reports the generation running, and is stopped when the answer is in).

Two floods: ``wrk -c 1000`` (closed loop: each connection sends again as soon as it is
answered, so it takes all the CPU the rejecting server can use) and ``hey -c 1000 -q 1``
(open loop: 1,000 clients each retrying once a second, 1,000 requests/s in all).

Two engines, because the answer depends on what a generation is:

- ``gatekeeper engine-sim`` (its worker spins a core): a generation ends after a
  wall-clock time however little CPU it got, so only gatekeeper's own delay in relaying
  the answer can show.
- ``bench/cpu_engine.py``: a generation is a fixed amount of CPU work, so every CPU
  second the flood costs the box (gatekeeper's rejections *and* the load generator,
  which lives on the same 2 cores) slows it down. The same ``wrk`` flood aimed at
  nginx's ``return 503`` instead shows what the cheapest possible "no" costs.

gatekeeper runs as it ships (issue #18 §8): ``--log-level INFO`` (refusal lines
aggregated under the flood, ``log.refusals``), refusals past 500 a second answered
at that pace (``limits.refusal_pacing``: a closed-loop flooder then waits for its
answers instead of taking the CPU) and at the ``Nice=`` of the shipped systemd
unit, its CPU weight below the engine's (read from
``deploy/systemd/gatekeeper.service``). The engines and the load generators run at
nice 0.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench import targets
from bench.client import post_generate, sim_stats, wait_active
from bench.load import (
    Load,
    Meter,
    parse_hey,
    parse_wrk,
    process_cpu,
    reaped_children_cpu,
    run_tool,
    wrk_post_script,
)
from bench.procs import Service, Services
from bench.report import CheckFailed, Plan, Ratio, Summary, heading, median, table

# A flood request that does get through (in the instant after the generation ends)
# costs the engine nothing: engine-sim runs 0 s, cpu_engine skips a body without "work".
FLOOD_BODY = '{"lyrics":"x","description":"flood","seconds":0}'


@dataclass(frozen=True)
class Flood:
    label: str
    argv: list[str]  # without the URL
    parse: Callable[[str], Load]
    url: str  # base URL of the flooded server
    server: Service  # whose CPU is reported


@dataclass(frozen=True)
class Generation:
    wall: float  # request sent -> answer read, seconds
    engine_work: float | None  # cpu_engine's own wall time for the work
    flood: Load | None
    server_cpu: float  # cores, the flooded server (gatekeeper when idle)
    flooder_cpu: float  # cores, the load generator
    other_cpu: float  # cores, everything on the machine that is not this run's (load.Meter)


async def _start(
    session: aiohttp.ClientSession, proxy: str, engine: str, body: dict[str, Any]
) -> tuple[float, asyncio.Task[tuple[int, bytes]]]:
    """Send the generation once the slot is free; (start time, the request's task).

    A flood request may slip into the slot in the instant after the previous generation
    ended (the engine answers it at once); then this one hears ``503 busy`` and retries.
    """
    deadline = time.monotonic() + 10
    while True:
        t0 = time.perf_counter()
        gen = asyncio.create_task(post_generate(session, proxy + "/generate", body))
        running = asyncio.create_task(wait_active(session, engine, 1))
        await asyncio.wait([gen, running], return_when=asyncio.FIRST_COMPLETED)
        if not gen.done():
            await running
            return t0, gen
        running.cancel()
        status, answer = gen.result()
        if status != 503 or time.monotonic() > deadline:
            raise CheckFailed(f"the generation ended before it ran: {status} {answer[:200]!r}")
        await asyncio.sleep(0.05)


async def _one(
    svcs: Services,
    session: aiohttp.ClientSession,
    gk: Service,
    proxy: str,
    engine: str,
    body: dict[str, Any],
    flood: Flood | None,
) -> Generation:
    server = flood.server if flood is not None else gk
    server_cpu, tool_cpu = process_cpu([server.pid]), reaped_children_cpu()
    meter = Meter(None, [s.pid for s in svcs.running()])
    t0, gen = await _start(session, proxy, engine, body)
    flooding: asyncio.Task[str] | None = None
    stop = asyncio.Event()
    try:
        if flood is not None:
            argv = [*flood.argv, flood.url + "/generate"]
            flooding = asyncio.create_task(run_tool(argv, show=False, until=stop))
        status, answer = await gen
        wall = time.perf_counter() - t0
    except BaseException:
        if flooding is not None:
            flooding.cancel()
            await asyncio.gather(flooding, return_exceptions=True)
        raise
    finally:
        stop.set()
        gen.cancel()
    load = flood.parse(await flooding) if flood is not None and flooding is not None else None
    elapsed = time.perf_counter() - t0
    if status != 200:
        raise CheckFailed(f"the measured generation answered {status}: {answer[:200]!r}")
    await wait_active(session, engine, 0)
    work = json.loads(answer).get("work_seconds") if "work" in body else None
    return Generation(
        wall,
        work,
        load,
        (process_cpu([server.pid]) - server_cpu) / elapsed,
        (reaped_children_cpu() - tool_cpu) / elapsed,
        meter.stop()[1],
    )


def _floods(
    plan: Plan, script: str, gk: tuple[Service, str], nginx: tuple[Service, str] | None
) -> list[Flood]:
    c = plan.flood_connections
    long = f"{plan.generation_seconds * 20 + 30:g}s"  # stopped when the generation ends
    wrk = ["wrk", "-t", "2", "-c", str(c), "-d", long, "--timeout", "10s", "-s", script]
    hey = ["hey", "-z", long, "-c", str(c), "-q", "1", "-m", "POST", "-d", FLOOD_BODY]
    hey += ["-T", "application/json"]
    floods = [
        Flood(f"gatekeeper, wrk -c {c}", wrk, parse_wrk, gk[1], gk[0]),
        Flood(f"gatekeeper, hey -c {c} -q 1", hey, parse_hey, gk[1], gk[0]),
    ]
    if nginx is not None:
        floods.append(Flood(f"nginx return 503, wrk -c {c}", wrk, parse_wrk, nginx[1], nginx[0]))
    return floods


async def section_e(svcs: Services, plan: Plan, summary: Summary) -> None:
    """One generation's wall time, idle and under a flood of rejected requests."""
    g, c = plan.generation_seconds, plan.flood_connections
    heading(f"e. a {g:g} s generation, idle and under a {c:,}-connection flood of rejections")
    script = str(wrk_post_script(svcs.workdir / "flood.lua", FLOOD_BODY))
    print(f"  floods: POST {FLOOD_BODY} to <target>/generate with")
    print(f"    wrk -t 2 -c {c} --timeout 10s -s {script}   (closed loop, as fast as answered)")
    print(f"    hey -c {c} -q 1                              (open loop, {c:,} req/s)")
    print(
        f"  gatekeeper as shipped: --log-level INFO, nice {targets.shipped_nice()}"
        " (the systemd unit's Nice=), limits.refusal_pacing as shipped (500/s past a burst"
        " of 500, at most 2 s); engines and load generators at nice 0"
    )
    print(
        f"  {plan.repeat} generation(s) per row, interleaved (idle, each flood, idle, ...);"
        " the median is shown, range spans all\n"
    )
    rows: list[list[str]] = []
    for kind in ("engine-sim", "cpu_engine"):
        with svcs.scope():
            if kind == "engine-sim":
                _, engine = targets.engine(svcs, "--seconds", f"{g:g}", "--memory-mb", "16")
                body: dict[str, Any] = {"lyrics": "x", "description": "bench", "seconds": g}
                nginx: tuple[Service, str] | None = None
            else:
                _, engine = targets.cpu_engine(svcs, g)
                body = {"lyrics": "x", "description": "bench", "work": True}
                nginx = targets.nginx(svcs)
            # As shipped: the INFO access log, and the unit's Nice= below the engine.
            gk, proxy = targets.gatekeeper(
                svcs, engine, log_level="INFO", nice=targets.shipped_nice()
            )
            floods = _floods(plan, script, (gk, proxy), nginx)
            async with aiohttp.ClientSession() as session:
                # Interleaved (idle, each flood; idle, each flood; ...): on a shared box the
                # load of others drifts over minutes, and it then weighs on every row alike.
                runs: list[list[Generation]] = [[] for _ in range(1 + len(floods))]
                for _ in range(plan.repeat):
                    for i, flood in enumerate([None, *floods]):
                        runs[i].append(await _one(svcs, session, gk, proxy, engine, body, flood))
                idle = median([x.wall for x in runs[0]])
                rows.append(_row(kind, "none (idle box)", runs[0], idle))
                for flood, gens in zip(floods, runs[1:], strict=True):
                    rows.append(_row(kind, flood.label, gens, idle))
                    wall = median([x.wall for x in gens])
                    target = 1.05 if flood.url == proxy else None
                    what = f"generation time, {kind}, flood at {flood.label}"
                    summary.add(Ratio(what, wall, "idle box", idle, "s", target, False))
                stats = await sim_stats(session, engine)
            measured = (1 + len(floods)) * plan.repeat
            print(
                f"  {kind}: flood requests that reached the engine (after a generation "
                f"ended): {_leaked(kind, stats, measured)}"
            )
    print()
    print(table(
        ["engine", "flood at", "generation", "range", "slowdown", "engine-side work",
         "flood req/s", "flood requests", "2xx (got through)",
         "transport errors", "server CPU", "flooder CPU", "other CPU (cores)"],
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
        f"{(m / idle - 1) * 100:+.1f} % ({m - idle:+.3f} s)",
        f"{median(work):.3f} s" if work else "-",
        f"{median([f.requests_per_second for f in floods]):,.0f}" if floods else "-",
        f"{sum(f.requests for f in floods):,}" if floods else "-",
        f"{sum(_got_through(f) for f in floods):,}" if floods else "-",
        f"{sum(_transport_errors(f) for f in floods):,}" if floods else "-",
        f"{median([x.server_cpu for x in gens]) * 100:.0f} %",
        f"{median([x.flooder_cpu for x in gens]):.2f} cores" if floods else "-",
        f"{max(x.other_cpu for x in gens):.2f}",
    ]


def _got_through(load: Load) -> int:
    """Flood requests answered 2xx/3xx: admitted in the instant after a generation."""
    if "non-2xx/3xx" in load.statuses or not load.statuses:  # wrk
        return load.requests - load.statuses.get("non-2xx/3xx", 0)
    return sum(n for code, n in load.statuses.items() if code[0] in "23")


def _transport_errors(load: Load) -> int:
    if "non-2xx/3xx" in load.statuses or not load.statuses:  # wrk
        return load.errors - load.statuses.get("non-2xx/3xx", 0)
    return load.errors


def _leaked(kind: str, stats: dict[str, Any], generations: int) -> int:
    if kind == "cpu_engine":
        return int(stats["skipped_requests"])
    return int(stats["requests"].get("POST /generate", 0)) - generations
