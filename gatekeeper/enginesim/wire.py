"""The simulator's HTTP idioms: FastAPI-style errors, query and JSON parsing, SSE framing.

The real engine is a FastAPI app, so errors are ``{"detail": ...}`` JSON and bad input is
422; every handler goes through these helpers so that all endpoints answer alike.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aiohttp import web

CHUNK_SIZE = 64 * 1024


def error(exc_class: type[web.HTTPException], detail: Any) -> web.HTTPException:
    return exc_class(text=json.dumps({"detail": detail}), content_type="application/json")


def unprocessable(detail: str) -> web.HTTPException:
    return error(web.HTTPUnprocessableEntity, detail)


def query_number(request: web.Request, name: str, default: float, maximum: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise unprocessable(f"query parameter {name!r} must be a number") from None
    if not 0 <= value <= maximum:
        raise unprocessable(f"query parameter {name!r} must be between 0 and {maximum}")
    return value


def query_int(request: web.Request, name: str, default: int, maximum: int = 1 << 50) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise unprocessable(f"query parameter {name!r} must be an integer") from None
    if not 0 <= value <= maximum:
        raise unprocessable(f"query parameter {name!r} must be between 0 and {maximum}")
    return value


async def read_json(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        raise unprocessable("request body must be a JSON object")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise unprocessable(f"request body is not valid JSON: {exc}") from None


async def digest_body(request: web.Request) -> tuple[int, str]:
    digest = hashlib.sha256()
    total = 0
    async for chunk in request.content.iter_chunked(CHUNK_SIZE):
        digest.update(chunk)
        total += len(chunk)
    return total, digest.hexdigest()


def sse(event: str | None, data: Any, event_id: str | None = None) -> bytes:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.append(f"data: {json.dumps(data)}")
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def sse_response(extra: dict[str, str] | None = None) -> web.StreamResponse:
    headers = {
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",  # asks nginx-style proxies not to hold events back
    }
    return web.StreamResponse(headers=headers | (extra or {}))
