"""The bench's own HTTP client calls (aiohttp, in this process)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp

from bench.report import CheckFailed

GENERATE_BODY = '{"lyrics":"x","description":"y"}'
JSON_HEADERS = {"Content-Type": "application/json"}


async def post_generate(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any] | None = None
) -> tuple[int, bytes]:
    data = json.dumps(body) if body is not None else GENERATE_BODY
    async with session.post(url, data=data, headers=JSON_HEADERS) as resp:
        return resp.status, await resp.read()


async def sim_stats(session: aiohttp.ClientSession, engine: str) -> dict[str, Any]:
    async with session.get(f"{engine}/_sim/stats") as resp:
        resp.raise_for_status()
        data: dict[str, Any] = await resp.json()
        return data


async def wait_active(
    session: aiohttp.ClientSession, engine: str, n: int, within: float = 10.0
) -> None:
    """Until the engine reports ``n`` running generations (engine-sim and cpu_engine)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if (await sim_stats(session, engine)).get("active_generations") == n:
            return
        await asyncio.sleep(0.02)
    raise CheckFailed(f"{engine} never had {n} active generation(s)")


async def download(session: aiohttp.ClientSession, url: str) -> tuple[int, float]:
    """GET ``url``, discarding the body; (bytes received, seconds)."""
    start = time.perf_counter()
    got = 0
    async with session.get(url) as resp:
        resp.raise_for_status()
        async for chunk in resp.content.iter_any():
            got += len(chunk)
    return got, time.perf_counter() - start
