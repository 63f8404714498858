"""Section b: the rejection fast path, against nginx's and HAProxy's cheapest "no".

gatekeeper: one ``POST /generate`` is admitted and held by engine-sim; ``hey -c 32``
then hammers ``POST /generate`` and every answer must be ``503 busy`` while the engine
sees exactly one generation. nginx (``return 503``) and HAProxy (``http-request return
status 503``) answer the same requests with a body of the same size, as baselines.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import aiohttp

from bench import targets
from bench.client import GENERATE_BODY, JSON_HEADERS, post_generate, sim_stats, wait_active
from bench.load import Run, measure, median_run, parse_hey, spread
from bench.procs import Service, Services
from bench.report import CheckFailed, Plan, Ratio, Summary, heading, ms, table


def _hey(plan: Plan, url: str) -> list[str]:
    argv = ["hey", "-z", f"{plan.load_seconds:g}s", "-c", "32", "-m", "POST"]
    return [*argv, "-d", GENERATE_BODY, "-T", "application/json", url]


async def _gatekeeper_runs(svcs: Services, plan: Plan) -> tuple[list[Run], int]:
    """hey against gatekeeper while one generation holds the slot; (runs, engine count)."""
    with svcs.scope():
        _, engine = targets.engine(svcs, "--no-cpu", "--seconds", "60", "--memory-mb", "16")
        gk, proxy = targets.gatekeeper(svcs, engine, name="rules-unpaced", paced=False)
        async with aiohttp.ClientSession() as session:
            long_gen = asyncio.create_task(post_generate(session, proxy + "/generate"))
            try:
                await wait_active(session, engine, 1)
                async with session.post(
                    proxy + "/generate", data=GENERATE_BODY, headers=JSON_HEADERS
                ) as resp:
                    reason = resp.headers.get("X-Gatekeeper-Reason")
                    if resp.status != 503 or reason != "busy":
                        raise CheckFailed(f"expected 503 busy, got {resp.status} {reason}")
                    await resp.read()
                runs = await measure(
                    _hey(plan, proxy + "/generate"), parse_hey, svcs, gk, plan.repeat
                )
                stats = await sim_stats(session, engine)
            finally:
                long_gen.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                    await long_gen
    return runs, int(stats["requests"].get("POST /generate", 0))


async def _baseline_runs(svcs: Services, plan: Plan, which: str) -> list[Run]:
    with svcs.scope():
        proxy: Service | None
        if which == "nginx":
            proxy, url = targets.nginx(svcs)
        else:
            proxy, _, url = targets.haproxy(svcs, None)
        return await measure(_hey(plan, url + "/generate"), parse_hey, svcs, proxy, plan.repeat)


async def section_b(svcs: Services, plan: Plan, summary: Summary) -> None:
    """The reject path while one generation holds the slot; the engine sees one request."""
    heading("b. rejection fast path (POST /generate answered 503 without the engine)")
    print(f"  {plan.repeat} run(s) per row; the median run is shown, range spans all\n")
    gk_runs, seen = await _gatekeeper_runs(svcs, plan)
    nginx_runs = await _baseline_runs(svcs, plan, "nginx")
    haproxy_runs = await _baseline_runs(svcs, plan, "haproxy")
    rows = []
    medians: dict[str, Run] = {}
    for label, runs in (
        ("gatekeeper (busy)", gk_runs),
        ("nginx return 503", nginx_runs),
        ("HAProxy return 503", haproxy_runs),
    ):
        m = medians[label] = median_run(runs)
        statuses: Counter[str] = Counter()
        for r in runs:
            statuses.update(r.load.statuses)
        rows.append(
            [label, "32", f"{m.load.requests_per_second:,.0f}", spread(runs), ms(m.load.p50),
             ms(m.load.p99), f"{m.proxy_cpu:.0f} %", f"{max(r.other_cores for r in runs):.2f}",
             " ".join(f"{k} x{v}" for k, v in sorted(statuses.items())),
             str(sum(r.load.errors for r in runs))]
        )  # fmt: skip
        if set(statuses) != {"503"}:
            raise CheckFailed(f"{label}: expected only 503 answers, got {dict(statuses)}")
    print()
    print(table(
        ["target", "conns", "req/s", "range", "p50", "p99", "server CPU", "other CPU (cores)",
         "status codes (all runs)", "transport errors"],
        rows,
    ))  # fmt: skip
    gk = medians["gatekeeper (busy)"].load.requests_per_second
    for name, label, target in (
        ("nginx", "nginx return 503", 0.15),
        ("HAProxy", "HAProxy return 503", None),
    ):
        base = medians[label].load.requests_per_second
        summary.add(Ratio("rejections/s, 32 conns", gk, name, base, "req/s", target))
    print(f"\n  engine-sim POST /generate received during gatekeeper's runs: {seen}")
    if seen != 1:
        raise CheckFailed(f"engine saw {seen} POST /generate, expected exactly 1")
    print("  check: engine-sim /_sim/stats requests['POST /generate'] == 1  OK")
