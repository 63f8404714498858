"""The engine's own endpoints: generate (plain, SSE, batch), progress, result, transfer.

These are the routes the real engine has (``testkit`` holds the ``/_sim/`` extras). A
handler that starts a generation is decorated with :func:`starts_work`; ``app`` lists
those routes in ``WORK_ENDPOINTS`` and a test holds the two together.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Any, TypeVar

from aiohttp import web

from gatekeeper.enginesim.config import SimConfig
from gatekeeper.enginesim.content import pattern_view
from gatekeeper.enginesim.engine import Engine, EngineClosed, Generation
from gatekeeper.enginesim.state import ENGINE, Handler
from gatekeeper.enginesim.wire import (
    CHUNK_SIZE,
    digest_body,
    error,
    query_int,
    read_json,
    sse,
    sse_response,
    unprocessable,
)

DEFAULT_DOWNLOAD_BYTES = 100 * 1024 * 1024
MAX_BATCH_ITEMS = 64
DEFAULT_LYRICS = "[verse]\nla la la, a simulated song\n[chorus]\nla la la"
DEFAULT_DESCRIPTION = "simulated pop, female vocals, 120 bpm"

_WORK_HANDLERS: set[Handler] = set()
H = TypeVar("H", bound=Handler)


def starts_work(handler: H) -> H:
    """Mark ``handler`` as one that starts generations; its routes belong in WORK_ENDPOINTS."""
    _WORK_HANDLERS.add(handler)
    return handler


def is_work_handler(handler: object) -> bool:
    """Whether ``handler`` was marked with :func:`starts_work`."""
    return handler in _WORK_HANDLERS


def _parse_item(config: SimConfig, item: Any, where: str) -> tuple[str, str, float]:
    if not isinstance(item, dict):
        raise unprocessable(f"{where} must be a JSON object")
    lyrics = item.get("lyrics")
    if not isinstance(lyrics, str):
        raise unprocessable(f"{where}.lyrics is required and must be a string")
    description = item.get("description", "")
    if not isinstance(description, str):
        raise unprocessable(f"{where}.description must be a string")
    seconds = item.get("seconds")
    if seconds is None:
        return lyrics, description, config.seconds
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or seconds < 0
    ):
        raise unprocessable(f"{where}.seconds must be a number >= 0")
    return lyrics, description, float(seconds)


async def _start(request: web.Request, lyrics: str, description: str, seconds: float) -> Generation:
    # The one way a handler starts a generation, so an unmarked handler fails here at its
    # first request instead of going missing from WORK_ENDPOINTS (and the proxy's rules).
    if not is_work_handler(request.match_info.handler):
        raise RuntimeError(f"{request.method} {request.path}: a generation needs @starts_work")
    try:
        return await request.app[ENGINE].start(lyrics, description, seconds)
    except EngineClosed:
        raise error(web.HTTPServiceUnavailable, "engine shutting down") from None


def _find(request: web.Request) -> Generation:
    gen_id = request.match_info["id"]
    gen = request.app[ENGINE].generations.get(gen_id)
    if gen is None:
        raise error(web.HTTPNotFound, f"generation {gen_id} not found")
    return gen


def _wav_response(gen: Generation) -> web.Response:
    if gen.state == "failed" or gen.wav is None:
        raise error(web.HTTPInternalServerError, f"generation failed: {gen.error}")
    return web.Response(
        body=gen.wav,
        content_type="audio/wav",
        headers={
            "X-Generation-Id": gen.id,
            "Content-Disposition": f'inline; filename="{gen.id}.wav"',
        },
    )


async def _pump_progress(engine: Engine, gen: Generation, resp: web.StreamResponse) -> None:
    """Write progress events until ``gen`` ends, then ``done`` or ``error``."""
    interval = engine.config.progress_interval
    try:
        while True:
            info = engine.snapshot(gen)
            event = {
                "id": gen.id,
                "state": info["state"],
                "progress": info["progress"],
                "elapsed": info["elapsed_seconds"],
                "eta": info["eta_seconds"],
                "active_generations": engine.active_count,
            }
            await resp.write(sse("progress", event))
            if gen.done.is_set():
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await gen.done.wait()
        if gen.state == "done" and gen.wav is not None:
            done = {
                "id": gen.id,
                "url": f"/result/{gen.id}",
                "elapsed": info["elapsed_seconds"],
                "bytes": len(gen.wav),
            }
            await resp.write(sse("done", done))
        else:
            await resp.write(sse("error", {"id": gen.id, "detail": gen.error}))
        await resp.write_eof()
    except ConnectionError:
        pass  # the listener left; the generation itself carries on, as in the real engine


@starts_work
async def generate(request: web.Request) -> web.StreamResponse:
    if request.query.get("stream") == "sse":
        return await generate_stream(request)
    engine = request.app[ENGINE]
    item = _parse_item(engine.config, await read_json(request), "body")
    gen = await _start(request, *item)
    # If the client goes away the generation still runs to the end: the real engine does
    # not notice either, which is exactly why the proxy must not let requests pile up.
    await gen.done.wait()
    return _wav_response(gen)


@starts_work
async def generate_stream(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    item = _parse_item(engine.config, await read_json(request), "body")
    gen = await _start(request, *item)
    resp = sse_response({"X-Generation-Id": gen.id})
    await resp.prepare(request)
    await _pump_progress(engine, gen, resp)
    return resp


@starts_work
async def batch_generate(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    body = await read_json(request)
    if not isinstance(body, dict):
        raise unprocessable("body must be a JSON object")
    items = body.get("items")
    if items is None:
        items = [
            {"lyrics": DEFAULT_LYRICS, "description": DEFAULT_DESCRIPTION}
        ] * engine.config.batch_size
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH_ITEMS:
        raise unprocessable(f"items must be a list of 1 to {MAX_BATCH_ITEMS} objects")
    parsed = [_parse_item(engine.config, x, f"items[{i}]") for i, x in enumerate(items)]
    started = time.monotonic()
    # All at once, on purpose: this is the request that froze the machine in production.
    gens = await asyncio.gather(*(_start(request, *p) for p in parsed))
    await asyncio.gather(*(g.done.wait() for g in gens))
    results = []
    for gen in gens:
        info = engine.snapshot(gen)
        if gen.wav is not None:
            info["bytes"] = len(gen.wav)
        results.append(info)
    body = {"results": results, "elapsed_seconds": round(time.monotonic() - started, 3)}
    failed = sum(1 for g in gens if g.state == "failed")
    if failed:  # like /generate: a lost song is a server error, with the details kept
        body["detail"] = f"{failed} of {len(gens)} generations failed"
        return web.json_response(body, status=500)
    return web.json_response(body)


async def progress_list(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    return web.json_response(
        {"generations": [engine.snapshot(g) for g in engine.generations.values()]}
    )


async def progress_one(request: web.Request) -> web.Response:
    return web.json_response(request.app[ENGINE].snapshot(_find(request)))


async def progress_events(request: web.Request) -> web.StreamResponse:
    gen = _find(request)
    resp = sse_response({"X-Generation-Id": gen.id})
    await resp.prepare(request)
    await _pump_progress(request.app[ENGINE], gen, resp)
    return resp


async def result(request: web.Request) -> web.Response:
    gen = _find(request)
    if gen.state == "running":
        raise error(web.HTTPConflict, f"generation {gen.id} is still running")
    return _wav_response(gen)


async def download(request: web.Request) -> web.StreamResponse:
    size = query_int(request, "bytes", DEFAULT_DOWNLOAD_BYTES)
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = size
    await resp.prepare(request)
    if request.method == "HEAD":
        return resp
    offset = 0
    try:
        while offset < size and not request.app[ENGINE].closing:
            n = min(CHUNK_SIZE, size - offset)
            await resp.write(pattern_view(offset, n))  # write() waits while the peer is slow
            offset += n
        await resp.write_eof()
    except ConnectionError:
        pass
    return resp


async def upload(request: web.Request) -> web.Response:
    total, sha256 = await digest_body(request)
    return web.json_response({"bytes": total, "sha256": sha256})


async def healthz(request: web.Request) -> web.Response:
    """Up, and whether a generation is running (a busy signal, as some engines offer)."""
    active = request.app[ENGINE].active_count
    return web.json_response({"status": "ok", "busy": active > 0, "active_generations": active})
