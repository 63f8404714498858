"""1,000 simultaneous generations against the real process: exactness and a responsive edge.

The retry storm of the seed's incident, at the socket level: 1,000 connections
each send POST /generate at once. Exactly ``max_in_flight`` reach the engine,
every other one is answered 503 busy with Retry-After, and a client polling a
pass route meanwhile keeps being served. Figures are printed, not asserted:
speed is measured in bench/, behaviour here.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest
from support import raise_fd_limit, start_engine, start_gatekeeper

BURST = 1000
BODY = json.dumps({"lyrics": "storm", "seconds": 3}).encode()
REQUEST = (
    b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    + f"Content-Length: {len(BODY)}\r\nConnection: close\r\n\r\n".encode()
    + BODY
)


async def _one(host: str, port: int, start: asyncio.Event) -> tuple[bytes, float]:
    reader, writer = await asyncio.open_connection(host, port)
    await start.wait()
    t0 = time.monotonic()
    writer.write(REQUEST)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    elapsed = time.monotonic() - t0
    if head.startswith(b"HTTP/1.1 200"):
        await asyncio.wait_for(reader.read(), 30)  # the admitted song, to its end
    writer.close()
    return head, elapsed


@pytest.mark.slow
async def test_a_burst_of_1000_generations_admits_exactly_one(tmp_path: Path) -> None:
    """1,000 at once: one reaches the engine, 999 get 503 busy; pass routes stay served."""
    raise_fd_limit(4 * BURST)  # our sockets, gatekeeper's (inherited limit), headroom
    engine, engine_url = start_engine(tmp_path, seconds=3)
    gk, url, admin = start_gatekeeper(tmp_path, "", engine_url)
    try:
        host, port = url.removeprefix("http://").split(":")
        start = asyncio.Event()
        clients = [asyncio.create_task(_one(host, int(port), start)) for _ in range(BURST)]
        await asyncio.sleep(1.0)  # every connection open and idle, waiting for its head
        polls: list[float] = []

        async def poll() -> None:
            async with aiohttp.ClientSession() as http:
                while not all(c.done() for c in clients):
                    t0 = time.monotonic()
                    async with http.get(url + "/progress") as r:
                        assert r.status == 200
                    polls.append(time.monotonic() - t0)
                    await asyncio.sleep(0.05)

        poller = asyncio.create_task(poll())
        start.set()
        results = await asyncio.gather(*clients)
        await poller
        heads = [h for h, _ in results]
        ok = [h for h in heads if h.startswith(b"HTTP/1.1 200")]
        busy = [h for h in heads if h.startswith(b"HTTP/1.1 503") and b"Reason: busy" in h]
        assert len(ok) == 1 and len(busy) == BURST - 1, {h[:40] for h in heads}
        assert all(b"Retry-After: " in h for h in busy)
        async with aiohttp.ClientSession() as http:
            async with http.get(engine_url + "/_sim/stats") as r:
                stats = await r.json()
            async with http.get(admin + "/status") as r:
                assert (await r.json())["in_flight"] == 0
        assert stats["requests"].get("POST /generate") == 1
        assert stats["peak_active_generations"] == 1
        assert polls, "the pass route was never polled during the burst"
        rejected = sorted(t for h, t in results if h.startswith(b"HTTP/1.1 503"))
        polls.sort()
        print(
            f"\nburst of {BURST}: 503 answered p50 {rejected[len(rejected) // 2] * 1000:.0f} ms,"
            f" p99 {rejected[int(len(rejected) * 0.99)] * 1000:.0f} ms;"
            f" {len(polls)} pass-route polls meanwhile, max {polls[-1] * 1000:.0f} ms"
        )
    finally:
        assert gk.stop() == 0
        engine.stop()
