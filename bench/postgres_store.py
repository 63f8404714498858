"""The PostgreSQL job store's per-call cost, and what an unreachable database costs.

    python bench/postgres_store.py [--jobs 1000]

Starts a throwaway PostgreSQL (Debian's ``postgresql``; ``tests/pgserver.py``) on
127.0.0.1, and measures on localhost, per call, median and p99 over ``--jobs``
jobs, each store synchronous as the proxy calls it:

1. the SQLite store (``jobs.sqlite``): the embedded baseline;
2. the PostgreSQL store (``jobs.postgres``): asyncpg on its own loop and thread,
   each call waited for with a bound (``bridge``);
3. the floor: the same statement awaited directly with asyncpg on the caller's own
   loop (what the bridge's two thread hand-offs add is the difference);
4. ``claim_next`` (one statement, SKIP LOCKED) with 1,000 jobs of 10 clients queued;
5. issue #20's calls with ``--jobs`` of each already stored: ``outbox_take`` of one
   due delivery among them and its ``outbox_delivered``, a page of 20 of a client's
   list (``client_handles``), ``create_batch`` of 3 items;
6. the database frozen (``SIGSTOP`` of the server: connections hang, as behind a
   dead network path): the first call blocks the caller for the call timeout, then
   the breaker is open and every call is refused in microseconds; after ``SIGCONT``
   the background probe closes the breaker by itself.

Prints figures; asserts nothing about them. Exit 2 when PostgreSQL is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import contextlib

from pgserver import PgServer, find_pg_bin

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.batch.record import BatchRecord
from gatekeeper.jobs.guard import StoreUnavailable
from gatekeeper.jobs.handles import Handle
from gatekeeper.jobs.outbox import Delivery
from gatekeeper.jobs.postgres import PostgresJobStore
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.sqlite import SqliteJobStore
from gatekeeper.jobs.store import JobStore


def _us(samples: list[float]) -> str:
    s = sorted(samples)
    p50 = statistics.median(s) * 1e6
    p99 = s[min(len(s) - 1, int(len(s) * 0.99))] * 1e6
    return f"p50 {p50:7.0f} µs   p99 {p99:7.0f} µs"


def _timed(fn: Callable[[], Any], out: list[float]) -> Any:
    t = time.perf_counter()
    r = fn()
    out.append(time.perf_counter() - t)
    return r


def _record(client: str = "c") -> JobRecord:
    return JobRecord(
        id=secrets.token_urlsafe(18),
        route="generate",
        client=client,
        held=False,
        method="POST",
        target="/generate",
        headers=(("Content-Type", "application/json"),),
        coalesce_key=None,
        created=time.time(),
        body_size=2,
    )


def lifecycle(store: JobStore, n: int) -> dict[str, list[float]]:
    """create, get, mark_running, set_progress, finish of ``n`` jobs, each call timed."""
    t: dict[str, list[float]] = {k: [] for k in ("create", "get", "mark_running", "set_progress")}
    t["finish"] = []
    for _ in range(n):
        rec = _record()
        w = store.body_writer(rec.id)
        w.write(b"{}")
        w.commit()
        _timed(lambda r=rec: store.create(r), t["create"])
        _timed(lambda r=rec: store.get(r.id), t["get"])
        _timed(lambda r=rec: store.mark_running(r.id, time.time()), t["mark_running"])
        _timed(lambda r=rec: store.set_progress(r.id, 0.5, 10), t["set_progress"])
        _timed(lambda r=rec: store.finish(r.id, JobState.DONE, None, time.time()), t["finish"])
    return t


def issue20(store: JobStore, n: int) -> dict[str, list[float]]:
    """The outbox, a client's list and batches, each call timed with ``n`` rows stored."""
    t: dict[str, list[float]] = {"outbox_take": [], "delivered": [], "list 20": [], "batch 3": []}
    rows = [store.create(_record("lister")) for _ in range(n)]
    for r in rows:
        store.add_handle(Handle(r.id, r.id, "lister", False, time.time()))
    now = time.time()
    store.outbox_add(
        [
            Delivery(f"msg_{i}", r.id, "hooks", "http://r/", "job.x", b"{}", now, now)
            for i, r in enumerate(rows)
        ]
    )
    for _ in range(n):
        got = _timed(lambda: store.outbox_take(now, 1, now + 60.0), t["outbox_take"])
        _timed(lambda d=got[0]: store.outbox_delivered(d.id), t["delivered"])
        _timed(lambda: store.client_handles("lister", limit=20), t["list 20"])
    for _ in range(max(1, n // 10)):
        batch = BatchRecord(secrets.token_urlsafe(12), "b", "batch-generate", now, 3)
        items = [replace(_record("b"), batch=batch.id) for _ in range(3)]
        _timed(lambda b=batch, i=items: store.create_batch(b, i), t["batch 3"])
    return t


def claims(store: JobStore, n: int) -> tuple[list[float], float]:
    for i in range(n):
        rec = _record(client=f"client-{i % 10}")
        w = store.body_writer(rec.id)
        w.write(b"{}")
        w.commit()
        store.create(rec)
    out: list[float] = []
    t0 = time.perf_counter()
    while _timed(lambda: store.claim_next(time.time()), out) is not None:
        pass
    return out, n / (time.perf_counter() - t0)


async def floor(dsn: str, n: int) -> list[float]:
    import asyncpg

    con = await asyncpg.connect(dsn)
    out = []
    try:
        for _ in range(n):
            t = time.perf_counter()
            await con.fetchrow("SELECT 1 WHERE $1::text IS NOT NULL", "x")
            out.append(time.perf_counter() - t)
    finally:
        await con.close()
    return out


async def _noop(con: Any) -> None:
    return None


def frozen(server: PgServer, store: PostgresJobStore) -> None:
    pid = int((server.data / "postmaster.pid").read_text().split()[0])
    kids = [int(p) for p in os.popen(f"pgrep -P {pid}").read().split()]
    procs = [pid, *kids]
    for p in procs:
        os.kill(p, signal.SIGSTOP)
    try:
        first = time.perf_counter()
        try:
            store.get("x")
        except StoreUnavailable as exc:
            print(
                f"  first call, database frozen: refused after {time.perf_counter() - first:.3f} s"
                f" (timeout {store.bridge.timeout:g} s): {exc.reason},"
                f" Retry-After {exc.retry_after}"
            )
        later: list[float] = []
        for _ in range(1000):
            t = time.perf_counter()
            with contextlib.suppress(StoreUnavailable):
                store.get("x")
            later.append(time.perf_counter() - t)
        print(f"  next 1,000 calls, breaker open:  {_us(later)}")
    finally:
        for p in procs:
            os.kill(p, signal.SIGCONT)
    t = time.perf_counter()
    while True:
        try:
            store.get("x")
            break
        except StoreUnavailable:
            time.sleep(0.01)
    print(
        f"  database back (SIGCONT): calls answered again after {time.perf_counter() - t:.2f} s"
        f" (probe every {store.bridge.breaker.probe_every:g} s)"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=1000)
    args = ap.parse_args()
    bindir = find_pg_bin()
    if bindir is None:
        print("PostgreSQL not installed (apt-get install postgresql)", file=sys.stderr)
        return 2
    server = PgServer.start(bindir)
    tmp = Path(tempfile.mkdtemp(prefix="gatekeeper-bench-pg-"))
    try:
        print(f"PostgreSQL {bindir.parent.name} on 127.0.0.1:{server.port}, {args.jobs} jobs")
        sq = SqliteJobStore.open(tmp / "sqlite")
        pg = PostgresJobStore.open(tmp / "pg", dsn=server.dsn, schema="bench", timeout=1.0)
        try:
            for name, store in (("sqlite", sq), ("postgres", pg)):
                print(f"{name} store, per call:")
                for op, samples in lifecycle(store, args.jobs).items():
                    print(f"  {op:13s} {_us(samples)}")
            print("asyncpg awaited on the caller's own loop (the round-trip floor):")
            print(f"  {'SELECT':13s} {_us(asyncio.run(floor(server.dsn, args.jobs)))}")
            print("the bridge alone (a coroutine that sends nothing; pool acquire included):")
            hop: list[float] = []
            for _ in range(args.jobs):
                _timed(lambda: pg.bridge.call("noop", _noop), hop)
            print(f"  {'hand-offs':13s} {_us(hop)}")
            print("postgres get (same statement shape) through the bridge:")
            got: list[float] = []
            for _ in range(args.jobs):
                _timed(lambda: pg.get("missing"), got)
            print(f"  {'get':13s} {_us(got)}")
            for name, store in (("sqlite", sq), ("postgres", pg)):
                samples, rate = claims(store, args.jobs)
                print(
                    f"{name} claim_next, {args.jobs} queued of 10 clients: {_us(samples)}"
                    f"   {rate:,.0f} claims/s from one caller"
                )
            for name, store in (("sqlite", sq), ("postgres", pg)):
                print(f"{name} store, issue #20 calls ({args.jobs} stored):")
                for op, samples in issue20(store, args.jobs).items():
                    print(f"  {op:13s} {_us(samples)}")
            print("postgres, database frozen (SIGSTOP), then back:")
            frozen(server, pg)
        finally:
            sq.close()
            pg.close()
    finally:
        server.stop()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
