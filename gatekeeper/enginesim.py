"""engine-sim: a stand-in for the SongGeneration engine, for demos and end-to-end tests.

One real song takes 5-15 minutes and loads the whole machine; this simulator behaves the
same way on a smaller scale so that the proxy can be exercised without a GPU. It is
deliberately independent of the rest of the ``gatekeeper`` package: it is the fake engine
the proxy is tested against, so it must not share code (or bugs) with it.

Run it with ``gatekeeper engine-sim`` or ``python -m gatekeeper.enginesim``; flags are
``--listen HOST:PORT`` (port 0 picks a free port), ``--seconds``, ``--memory-mb``,
``--no-cpu`` and ``--batch-size``. Once bound it prints
``engine-sim listening on http://HOST:PORT``; SIGINT/SIGTERM stop it with exit code 0.

Engine endpoints (errors are FastAPI-style JSON ``{"detail": ...}``, bad input is 422):

``POST /generate``
    Body ``{"lyrics": str, "description": str, "seconds": float?}``. Does the work, then
    answers a WAV (16-bit PCM mono, 22050 Hz, 3 s) derived only from the lyrics, with
    ``X-Generation-Id``. Nothing, not even the status line, is sent before the work is done.
``POST /generate?stream=sse`` and ``POST /generate/stream``
    Same work, but answers at once with ``text/event-stream``: ``event: progress`` every
    0.2 s, then ``event: done`` whose data carries ``url`` (``/result/{id}``), or
    ``event: error`` if the generation failed.
``POST /batch-generate``
    Body ``{"items": [item, ...]}`` (``--batch-size`` default items if absent). Starts all
    items at once and answers ``{"results": [...]}`` when every one has finished (500,
    with the same results, if any failed).
``GET /progress``, ``GET /progress/{id}``, ``GET /progress/{id}/events``
    ``{id, state, progress, elapsed_seconds, expected_seconds, eta_seconds, ...}`` for all
    generations, one generation, or as an SSE stream until it ends (404 if unknown).
    ``expected_seconds`` is the work at full speed; ``eta_seconds`` accounts for sharing.
``GET /result/{id}``
    The WAV of a finished generation; 404 if unknown, 409 while running, 500 if failed.
``GET /download?bytes=N``
    N bytes (default 100 MiB, any size) of deterministic pseudo-random data, streamed in
    64 KiB chunks with ``Content-Length``; see :func:`download_content`.
``POST /upload``
    Reads a body of any size chunk by chunk; answers ``{"bytes": n, "sha256": hex}``.
``GET /healthz``
    ``{"status": "ok"}``.

Test helpers under ``/_sim/``:

``GET /_sim/stats``
    ``{"requests": {"METHOD /path": n}, "active_generations", "completed_generations",
    "failed_generations", "peak_active_generations", "in_flight_requests",
    "peak_in_flight_requests", "last_headers"}``. Requests to ``/_sim/stats`` and
    ``/_sim/reset`` are not recorded, so that looking does not change what is seen.
``POST /_sim/reset``
    Clears the request counts, last headers and the completed/failed/peak counters.
``ANY /_sim/echo[/...]``
    Echoes method, path, query string, headers as ``[name, value]`` pairs in wire order,
    and the body's length and sha256.
``GET /_sim/gzip``
    A gzip-encoded text body (``Content-Encoding: gzip``); see :func:`gzip_plain_body`.
``GET /_sim/sleep?seconds=S``
    Waits S seconds before sending anything, then a small JSON body.
``GET /_sim/stall?after=N&seconds=S&tail=M``
    Chunked body: headers and N bytes, a stall of S seconds, then M more bytes and the end.
``GET /_sim/abort?after=N&length=L``
    Announces ``Content-Length: L`` (default N + 64 KiB), sends N bytes, then aborts the TCP
    connection.
``GET /_sim/headers``
    A response carrying hop-by-hop headers (``Connection: X-Hop, keep-alive``, ``X-Hop``,
    ``Keep-Alive``, ``Proxy-Authenticate``, ``Trailer``, ``Upgrade``) and end-to-end ones
    (``X-End``, two ``Set-Cookie``, ``Cache-Control: no-store``).
``GET /_sim/sse?events=N&interval=S``
    N ``event: tick`` SSE events spaced S seconds apart.

How the load is simulated: every generation needs ``seconds`` of work at full speed, and
the running generations share the engine equally (processor sharing), so two at once take
about twice as long each. Unless ``--no-cpu``, each generation runs a worker process
that spins a CPU core and holds ``--memory-mb`` of touched memory until it finishes;
with ``--no-cpu`` the memory is held in the server instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import hashlib
import io
import json
import math
import os
import random
import signal
import sys
import time
import uuid
import wave
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from aiohttp import web

__all__ = [
    "SimConfig",
    "add_arguments",
    "create_app",
    "download_content",
    "gzip_plain_body",
    "main",
    "synthesize_wav",
]

SAMPLE_RATE = 22050
NOTE_SECONDS = 0.25
NOTE_COUNT = 12  # 3 s of audio: long enough to be a "song", short enough to stay cheap
CHUNK_SIZE = 64 * 1024
DEFAULT_DOWNLOAD_BYTES = 100 * 1024 * 1024
MAX_BATCH_ITEMS = 64
DEFAULT_LYRICS = "[verse]\nla la la, a simulated song\n[chorus]\nla la la"
DEFAULT_DESCRIPTION = "simulated pop, female vocals, 120 bpm"

_PAGE = 4096
_PATTERN_SIZE = 1 << 20
_EPSILON = 1e-6  # work left below this counts as finished; timers may fire a hair early

State = Literal["running", "done", "failed"]

# The worker is a separate interpreter so the busy loop can never stall the event loop,
# and so its memory is really resident (every page written) like a loaded model. It polls
# its parent pid so that it dies with a server killed by SIGKILL instead of spinning on.
# SIGINT is ignored because Ctrl+C reaches the whole process group; the server kills it.
_WORKER_CODE = """\
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
parent = int(sys.argv[2])
ballast = bytearray(int(sys.argv[1]) << 20)
ballast[::4096] = b"\\x01" * len(range(0, len(ballast), 4096))
x = 1
while os.getppid() == parent:
    for _ in range(100_000):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
"""


@dataclass(frozen=True)
class SimConfig:
    """How the simulated engine behaves; :func:`main` builds one from the CLI flags."""

    seconds: float = 30.0  # work per generation at full speed
    memory_mb: int = 256  # memory held per running generation
    burn_cpu: bool = True  # spin a CPU core per generation in a worker process
    batch_size: int = 4  # items of a /batch-generate without "items"
    progress_interval: float = 0.2  # spacing of SSE progress events
    max_history: int = 1000  # finished generations kept for /progress and /result

    def __post_init__(self) -> None:
        if not (math.isfinite(self.seconds) and self.seconds >= 0):
            raise ValueError(f"seconds must be a finite number >= 0, got {self.seconds!r}")
        if self.memory_mb < 0:
            raise ValueError(f"memory_mb must be >= 0, got {self.memory_mb!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if not self.progress_interval > 0:
            raise ValueError(f"progress_interval must be > 0, got {self.progress_interval!r}")
        if self.max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {self.max_history!r}")


# --------------------------------------------------------------------------- content


def synthesize_wav(lyrics: str) -> bytes:
    """Return the WAV the simulator answers for ``lyrics``: same lyrics, same bytes.

    A sequence of enveloped sine notes whose pitches come from the characters (mixed with
    a hash so that lyrics sharing letters still sound different).
    """
    digest = hashlib.sha256(lyrics.encode("utf-8")).digest()
    chars = [c for c in lyrics if not c.isspace()] or ["~"]
    per_note = int(SAMPLE_RATE * NOTE_SECONDS)
    fade = SAMPLE_RATE // 100  # 10 ms ramps: notes joined without clicks
    samples = array("h")
    for i in range(NOTE_COUNT):
        char = chars[i * len(chars) // NOTE_COUNT]
        semitone = (ord(char) + digest[i]) % 24
        step = 2 * math.pi * 220.0 * 2 ** (semitone / 12) / SAMPLE_RATE
        samples.extend(
            int(12000 * min(1.0, k / fade, (per_note - k) / fade) * math.sin(step * k))
            for k in range(per_note)
        )
    if sys.byteorder == "big":
        samples.byteswap()  # WAV is little-endian
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(samples.tobytes())
    return out.getvalue()


@lru_cache(maxsize=1)
def _pattern() -> bytes:
    # Doubled so that any chunk, wherever it starts in the period, is one contiguous slice.
    block = random.Random(0x5EED).randbytes(_PATTERN_SIZE)
    return block + block


def _pattern_view(offset: int, size: int) -> memoryview:
    start = offset % _PATTERN_SIZE
    return memoryview(_pattern())[start : start + size]


def download_content(offset: int, size: int) -> bytes:
    """Return bytes ``[offset, offset + size)`` of what ``GET /download`` serves.

    The content is pseudo-random with a period of 1 MiB, so relayed bodies of any size can
    be checked without storing them.
    """
    parts = []
    while size > 0:
        n = min(size, _PATTERN_SIZE)
        parts.append(bytes(_pattern_view(offset, n)))
        offset += n
        size -= n
    return b"".join(parts)


@lru_cache(maxsize=1)
def gzip_plain_body() -> bytes:
    """Return the decompressed body of ``GET /_sim/gzip``."""
    lines = (f"{i:05d} the quick brown fox jumps over the lazy engine\n" for i in range(2000))
    return "".join(lines).encode("ascii")


@lru_cache(maxsize=1)
def _gzip_body() -> bytes:
    return gzip.compress(gzip_plain_body(), mtime=0)  # mtime=0: same bytes on every run


# --------------------------------------------------------------------------- engine


@dataclass(eq=False)
class _Generation:
    id: str
    lyrics: str
    description: str
    expected_seconds: float
    started_at: float = field(default_factory=time.monotonic)
    state: State = "running"
    work_done: float = 0.0
    finished_at: float | None = None
    error: str | None = None
    wav: bytes | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.subprocess.Process | None = None
    ballast: bytearray | None = None
    releasing: bool = False


class _EngineClosed(Exception):
    pass


class _Engine:
    """Runs generations under processor sharing: each of N active ones progresses at 1/N.

    Work is accounted lazily: :meth:`_advance` credits the time elapsed since the last
    accounting to every active generation, and is called before the active set changes
    and before any progress is read. One runner task sleeps until the next generation
    would finish, and is woken early when a generation starts or fails.
    """

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.generations: dict[str, _Generation] = {}  # insertion order is age
        self._active: dict[str, _Generation] = {}
        self._clock = time.monotonic()
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self._closed = asyncio.Event()
        self.completed = 0
        self.failed = 0
        self.peak_active = 0

    @property
    def active_count(self) -> int:
        return len(self._active)

    def reset_counters(self) -> None:
        self.completed = 0
        self.failed = 0
        self.peak_active = len(self._active)

    def _advance(self) -> None:
        now = time.monotonic()
        elapsed, self._clock = now - self._clock, now
        if self._active:
            share = elapsed / len(self._active)
            for gen in self._active.values():
                gen.work_done += share

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def start(self, lyrics: str, description: str, seconds: float) -> _Generation:
        if self.closing:
            raise _EngineClosed
        gen = _Generation(uuid.uuid4().hex, lyrics, description, seconds)
        self.generations[gen.id] = gen
        try:
            if self.config.burn_cpu:
                gen.worker = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-I",
                    "-c",
                    _WORKER_CODE,
                    str(self.config.memory_mb),
                    str(os.getpid()),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                )
            elif self.config.memory_mb:
                gen.ballast = _touched_ballast(self.config.memory_mb)
        except (OSError, MemoryError) as exc:
            self._settle(gen, "failed", f"could not start the generation: {exc}")
            return gen
        if self.closing:  # shut down while the worker was being spawned
            await self._release(gen)
            self._settle(gen, "failed", "engine shutting down")
            return gen
        self._advance()
        gen.started_at = time.monotonic()
        self._active[gen.id] = gen
        self.peak_active = max(self.peak_active, len(self._active))
        if gen.worker is not None:
            self._spawn(self._watch(gen, gen.worker))
        if self._runner is None:
            self._runner = asyncio.create_task(self._run())
        else:
            self._wake.set()
        return gen

    async def _run(self) -> None:
        try:
            while self._active:
                self._advance()
                for gen in list(self._active.values()):
                    if gen.work_done >= gen.expected_seconds - _EPSILON:
                        del self._active[gen.id]
                        self._spawn(self._finish(gen))
                if not self._active:
                    break
                left = min(g.expected_seconds - g.work_done for g in self._active.values())
                self._wake.clear()
                try:
                    async with asyncio.timeout(left * len(self._active)):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            self._runner = None

    async def _finish(self, gen: _Generation) -> None:
        # The worker is reaped before the answer goes out, so a client that got its song
        # never sees a leftover process.
        await self._release(gen)
        if gen.state == "running":
            gen.wav = synthesize_wav(gen.lyrics)
            self._settle(gen, "done")

    async def _watch(self, gen: _Generation, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if not gen.releasing:  # died on its own, e.g. OOM-killed: the song is lost
            self._fail(gen, f"worker process exited unexpectedly with code {code}")

    async def _release(self, gen: _Generation) -> None:
        gen.releasing = True
        gen.ballast = None
        proc = gen.worker
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # exited since the check
                proc.kill()
        await proc.wait()
        gen.worker = None

    def _fail(self, gen: _Generation, error: str) -> None:
        if gen.state != "running":
            return
        self._advance()
        if self._active.pop(gen.id, None) is not None:
            self._wake.set()  # the others now get a bigger share
        self._settle(gen, "failed", error)
        self._spawn(self._release(gen))

    def _settle(self, gen: _Generation, state: State, error: str | None = None) -> None:
        gen.state = state
        gen.error = error
        gen.finished_at = time.monotonic()
        if state == "done":
            self.completed += 1
        else:
            self.failed += 1
        gen.done.set()
        finished = [g for g in self.generations.values() if g.state != "running"]
        for old in finished[: max(0, len(finished) - self.config.max_history)]:
            del self.generations[old.id]

    def snapshot(self, gen: _Generation) -> dict[str, Any]:
        self._advance()
        end = gen.finished_at if gen.finished_at is not None else time.monotonic()
        left = max(0.0, gen.expected_seconds - gen.work_done)
        if gen.state == "done":
            progress = 1.0
        elif gen.expected_seconds > 0:
            progress = min(1.0, gen.work_done / gen.expected_seconds)
        else:
            progress = 0.0
        info: dict[str, Any] = {
            "id": gen.id,
            "state": gen.state,
            "progress": round(progress, 4),
            "elapsed_seconds": round(end - gen.started_at, 3),
            "expected_seconds": gen.expected_seconds,
            "eta_seconds": round(left * max(1, len(self._active)), 3)
            if gen.state == "running"
            else 0.0,
            "description": gen.description,
        }
        if gen.state == "done":
            info["result_url"] = f"/result/{gen.id}"
        if gen.error is not None:
            info["error"] = gen.error
        return info

    async def nap(self, seconds: float) -> bool:
        """Sleep like ``asyncio.sleep``, but return False early if the engine shuts down."""
        # Test streams that stall for minutes end at shutdown instead of holding it up.
        try:
            async with asyncio.timeout(seconds):
                await self._closed.wait()
        except TimeoutError:
            return True
        return False

    async def shutdown(self) -> None:
        self.closing = True
        self._closed.set()
        for gen in list(self._active.values()):
            self._fail(gen, "engine shutting down")
        pending = list(self._tasks)
        if self._runner is not None:
            self._runner.cancel()
            pending.append(self._runner)
        await asyncio.gather(*pending, return_exceptions=True)


def _touched_ballast(memory_mb: int) -> bytearray:
    buf = bytearray(memory_mb << 20)
    # A fresh bytearray is lazily mapped zero pages; writing one byte per page makes the
    # memory resident, which is what the proxy's memory guard has to see.
    buf[::_PAGE] = b"\x01" * len(range(0, len(buf), _PAGE))
    return buf


# --------------------------------------------------------------------------- helpers


@dataclass
class _Stats:
    requests: Counter[str] = field(default_factory=Counter)
    last_headers: dict[str, str] = field(default_factory=dict)
    in_flight: int = 0
    peak_in_flight: int = 0


ENGINE = web.AppKey("engine", _Engine)
STATS = web.AppKey("stats", _Stats)
_UNRECORDED = frozenset({"/_sim/stats", "/_sim/reset"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(exc_class: type[web.HTTPException], detail: Any) -> web.HTTPException:
    return exc_class(text=json.dumps({"detail": detail}), content_type="application/json")


def _unprocessable(detail: str) -> web.HTTPException:
    return _error(web.HTTPUnprocessableEntity, detail)


def _query_number(request: web.Request, name: str, default: float, maximum: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise _unprocessable(f"query parameter {name!r} must be a number") from None
    if not 0 <= value <= maximum:
        raise _unprocessable(f"query parameter {name!r} must be between 0 and {maximum}")
    return value


def _query_int(request: web.Request, name: str, default: int, maximum: int = 1 << 50) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _unprocessable(f"query parameter {name!r} must be an integer") from None
    if not 0 <= value <= maximum:
        raise _unprocessable(f"query parameter {name!r} must be between 0 and {maximum}")
    return value


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        raise _unprocessable("request body must be a JSON object")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise _unprocessable(f"request body is not valid JSON: {exc}") from None


def _parse_item(config: SimConfig, item: Any, where: str) -> tuple[str, str, float]:
    if not isinstance(item, dict):
        raise _unprocessable(f"{where} must be a JSON object")
    lyrics = item.get("lyrics")
    if not isinstance(lyrics, str):
        raise _unprocessable(f"{where}.lyrics is required and must be a string")
    description = item.get("description", "")
    if not isinstance(description, str):
        raise _unprocessable(f"{where}.description must be a string")
    seconds = item.get("seconds")
    if seconds is None:
        return lyrics, description, config.seconds
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or seconds < 0
    ):
        raise _unprocessable(f"{where}.seconds must be a number >= 0")
    return lyrics, description, float(seconds)


async def _start(engine: _Engine, lyrics: str, description: str, seconds: float) -> _Generation:
    try:
        return await engine.start(lyrics, description, seconds)
    except _EngineClosed:
        raise _error(web.HTTPServiceUnavailable, "engine shutting down") from None


def _find(request: web.Request) -> _Generation:
    gen_id = request.match_info["id"]
    gen = request.app[ENGINE].generations.get(gen_id)
    if gen is None:
        raise _error(web.HTTPNotFound, f"generation {gen_id} not found")
    return gen


def _wav_response(gen: _Generation) -> web.Response:
    if gen.state == "failed" or gen.wav is None:
        raise _error(web.HTTPInternalServerError, f"generation failed: {gen.error}")
    return web.Response(
        body=gen.wav,
        content_type="audio/wav",
        headers={
            "X-Generation-Id": gen.id,
            "Content-Disposition": f'inline; filename="{gen.id}.wav"',
        },
    )


def _sse(event: str | None, data: Any, event_id: str | None = None) -> bytes:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.append(f"data: {json.dumps(data)}")
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def _sse_response(extra: dict[str, str] | None = None) -> web.StreamResponse:
    headers = {
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",  # asks nginx-style proxies not to hold events back
    }
    return web.StreamResponse(headers=headers | (extra or {}))


async def _pump_progress(engine: _Engine, gen: _Generation, resp: web.StreamResponse) -> None:
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
            await resp.write(_sse("progress", event))
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
            await resp.write(_sse("done", done))
        else:
            await resp.write(_sse("error", {"id": gen.id, "detail": gen.error}))
        await resp.write_eof()
    except ConnectionError:
        pass  # the listener left; the generation itself carries on, as in the real engine


# --------------------------------------------------------------------------- handlers


async def _generate(request: web.Request) -> web.StreamResponse:
    if request.query.get("stream") == "sse":
        return await _generate_stream(request)
    engine = request.app[ENGINE]
    item = _parse_item(engine.config, await _read_json(request), "body")
    gen = await _start(engine, *item)
    # If the client goes away the generation still runs to the end: the real engine does
    # not notice either, which is exactly why the proxy must not let requests pile up.
    await gen.done.wait()
    return _wav_response(gen)


async def _generate_stream(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    item = _parse_item(engine.config, await _read_json(request), "body")
    gen = await _start(engine, *item)
    resp = _sse_response({"X-Generation-Id": gen.id})
    await resp.prepare(request)
    await _pump_progress(engine, gen, resp)
    return resp


async def _batch_generate(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    body = await _read_json(request)
    if not isinstance(body, dict):
        raise _unprocessable("body must be a JSON object")
    items = body.get("items")
    if items is None:
        items = [
            {"lyrics": DEFAULT_LYRICS, "description": DEFAULT_DESCRIPTION}
        ] * engine.config.batch_size
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH_ITEMS:
        raise _unprocessable(f"items must be a list of 1 to {MAX_BATCH_ITEMS} objects")
    parsed = [_parse_item(engine.config, x, f"items[{i}]") for i, x in enumerate(items)]
    started = time.monotonic()
    # All at once, on purpose: this is the request that froze the machine in production.
    gens = await asyncio.gather(*(_start(engine, *p) for p in parsed))
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


async def _progress_list(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    return web.json_response(
        {"generations": [engine.snapshot(g) for g in engine.generations.values()]}
    )


async def _progress_one(request: web.Request) -> web.Response:
    return web.json_response(request.app[ENGINE].snapshot(_find(request)))


async def _progress_events(request: web.Request) -> web.StreamResponse:
    gen = _find(request)
    resp = _sse_response({"X-Generation-Id": gen.id})
    await resp.prepare(request)
    await _pump_progress(request.app[ENGINE], gen, resp)
    return resp


async def _result(request: web.Request) -> web.Response:
    gen = _find(request)
    if gen.state == "running":
        raise _error(web.HTTPConflict, f"generation {gen.id} is still running")
    return _wav_response(gen)


async def _download(request: web.Request) -> web.StreamResponse:
    size = _query_int(request, "bytes", DEFAULT_DOWNLOAD_BYTES)
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = size
    await resp.prepare(request)
    if request.method == "HEAD":
        return resp
    offset = 0
    try:
        while offset < size and not request.app[ENGINE].closing:
            n = min(CHUNK_SIZE, size - offset)
            await resp.write(_pattern_view(offset, n))  # write() waits while the peer is slow
            offset += n
        await resp.write_eof()
    except ConnectionError:
        pass
    return resp


async def _digest_body(request: web.Request) -> tuple[int, str]:
    digest = hashlib.sha256()
    total = 0
    async for chunk in request.content.iter_chunked(CHUNK_SIZE):
        digest.update(chunk)
        total += len(chunk)
    return total, digest.hexdigest()


async def _upload(request: web.Request) -> web.Response:
    total, sha256 = await _digest_body(request)
    return web.json_response({"bytes": total, "sha256": sha256})


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _stats(request: web.Request) -> web.Response:
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


async def _reset(request: web.Request) -> web.Response:
    stats = request.app[STATS]
    stats.requests.clear()
    stats.last_headers = {}
    stats.peak_in_flight = stats.in_flight
    request.app[ENGINE].reset_counters()
    return web.json_response({"status": "ok"})


async def _echo(request: web.Request) -> web.Response:
    total, sha256 = await _digest_body(request)
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


async def _gzip(request: web.Request) -> web.Response:
    return web.Response(
        body=_gzip_body(),
        headers={
            "Content-Type": "text/plain; charset=utf-8",
            "Content-Encoding": "gzip",
            "Vary": "Accept-Encoding",
        },
    )


async def _sleep(request: web.Request) -> web.Response:
    seconds = _query_number(request, "seconds", 1.0, 3600.0)
    await request.app[ENGINE].nap(seconds)
    return web.json_response({"slept": seconds})


async def _stall(request: web.Request) -> web.StreamResponse:
    after = _query_int(request, "after", 1024)
    seconds = _query_number(request, "seconds", 5.0, 3600.0)
    tail = _query_int(request, "tail", 0)
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


async def _abort(request: web.Request) -> web.StreamResponse:
    after = _query_int(request, "after", 1024)
    length = _query_int(request, "length", after + CHUNK_SIZE)
    if length <= after:
        raise _unprocessable("length must be larger than after")
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


async def _hop_headers(request: web.Request) -> web.Response:
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


async def _sim_sse(request: web.Request) -> web.StreamResponse:
    count = _query_int(request, "events", 5, 1_000_000)
    interval = _query_number(request, "interval", 0.2, 3600.0)
    resp = _sse_response()
    await resp.prepare(request)
    started = time.monotonic()
    try:
        for seq in range(count):
            if seq and not await request.app[ENGINE].nap(interval):
                break
            data = {"seq": seq, "of": count, "t": round(time.monotonic() - started, 3)}
            await resp.write(_sse("tick", data, event_id=str(seq)))
        await resp.write_eof()
    except ConnectionError:
        pass
    return resp


@web.middleware
async def _observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    stats = request.app[STATS]
    recorded = request.path not in _UNRECORDED
    if recorded:
        stats.requests[f"{request.method} {request.path}"] += 1
        last: dict[str, str] = {}
        for name, value in request.headers.items():
            last[name] = f"{last[name]}, {value}" if name in last else value
        stats.last_headers = last
        stats.in_flight += 1
        stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        # Router 404/405s come as plain text; the real engine (FastAPI) answers JSON.
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return web.json_response({"detail": exc.reason}, status=exc.status, headers=headers)
    finally:
        if recorded:
            stats.in_flight -= 1


async def _on_shutdown(app: web.Application) -> None:
    await app[ENGINE].shutdown()


def create_app(config: SimConfig) -> web.Application:
    """Build the simulator's application (also used in-process by tests)."""
    app = web.Application(middlewares=[_observe])
    app[ENGINE] = _Engine(config)
    app[STATS] = _Stats()
    # Failing running generations at shutdown lets their handlers answer at once and
    # kills the workers, instead of the server waiting minutes for songs nobody gets.
    app.on_shutdown.append(_on_shutdown)
    app.on_cleanup.append(_on_shutdown)
    r = app.router
    r.add_post("/generate", _generate)
    r.add_post("/generate/stream", _generate_stream)
    r.add_post("/batch-generate", _batch_generate)
    r.add_get("/progress", _progress_list)
    r.add_get("/progress/{id}", _progress_one)
    r.add_get("/progress/{id}/events", _progress_events)
    r.add_get("/result/{id}", _result)
    r.add_get("/download", _download)
    r.add_post("/upload", _upload)
    r.add_put("/upload", _upload)
    r.add_get("/healthz", _healthz)
    r.add_get("/_sim/stats", _stats)
    r.add_post("/_sim/reset", _reset)
    r.add_route("*", "/_sim/echo", _echo)
    r.add_route("*", "/_sim/echo/{tail:.*}", _echo)
    r.add_get("/_sim/gzip", _gzip)
    r.add_get("/_sim/sleep", _sleep)
    r.add_get("/_sim/stall", _stall)
    r.add_get("/_sim/abort", _abort)
    r.add_get("/_sim/headers", _hop_headers)
    r.add_get("/_sim/sse", _sim_sse)
    return app


# --------------------------------------------------------------------------- CLI


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _parse_listen(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"--listen must be HOST:PORT, got {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "127.0.0.1", int(port_text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``engine-sim`` flags to ``parser``."""
    parser.add_argument(
        "--listen",
        default="127.0.0.1:8000",
        metavar="HOST:PORT",
        help="address to serve on; port 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--seconds",
        type=_non_negative_float,
        default=30.0,
        metavar="N",
        help="duration of one generation when it runs alone (default: %(default)s)",
    )
    parser.add_argument(
        "--memory-mb",
        type=_non_negative_int,
        default=256,
        metavar="N",
        help="memory held per running generation, in MiB (default: %(default)s)",
    )
    parser.add_argument(
        "--no-cpu",
        action="store_true",
        help="do not spin a CPU core per running generation",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=4,
        metavar="N",
        help="items of a /batch-generate request that names none (default: %(default)s)",
    )


async def _serve(config: SimConfig, host: str, port: int) -> int:
    # A short shutdown timeout: streams such as /_sim/stall would otherwise hold a SIGTERM
    # for a minute, and running generations are failed by on_shutdown anyway.
    runner = web.AppRunner(create_app(config), handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            print(f"engine-sim: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
            return 1
        bound = runner.addresses[0][1] if runner.addresses else port
        shown = f"[{host}]" if ":" in host else host
        print(f"engine-sim listening on http://{shown}:{bound}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


def main(args: argparse.Namespace) -> int:
    """Serve the simulator until SIGINT/SIGTERM; return the process exit code."""
    try:
        host, port = _parse_listen(args.listen)
        config = SimConfig(
            seconds=args.seconds,
            memory_mb=args.memory_mb,
            burn_cpu=not args.no_cpu,
            batch_size=args.batch_size,
        )
    except ValueError as exc:
        print(f"engine-sim: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(config, host, port))
    except KeyboardInterrupt:  # Ctrl+C before the signal handlers were installed
        return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="engine-sim", description=__doc__.split("\n")[0])
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
