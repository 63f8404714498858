"""The whole shared queue's places and limits at depth (issue #21; issue #18 §6's budget).

    python bench/places.py [--queued 10000] [--clients 1000] [--runs 200]

Starts a throwaway PostgreSQL (``tests/pgserver.py``), fills one schema with
``--queued`` queued jobs of ``--clients`` clients taken by two boxes (half each), and
measures on localhost, each call made as the proxy makes it (synchronous through the
store's bridge, or fired at the store's thread):

1. a submission: ``create`` (no limits: before this change) and ``create_limited``
   (the queue's advisory lock, the counts, the insert, one transaction), p50/p99;
2. the head's look (``standing``: the client's counts and jobs, no lock), p50/p99,
   counting every waiting job and, as at the default ``max_waiting`` (20), 21 of them;
3. one read of the whole queue (``picture``: every place by the fairness rule, the
   totals, the running jobs, the slots), from firing it to its answer, p50/p99;
4. the proxy's loop while reads run back to back on the store's thread: its largest
   lag (a 1 ms ticker), i.e. what the reads cost the loop.

Prints figures; asserts nothing about them. Exit 2 when PostgreSQL is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pgserver import bench_server, queued_record

from gatekeeper.jobs.postgres import PostgresJobStore
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.shared import Limits


def _ms(samples: list[float]) -> str:
    s = sorted(samples)
    p99 = s[min(len(s) - 1, int(len(s) * 0.99))]
    return f"p50 {statistics.median(s) * 1e3:6.2f} ms   p99 {p99 * 1e3:6.2f} ms   (n={len(s)})"


def _record(store: PostgresJobStore, client: str) -> JobRecord:
    return queued_record(store, client)


def _read(store: PostgresJobStore, ids: list[str]) -> Any:
    got: queue.Queue[Any] = queue.Queue()
    store.picture(ids, 1, got.put)
    return got.get(timeout=30)


async def _loop_lag(
    store: PostgresJobStore, reads: int, ids: list[str]
) -> tuple[float, list[float]]:
    """Reads fired back to back while a 1 ms ticker measures the loop's lag (``reads`` 0:
    the ticker alone for a second, the box's own noise)."""
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    took: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            t = loop.time()
            await asyncio.sleep(0.001)
            lags.append(loop.time() - t - 0.001)

    tick = asyncio.create_task(ticker())
    if not reads:
        await asyncio.sleep(1.0)
    for _ in range(reads):
        fut: asyncio.Future[Any] = loop.create_future()
        t = time.perf_counter()
        store.picture(ids, 1, lambda r, f=fut: loop.call_soon_threadsafe(f.set_result, r))
        await fut
        took.append(time.perf_counter() - t)
    done.set()
    await tick
    return max(lags), took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queued", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--asked", type=int, default=200, help="jobs a read places (shown lately)")
    args = ap.parse_args()
    with bench_server("bench-places-") as (server, tmp):
        a, b = (
            PostgresJobStore.open(tmp / n, dsn=server.dsn, schema="bench", timeout=30.0)
            for n in ("a", "b")
        )
        t = time.perf_counter()
        ids: list[str] = []
        for i in range(args.queued):
            store = (a, b)[i % 2]
            ids.append(store.create(_record(store, f"c{i % args.clients}")).id)
        print(
            f"{args.queued} queued jobs of {args.clients} clients on two boxes"
            f" (filled in {time.perf_counter() - t:.1f} s)"
        )
        # The queue holds --queued jobs: max_waiting is above it, so every submission
        # counts them all (the worst case: a limit far from the queue costs less).
        limits = Limits(per_client=10**6, max_waiting=args.queued + 4 * args.runs + 1)
        for fresh in (True, False):
            if not fresh:  # what autovacuum does soon after such a fill
                _analyze(server.dsn)
                print("after VACUUM ANALYZE (statistics, visibility: as autovacuum keeps them):")
            else:
                print("right after the fill (no statistics yet: the planner guesses):")
            _figures(a, b, args, limits, ids)
        a.close()
        b.close()


def _analyze(dsn: str) -> None:
    async def go() -> None:
        import asyncpg

        con = await asyncpg.connect(dsn)
        try:
            await con.execute("VACUUM ANALYZE bench.jobs")
            await con.execute("VACUUM ANALYZE bench.ring")
        finally:
            await con.close()

    asyncio.run(go())


def _figures(
    a: PostgresJobStore, b: PostgresJobStore, args: Any, limits: Limits, ids: list[str]
) -> None:
    plain, limited, looks, small = [], [], [], []
    for i in range(args.runs):
        rec = _record(a, f"n{i}")
        t = time.perf_counter()
        a.create(rec)
        plain.append(time.perf_counter() - t)
        rec = _record(b, f"m{i}")
        t = time.perf_counter()
        b.create_limited(rec, [], limits)
        limited.append(time.perf_counter() - t)
        t = time.perf_counter()
        a.standing(f"c{i % args.clients}", limits.max_waiting + 1)
        looks.append(time.perf_counter() - t)
        t = time.perf_counter()
        a.standing(f"c{i % args.clients}", 21)  # the default max_waiting, 20
        small.append(time.perf_counter() - t)
    print(f"submit, create (no limits)        {_ms(plain)}")
    print(f"submit, create_limited            {_ms(limited)}")
    print(f"head's look, standing             {_ms(looks)}")
    print(f"the same at max_waiting 20        {_ms(small)}")
    reads = max(10, args.runs // 10)
    asked = ids[:: max(1, len(ids) // max(1, args.asked))][: args.asked]
    quiet, _ = asyncio.run(_loop_lag(a, 0, asked))
    lag, took = asyncio.run(_loop_lag(a, reads, asked))
    read = _read(a, asked)
    print(
        f"one read of the whole queue       {_ms(took)}"
        f"   ({read[0]} waiting, {len(read[1])} jobs placed)"
    )
    print(
        f"proxy loop's largest lag: {lag * 1e3:.2f} ms during {reads} reads back to back"
        f" ({quiet * 1e3:.2f} ms in a second without)"
    )


if __name__ == "__main__":
    main()
