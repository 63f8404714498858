"""The ``/_sim/`` test kit: what the real engine lacks and the proxy's tests need.

Statistics and reset, an echo, and misbehaving answers on demand: gzip bodies, stalls,
aborted bodies, hop-by-hop headers, SSE ticks. None of these starts a generation.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from gatekeeper.enginesim.content import download_content, gzip_body
from gatekeeper.enginesim.state import ENGINE, STATS
from gatekeeper.enginesim.wire import (
    CHUNK_SIZE,
    digest_body,
    query_int,
    query_number,
    sse,
    sse_response,
    unprocessable,
)


async def stats(request: web.Request) -> web.Response:
    stats = request.app[STATS]
    engine = request.app[ENGINE]
    return web.json_response(
        {
            "requests": dict(stats.requests),
            "active_generations": engine.active_count,
            "completed_generations": engine.completed,
            "failed_generations": engine.failed,
            "peak_active_generations": engine.peak_active,
            "in_flight_requests": stats.in_flight,
            "peak_in_flight_requests": stats.peak_in_flight,
            "last_headers": stats.last_headers,
        }
    )


async def reset(request: web.Request) -> web.Response:
    stats = request.app[STATS]
    stats.requests.clear()
    stats.last_headers = {}
    stats.peak_in_flight = stats.in_flight
    request.app[ENGINE].reset_counters()
    return web.json_response({"status": "ok"})


async def finish(request: web.Request) -> web.Response:
    return web.json_response({"finished": request.app[ENGINE].finish_running()})


async def echo(request: web.Request) -> web.Response:
    total, sha256 = await digest_body(request)
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "raw_path": request.raw_path,
            "query_string": request.query_string,
            "version": f"{request.version.major}.{request.version.minor}",
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
            "body_length": total,
            "body_sha256": sha256,
            "remote": request.remote,
        }
    )


async def gzipped(request: web.Request) -> web.Response:
    return web.Response(
        body=gzip_body(),
        headers={
            "Content-Type": "text/plain; charset=utf-8",
            "Content-Encoding": "gzip",
            "Vary": "Accept-Encoding",
        },
    )


async def sleep(request: web.Request) -> web.Response:
    seconds = query_number(request, "seconds", 1.0, 3600.0)
    await request.app[ENGINE].nap(seconds)
    return web.json_response({"slept": seconds})


async def stall(request: web.Request) -> web.StreamResponse:
    after = query_int(request, "after", 1024)
    seconds = query_number(request, "seconds", 5.0, 3600.0)
    tail = query_int(request, "tail", 0)
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    try:
        if after:
            await resp.write(download_content(0, after))
        await request.app[ENGINE].nap(seconds)
        if tail:
            await resp.write(download_content(after, tail))
        await resp.write_eof()
    except ConnectionError:
        pass
    return resp


async def abort(request: web.Request) -> web.StreamResponse:
    after = query_int(request, "after", 1024)
    length = query_int(request, "length", after + CHUNK_SIZE)
    if length <= after:
        raise unprocessable("length must be larger than after")
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = length
    await resp.prepare(request)
    transport = request.transport
    try:
        if after:
            await resp.write(download_content(0, after))
        # abort() drops whatever asyncio still buffers, so wait until the N bytes have
        # reached the kernel: the client must really receive them before the cut.
        deadline = time.monotonic() + 5.0
        while transport is not None and transport.get_write_buffer_size():
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.005)
    except ConnectionError:
        pass
    if transport is not None:
        transport.abort()
    return resp  # aiohttp's write_eof() then meets a closed transport and gives up quietly


async def hop_headers(request: web.Request) -> web.Response:
    resp = web.Response(text="hop-by-hop headers test\n")
    for name, value in (
        ("Connection", "X-Hop, keep-alive"),
        ("X-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authenticate", "Basic"),
        ("Trailer", "X-T"),
        ("Upgrade", "h2c"),
        ("X-End", "1"),
        ("Set-Cookie", "a=1; Path=/"),
        ("Set-Cookie", "b=2; Path=/"),
        ("Cache-Control", "no-store"),
    ):
        resp.headers.add(name, value)
    return resp


async def sse_ticks(request: web.Request) -> web.StreamResponse:
    count = query_int(request, "events", 5, 1_000_000)
    interval = query_number(request, "interval", 0.2, 3600.0)
    resp = sse_response()
    await resp.prepare(request)
    started = time.monotonic()
    try:
        for seq in range(count):
            if seq and not await request.app[ENGINE].nap(interval):
                break
            data = {"seq": seq, "of": count, "t": round(time.monotonic() - started, 3)}
            await resp.write(sse("tick", data, event_id=str(seq)))
        await resp.write_eof()
    except ConnectionError:
        pass
    return resp
