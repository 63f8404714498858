"""Section c: exact admission under a burst of simultaneous admits.

A fresh engine-sim and gatekeeper with ``max_in_flight: 1``; ``plan.burst`` ``POST
/generate`` fired at once from this process (aiohttp, no connection limit, so as many
new connections). Exactly one may reach the engine, every other one is ``503 busy``.
"""

from __future__ import annotations

import asyncio
import time
import types
from collections import Counter

import aiohttp

from bench import targets
from bench.client import GENERATE_BODY, JSON_HEADERS, sim_stats
from bench.procs import Services
from bench.report import (
    CheckFailed,
    Plan,
    Summary,
    heading,
    listen_overflows,
    ms,
    percentile,
    table,
)

Result = tuple[int, str, float, float]  # status, reason, since burst start, since own headers


async def section_c(svcs: Services, plan: Plan, summary: Summary) -> None:
    """A burst of simultaneous admits: exactly one forwarded, the rest rejected at once."""
    n = plan.burst
    heading(f"c. exact admission ({n} simultaneous POST /generate, max_in_flight 1)")
    with svcs.scope():
        _, engine = targets.engine(svcs, "--no-cpu", "--seconds", "60", "--memory-mb", "16")
        _, proxy = targets.gatekeeper(svcs, engine)
        sent: dict[int, float] = {}

        async def on_headers_sent(
            _s: aiohttp.ClientSession,
            ctx: types.SimpleNamespace,
            _p: aiohttp.TraceRequestHeadersSentParams,
        ) -> None:
            if ctx.trace_request_ctx:  # the burst's requests only
                sent[ctx.trace_request_ctx["i"]] = time.perf_counter()

        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(on_headers_sent)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as session:
            print(
                f"\n  client: aiohttp {aiohttp.__version__} in this process, "
                f"TCPConnector(limit=0): {n} new connections, all tasks created at once"
            )
            overflows_before = listen_overflows()
            t0 = time.perf_counter()

            async def one(i: int) -> Result:
                async with session.post(
                    proxy + "/generate",
                    data=GENERATE_BODY,
                    headers=JSON_HEADERS,
                    trace_request_ctx={"i": i},
                ) as resp:
                    t = time.perf_counter()
                    await resp.read()
                    reason = resp.headers.get("X-Gatekeeper-Reason", "-")
                    return resp.status, reason, t - t0, t - sent.get(i, t)

            tasks = [asyncio.create_task(one(i)) for i in range(n)]
            try:
                # The admitted one runs for 60 s; everything else must answer quickly.
                done: set[asyncio.Task[Result]] = set()
                pending = set(tasks)
                deadline = time.monotonic() + 30
                while len(done) < n - 1 and pending and time.monotonic() < deadline:
                    more, pending = await asyncio.wait(
                        pending, timeout=0.1, return_when=asyncio.FIRST_COMPLETED
                    )
                    done |= more
                overflows = listen_overflows() - overflows_before
                # The "no"s can all be out before the one admitted request has crossed
                # gatekeeper to the engine; give it a few seconds to arrive (or not).
                stats = await sim_stats(session, engine)
                for _ in range(50):
                    if stats["requests"].get("POST /generate", 0):
                        break
                    await asyncio.sleep(0.1)
                    stats = await sim_stats(session, engine)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    results = [t.result() for t in done if not t.cancelled() and t.exception() is None]
    failures = [t.exception() for t in done if not t.cancelled() and t.exception() is not None]
    rejected = [r for r in results if r[0] == 503]
    codes = Counter(f"{r[0]} {r[1]}" for r in results)
    forwarded = stats["requests"].get("POST /generate", 0)
    print()
    print(
        f"  answers: {dict(codes)}; client errors: {len(failures)}; still waiting "
        f"(the admitted generation): {len(pending)}"
    )
    if rejected:
        rows = []
        for label, values in (
            ("burst start (all tasks created)", [r[2] for r in rejected]),
            ("own request headers sent", [r[3] for r in rejected]),
        ):
            rows.append(
                [str(len(rejected)), label, ms(percentile(values, 50)),
                 ms(percentile(values, 99)), ms(max(values))]
            )  # fmt: skip
        print()
        print(table(["rejections", "measured from", "p50", "p99", "max"], rows))
    print(
        f"\n  kernel TcpExt ListenOverflows during the burst: {overflows} (SYNs dropped because "
        "the listen backlog was full; each costs the client a 1 s SYN retransmit)"
    )
    print(f"  engine-sim POST /generate received: {forwarded}")
    if forwarded != 1 or len(rejected) != n - 1:
        raise CheckFailed(f"forwarded {forwarded} (expected 1), rejected {len(rejected)}/{n - 1}")
    print("  check: exactly 1 forwarded, every other request answered 503  OK")
