"""1,000 simultaneous generations against the real process: exactness and a responsive edge.

The retry storm of the seed's incident, at the socket level: 1,000 connections
each send POST /generate at once. On an ``admit`` route exactly ``max_in_flight``
reach the engine and every other one is answered 503 busy with Retry-After; on
the shipped ``queue`` route the first runs, ``max_waiting`` wait and are served one
after another, every other one is answered 503 queue_full with Retry-After. Either
way a client polling a pass route meanwhile keeps being served. Figures are printed, not asserted:
speed is measured in bench/, behaviour here.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest
from support import (
    ADMIT_ROUTES,
    metric,
    raise_fd_limit,
    start_engine,
    start_gatekeeper,
    wait_metrics,
)

BURST = 1000
WAITING = 3  # admission.queue.max_waiting of the queue variant
# The served songs are held (an hour) and ended by the test once every refusal is
# answered (engine-sim's /_sim/finish): none ends while the burst still arrives, however
# slow the box, and none is waited for longer than that.
HELD = 3600.0


def request(user: int, seconds: float) -> bytes:
    """POST /generate from one user; each burst connection is its own user (X-User-Id),
    so per_client does not decide the queue variant, max_waiting does."""
    body = json.dumps({"lyrics": f"storm {user}", "seconds": seconds}).encode()
    return (
        b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"X-User-Id: u{user}\r\nContent-Length: {len(body)}\r\n".encode()
        + b"Connection: close\r\n\r\n"
        + body
    )


async def _one(host: str, port: int, start: asyncio.Event, req: bytes) -> tuple[bytes, float]:
    reader, writer = await asyncio.open_connection(host, port)
    await start.wait()
    t0 = time.monotonic()
    writer.write(req)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    elapsed = time.monotonic() - t0
    if head.startswith(b"HTTP/1.1 200"):
        await asyncio.wait_for(reader.read(), 30)  # the admitted song, to its end
    writer.close()
    return head, elapsed


QUEUE_RULES = f"""
admission:
  queue: {{max_waiting: {WAITING}, client_key: "header:X-User-Id"}}
"""


@pytest.mark.slow
@pytest.mark.parametrize("action", ["admit", "queue"])
async def test_a_burst_of_1000_generations_admits_exactly_one(tmp_path: Path, action: str) -> None:
    """1,000 at once: one reaches the engine at a time. admit: 999 get 503 busy. queue:
    max_waiting are served in turn, the rest get 503 queue_full. Pass routes stay served."""
    raise_fd_limit(4 * BURST)  # our sockets, gatekeeper's (inherited limit), headroom
    admit = action == "admit"
    served, reason = (1, b"busy") if admit else (1 + WAITING, b"queue_full")
    seconds = HELD
    engine, engine_url = start_engine(tmp_path, seconds=seconds)
    gk, url, admin = start_gatekeeper(tmp_path, ADMIT_ROUTES if admit else QUEUE_RULES, engine_url)
    try:
        host, port = url.removeprefix("http://").split(":")
        start = asyncio.Event()
        clients = [
            asyncio.create_task(_one(host, int(port), start, request(i, seconds)))
            for i in range(BURST)
        ]
        # Every connection open and idle, waiting for its head: gatekeeper holds them all.
        await wait_metrics(
            admin, lambda t: metric(t, "gatekeeper_client_connections") >= BURST, timeout=30
        )
        polls: list[float] = []

        async def poll() -> None:
            async with aiohttp.ClientSession() as http:
                while not all(c.done() for c in clients):
                    t0 = time.monotonic()
                    async with http.get(url + "/progress") as r:
                        assert r.status == 200
                    polls.append(time.monotonic() - t0)
                    await asyncio.sleep(0.05)

        async def finisher() -> None:
            """Once every refusal is answered, end the held songs as each one runs."""
            while sum(c.done() for c in clients) < BURST - served:
                await asyncio.sleep(0.05)
            async with aiohttp.ClientSession() as http:
                while not all(c.done() for c in clients):
                    async with http.post(engine_url + "/_sim/finish") as r:
                        assert r.status == 200
                    await asyncio.sleep(0.05)

        poller = asyncio.create_task(poll())
        ender = asyncio.create_task(finisher())
        start.set()
        results = await asyncio.gather(*clients)
        await poller
        await ender
        heads = [h for h, _ in results]
        ok = [h for h in heads if h.startswith(b"HTTP/1.1 200")]
        busy = [h for h in heads if h.startswith(b"HTTP/1.1 503") and b"Reason: " + reason in h]
        assert len(ok) == served and len(busy) == BURST - served, {h[:40] for h in heads}
        assert all(b"Retry-After: " in h for h in busy)
        async with aiohttp.ClientSession() as http:
            async with http.get(engine_url + "/_sim/stats") as r:
                stats = await r.json()
            async with http.get(admin + "/status") as r:
                assert (await r.json())["in_flight"] == 0
        assert stats["requests"].get("POST /generate") == served
        assert stats["peak_active_generations"] == 1
        assert polls, "the pass route was never polled during the burst"
        rejected = sorted(t for h, t in results if h.startswith(b"HTTP/1.1 503"))
        polls.sort()
        print(
            f"\nburst of {BURST} ({action}): 503 answered"
            f" p50 {rejected[len(rejected) // 2] * 1000:.0f} ms,"
            f" p99 {rejected[int(len(rejected) * 0.99)] * 1000:.0f} ms;"
            f" {len(polls)} pass-route polls meanwhile, max {polls[-1] * 1000:.0f} ms"
        )
    finally:
        assert gk.stop() == 0
        engine.stop()
