"""Section d: a large streamed download, and each proxy's RSS while it streams.

engine-sim serves ``GET /download?bytes=N``; the client (aiohttp, this process) reads
and discards it straight from engine-sim, then through HAProxy, the bare aiohttp proxy
and gatekeeper. Each proxy's RSS is sampled every 10 ms from a thread: before (after a
16 MiB warm-up), the peak during, and 1 s after. gatekeeper's peak growth must stay
within 20 MiB (issue #2 §2): the body is streamed, never held.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass

import aiohttp
import psutil

from bench import targets
from bench.client import download
from bench.procs import Service, Services
from bench.report import CheckFailed, MiB, Plan, Ratio, Summary, heading, table

RSS_BOUND = 20 * MiB


@dataclass(frozen=True)
class Stream:
    seconds: float
    rss: tuple[int, int, int, int] | None  # before, peak, after, samples (proxies only)

    def mib_per_second(self, size: int) -> float:
        return size / MiB / self.seconds


class _RssSampler:
    """The peak RSS of one process, sampled every 10 ms from a thread."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.samples.append(self.proc.memory_info().rss)
            self._stop.wait(0.01)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def _through(session: aiohttp.ClientSession, proxy: Service, url: str, size: int) -> Stream:
    await download(session, url.replace(f"bytes={size}", f"bytes={16 * MiB}"))  # warm-up
    await asyncio.sleep(0.5)
    proc = psutil.Process(proxy.pid)
    before = proc.memory_info().rss
    with _RssSampler(proxy.pid) as sampler:
        got, seconds = await download(session, url)
    await asyncio.sleep(1.0)
    after = proc.memory_info().rss
    if got != size:
        raise CheckFailed(f"{url}: got {got} bytes, expected {size}")
    peak = max([before, *sampler.samples])
    return Stream(seconds, (before, peak, after, len(sampler.samples)))


async def section_d(svcs: Services, plan: Plan, summary: Summary) -> None:
    """Throughput and RSS of a large download: direct and through each proxy."""
    size = plan.download_bytes
    heading(f"d. streaming and memory (a {size / MiB:,.0f} MiB download)")
    query = f"/download?bytes={size}"
    results: dict[str, Stream] = {}
    with svcs.scope():
        _, engine = targets.engine(svcs, "--no-cpu", "--memory-mb", "1")
        print(f"  client: aiohttp GET <target>{query} (body read and discarded)")
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            got, seconds = await download(session, engine + query)
            if got != size:
                raise CheckFailed(f"engine-sim direct: got {got} bytes, expected {size}")
            results["engine-sim direct"] = Stream(seconds, None)
            for label in ("via HAProxy", "via bare aiohttp proxy", "via gatekeeper"):
                with svcs.scope():
                    if label == "via HAProxy":
                        proxy, url, _ = targets.haproxy(svcs, engine)
                        proxy.wait_for_http(url + "/healthz")
                    elif label == "via bare aiohttp proxy":
                        proxy, url = targets.bare_proxy(svcs, engine, "/healthz")
                    else:
                        proxy, url = targets.gatekeeper(svcs, engine)
                    results[label] = await _through(session, proxy, url + query, size)
    rows = []
    for label, s in results.items():
        rss = ["-"] * 5
        if s.rss:
            before, peak, after, samples = s.rss
            rss = [f"{before / MiB:.1f} MiB", f"{peak / MiB:.1f} MiB", f"{after / MiB:.1f} MiB",
                   f"{(peak - before) / MiB:+.1f} MiB", str(samples)]  # fmt: skip
        rows.append([label, f"{s.mib_per_second(size):,.0f} MiB/s", *rss])
    print()
    print(table(["target", "throughput", "RSS before", "peak during", "after",
                 "peak - before", "samples"], rows))  # fmt: skip
    gk = results["via gatekeeper"]
    for name, key, target in (
        ("engine-sim direct", "engine-sim direct", 0.5),
        ("bare aiohttp", "via bare aiohttp proxy", None),
        ("HAProxy", "via HAProxy", None),
    ):
        summary.add(Ratio(f"{size / MiB:,.0f} MiB stream", gk.mib_per_second(size), name,
                          results[key].mib_per_second(size), "MiB/s", target))  # fmt: skip
    assert gk.rss is not None
    growth = gk.rss[1] - gk.rss[0]
    summary.lines.append(
        "RSS growth during the stream: "
        + ", ".join(
            f"{label.removeprefix('via ')} {(s.rss[1] - s.rss[0]) / MiB:+.1f} MiB"
            for label, s in results.items()
            if s.rss
        )
    )
    if growth > RSS_BOUND:
        raise CheckFailed(f"gatekeeper RSS grew {growth / MiB:.1f} MiB (bound: 20 MiB)")
    print("\n  check: gatekeeper peak RSS growth <= 20 MiB (issue #2 §2)  OK")
