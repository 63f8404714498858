"""Section a: passthrough throughput and latency, one target at a time.

nginx serves a 512-byte file; it is measured directly, through HAProxy (one thread),
through ``bench/bare_proxy.py`` and through gatekeeper (``--log-level WARNING``, then the
default INFO access log), each with ``wrk -t1 -c1`` and ``wrk -t2 -c32``.
"""

from __future__ import annotations

from bench import targets
from bench.load import Run, measure, median_run, parse_wrk, run_tool, spread
from bench.procs import Service, Services
from bench.report import CheckFailed, Plan, Ratio, Summary, heading, ms, table

CONNS = ((1, 1), (2, 32))  # (wrk threads, connections)
TARGETS = (
    ("direct", "nginx direct"),
    ("haproxy", "via HAProxy (1 thread)"),
    ("bare", "via bare aiohttp proxy"),
    ("WARNING", "via gatekeeper, log WARNING"),
    ("INFO", "via gatekeeper, log INFO"),
)


def _start(svcs: Services, target: str, origin: str) -> tuple[Service | None, str]:
    """Start one target in front of ``origin``; (its process, the URL to load)."""
    path = targets.SMALL_PATH
    if target == "direct":
        return None, origin + path
    if target == "haproxy":
        svc, proxy, _ = targets.haproxy(svcs, origin)
        svc.wait_for_http(proxy + path)
        return svc, proxy + path
    if target == "bare":
        svc, proxy = targets.bare_proxy(svcs, origin, path)
        return svc, proxy + path
    svc, proxy = targets.gatekeeper(svcs, origin, log_level=target)
    return svc, proxy + path


async def section_a(svcs: Services, plan: Plan, summary: Summary) -> None:
    """Passthrough: nginx directly, then through each proxy, one at a time."""
    heading("a. passthrough throughput and latency (GET of a small static file)")
    d = f"{plan.load_seconds:g}s"
    results: dict[tuple[str, int], Run] = {}
    rows: list[list[str]] = []
    with svcs.scope():
        _, origin = targets.nginx(svcs)
        print(
            f"\n  static file: {targets.SMALL_FILE_BYTES} bytes. Per row: an unreported "
            f"{plan.warmup_seconds:g}s warm-up, then {plan.repeat} run(s) of {d}; req/s, p50 "
            "and p99 are\n  those of the median run, range spans all runs, other CPU is the "
            "worst run's.\n"
        )
        # One proxy at a time, so an idle one does not share the 2 cores.
        for target, label in TARGETS:
            with svcs.scope():
                proxy, url = _start(svcs, target, origin)
                for threads, conns in CONNS:
                    flags = ["-t", str(threads), "-c", str(conns)]
                    if plan.warmup_seconds:
                        warmup = ["wrk", *flags, "-d", f"{plan.warmup_seconds:g}s", url]
                        await run_tool(warmup, show=False)
                    argv = ["wrk", *flags, "-d", d, "--latency", url]
                    runs = await measure(argv, parse_wrk, svcs, proxy, plan.repeat)
                    m = results[target, conns] = median_run(runs)
                    errors = sum(r.load.errors for r in runs)
                    rows.append(
                        [label, str(conns), f"{m.load.requests_per_second:,.0f}", spread(runs),
                         ms(m.load.p50), ms(m.load.p99), str(errors),
                         f"{m.proxy_cpu:.0f} %" if proxy else "-",
                         f"{max(r.other_cores for r in runs):.2f}"]
                    )  # fmt: skip
                    if errors:
                        raise CheckFailed(f"{label} -c{conns}: {errors} errors")
    print()
    headers = ["target", "conns", "req/s", "range", "p50", "p99", "errors", "proxy CPU"]
    print(table([*headers, "other CPU (cores)"], rows))
    _summarise(results, summary)


def _summarise(results: dict[tuple[str, int], Run], summary: Summary) -> None:
    def rate(target: str, conns: int) -> float:
        return results[target, conns].load.requests_per_second

    for level in ("WARNING", "INFO"):
        for _, conns in CONNS:
            what = f"passthrough req/s, {conns} conn, log {level}"
            gk = rate(level, conns)
            summary.add(Ratio(what, gk, "bare aiohttp", rate("bare", conns), "req/s", 0.9))
            summary.add(Ratio(what, gk, "HAProxy", rate("haproxy", conns), "req/s", 0.25))
    direct = results["direct", 1].load.p50
    added = {t: (results[t, 1].load.p50 - direct) * 1e3 for t in ("haproxy", "bare", "WARNING")}
    summary.lines.append(
        "added p50 latency at 1 conn over nginx direct: "
        f"gatekeeper {added['WARNING']:+.3f} ms, bare aiohttp {added['bare']:+.3f} ms, "
        f"HAProxy {added['haproxy']:+.3f} ms"
    )
