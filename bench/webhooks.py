"""Webhook delivery figures (issue #20 §1): latency, throughput, backlog drain.

Runs the real ``gatekeeper run`` in front of ``gatekeeper engine-sim --no-cpu``
(0-second songs, ``max_in_flight`` 4) and an aiohttp receiver in this process
that checks every signature (``standardwebhooks`` when installed). Three phases:

1. **latency**: ``--jobs`` jobs one after another; for each ``job.completed``, the
   time from the job's end (the event's ``timestamp``, written with the ending) to
   the receiver reading the request: p50, p99.
2. **throughput**: the receiver holds every request until ``--jobs`` ``job.queued``
   deliveries wait (4 in flight, the rest in the outbox), then lets go: deliveries/s
   while the backlog drains to a fast receiver (``concurrency: 32``).
3. **outage**: the receiver answers 503 for ``--outage`` seconds while jobs keep
   arriving (``--rate`` per second), then 200: the time from the receiver's return
   to an empty backlog. The first success after failures makes the destination's
   whole backlog due at once, so the drain takes the time for the next retry of the
   youngest delivery (under a second while jobs keep arriving, at most one backoff
   step, 10 minutes apart at the cap) plus backlog / throughput: a 10-minute outage
   at the same rate is 10 / (outage/60) times the backlog of the scaled-down run,
   and drains in about that many times its backlog part.

    python bench/webhooks.py                      # 200 jobs, a 20 s outage at 5 jobs/s
    python bench/webhooks.py --jobs 1000 --outage 600 --rate 1
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gatekeeper.cli.procs import Child, free_port, gatekeeper_argv

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
ASYNC = {"Prefer": "respond-async"}


class Receiver:
    def __init__(self) -> None:
        self.arrivals: list[tuple[float, dict[str, Any]]] = []  # (wall, event)
        self.ids: set[str] = set()
        self.status = 200
        self.gate = asyncio.Event()
        self.gate.set()
        self.invalid = 0
        try:
            from standardwebhooks import Webhook

            self.verify: Any = Webhook(SECRET).verify
        except ImportError:
            self.verify = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        arrived = time.time()
        await self.gate.wait()
        if self.status != 200:
            return web.Response(status=self.status)
        if self.verify is not None:
            try:
                self.verify(body, dict(request.headers))
            except Exception:
                self.invalid += 1
        if request.headers["webhook-id"] not in self.ids:
            self.ids.add(request.headers["webhook-id"])
            self.arrivals.append((arrived, json.loads(body)))
        return web.Response(status=204)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def backlog(http: aiohttp.ClientSession, admin: str) -> int:
    async with http.get(admin + "/status") as r:
        return int((await r.json())["jobs"]["webhooks"]["backlog"])


async def until(check: Any, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        await asyncio.sleep(0.02)


async def main(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/{name}", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    rport = free_port()
    await web.TCPSite(runner, "127.0.0.1", rport).start()
    (tmp / "hook.secret").write_text(SECRET)
    hook = f"http://127.0.0.1:{rport}/hooks"
    eport, port, admin_port = free_port(), free_port(), free_port()
    (tmp / "rules.yaml").write_text(
        f"""
admission:
  max_in_flight: 4
  expected_seconds: 1
  resources: {{source: file, file: {tmp / "calm.json"}}}
  queue: {{per_client: 100000, max_waiting: 100000}}
jobs:
  webhooks:
    concurrency: 32
    destinations:
      - {{name: ends, url: {hook}/ends, events: [completed], secret_file: hook.secret}}
      - {{name: queued, url: {hook}/queued, events: [queued], secret_file: hook.secret}}
"""
    )
    (tmp / "calm.json").write_text('{"cpu_percent": 5, "memory_percent": 5}')
    procs = [
        Child(
            gatekeeper_argv(
                "engine-sim",
                "--listen",
                f"127.0.0.1:{eport}",
                "--seconds",
                "0",
                "--no-cpu",
                "--memory-mb",
                "1",
            ),
            tmp / "engine.log",
        )
    ]
    try:
        procs[0].wait_for("listening on http://")
        procs.append(
            Child(
                gatekeeper_argv(
                    "run",
                    "--config",
                    str(tmp / "rules.yaml"),
                    "--upstream",
                    f"http://127.0.0.1:{eport}",
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--admin-listen",
                    f"127.0.0.1:{admin_port}",
                    "--state-dir",
                    str(tmp / "state"),
                ),
                tmp / "gatekeeper.log",
            )
        )
        procs[1].wait_for("admin listening on http://")
        url, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
        async with aiohttp.ClientSession() as http:

            async def submit(i: int) -> None:
                async with http.post(
                    f"{url}/generate/{i}", json={"lyrics": f"l{i}"}, headers=ASYNC
                ) as r:
                    assert r.status == 202, await r.text()

            def ends() -> list[tuple[float, dict[str, Any]]]:
                return [a for a in receiver.arrivals if a[1]["type"] == "job.completed"]

            # 1. latency from a job's end to the receiver
            for i in range(args.jobs):
                await submit(i)
            await until(lambda: _true(len(ends()) >= args.jobs), 120)
            lat = [arrived - _wall(e["timestamp"]) for arrived, e in ends()]
            print(
                f"latency end->receiver  n={len(lat)}  p50 {statistics.median(lat) * 1000:.1f} ms"
                f"  p99 {percentile(lat, 99) * 1000:.1f} ms"
            )

            # 2. throughput: a held backlog released at once
            receiver.gate.clear()
            base = len(receiver.arrivals)
            for i in range(args.jobs):
                await submit(args.jobs + i)
            await until(lambda: _true_async(backlog(http, admin), lambda b: b >= args.jobs), 120)
            t0 = time.monotonic()
            receiver.gate.set()
            await until(lambda: _true_async(backlog(http, admin), lambda b: b == 0), 300)
            took = time.monotonic() - t0
            n = len(receiver.arrivals) - base
            print(f"throughput             {n} deliveries in {took:.2f} s: {n / took:.0f}/s")

            # 3. outage: 503 for --outage seconds while jobs arrive, then back
            receiver.status = 503
            t_end = time.monotonic() + args.outage
            i = 2 * args.jobs
            while time.monotonic() < t_end:
                await submit(i)
                i += 1
                await asyncio.sleep(1 / args.rate)
            pending = await backlog(http, admin)
            receiver.status = 200
            t0 = time.monotonic()
            await until(lambda: _true_async(backlog(http, admin), lambda b: b == 0), 900)
            print(
                f"outage {args.outage:.0f} s at {args.rate:g} jobs/s: backlog {pending}"
                f" drained in {time.monotonic() - t0:.2f} s after the receiver came back"
            )
            print(
                f"invalid signatures     {receiver.invalid}"
                + ("" if receiver.verify else " (standardwebhooks not installed: not checked)")
            )
    finally:
        for p in reversed(procs):
            p.stop()
        await runner.cleanup()
    return 0


async def _true(v: bool) -> bool:
    return v


async def _true_async(value: Any, ok: Any) -> bool:
    return bool(ok(await value))


def _wall(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--outage", type=float, default=20.0, help="seconds the receiver answers 503")
    ap.add_argument("--rate", type=float, default=5.0, help="jobs per second during the outage")
    sys.exit(asyncio.run(main(ap.parse_args())))
