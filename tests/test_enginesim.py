"""Tests for the bundled engine simulator (``gatekeeper engine-sim``)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import io
import json
import os
import signal
import sys
import time
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import psutil
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from gatekeeper import enginesim
from gatekeeper.enginesim import SimConfig, create_app, download_content, gzip_plain_body
from gatekeeper.enginesim.api import generate, is_work_handler

T = TypeVar("T")
Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[SimConfig], Awaitable[Client]]

FAST = SimConfig(seconds=0.3, memory_mb=1, burn_cpu=False, batch_size=2)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def make_client(aiohttp_client: AiohttpClient) -> MakeClient:
    async def make(config: SimConfig) -> Client:
        return await aiohttp_client(create_app(config))

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client(FAST)


async def read_sse(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[float, str, Any]]:
    """Yield (arrival time, event name, decoded data) for each event of an SSE body."""
    event, data = "message", ""
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            data = line[len("data: ") :]
        elif not line and data:
            yield time.monotonic(), event, json.loads(data)
            event, data = "message", ""


async def poll(check: Callable[[], Awaitable[T]]) -> T:
    """Return the first truthy result of ``check()``, polled every 10 ms for up to 5 s."""
    for _ in range(500):
        if result := await check():
            return result
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met within 5 s")


async def listed_generations(client: Client) -> list[dict[str, Any]]:
    generations: list[dict[str, Any]] = (await (await client.get("/progress")).json())[
        "generations"
    ]
    return generations


async def worker_processes() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def parse_wav(body: bytes) -> tuple[int, int, int, float]:
    with wave.open(io.BytesIO(body)) as wav:
        frames = wav.getnframes()
        rate = wav.getframerate()
        return wav.getnchannels(), wav.getsampwidth(), rate, frames / rate


async def test_generate_returns_playable_wav(client: Client) -> None:
    """POST /generate answers a mono 16-bit WAV of a few seconds with id and length headers."""
    resp = await client.post("/generate", json={"lyrics": "hello world", "description": "pop"})
    assert resp.status == 200
    assert resp.content_type == "audio/wav"
    body = await resp.read()
    assert int(resp.headers["Content-Length"]) == len(body)
    assert resp.headers["X-Generation-Id"]
    channels, width, rate, duration = parse_wav(body)
    assert (channels, width, rate) == (1, 2, 22050)
    assert 2.0 <= duration <= 4.0


async def test_generate_is_deterministic_per_lyrics(client: Client) -> None:
    """The same lyrics give byte-identical audio; different lyrics give different audio."""
    bodies = []
    for lyrics in ("la la la", "la la la", "do re mi"):
        resp = await client.post("/generate", json={"lyrics": lyrics, "seconds": 0})
        assert resp.status == 200
        bodies.append(await resp.read())
    assert bodies[0] == bodies[1]
    assert bodies[0] != bodies[2]
    assert bodies[0] == enginesim.synthesize_wav("la la la")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{not json",
        b"[1, 2]",
        b'{"description": "no lyrics"}',
        b'{"lyrics": 42}',
        b'{"lyrics": "x", "description": 1}',
        b'{"lyrics": "x", "seconds": -1}',
        b'{"lyrics": "x", "seconds": "soon"}',
    ],
)
async def test_generate_rejects_bad_input_with_422(client: Client, body: bytes) -> None:
    """Malformed bodies get a FastAPI-style 422 with a string detail and start no work."""
    resp = await client.post("/generate", data=body)
    assert resp.status == 422
    assert isinstance((await resp.json())["detail"], str)
    assert (await (await client.get("/progress")).json())["generations"] == []


async def test_generate_sends_nothing_before_work_is_done(client: Client) -> None:
    """Not even the status line of /generate arrives while the generation is running."""
    pending = asyncio.create_task(client.post("/generate", json={"lyrics": "x", "seconds": 0.4}))

    async def halfway() -> bool:
        gens = (await (await client.get("/progress")).json())["generations"]
        return bool(gens) and gens[0]["progress"] >= 0.5

    await poll(halfway)  # the engine's own clock: half the song is done
    assert not pending.done()
    resp = await pending
    assert resp.status == 200


async def test_concurrent_generations_slow_each_other(client: Client) -> None:
    """Two generations at once each take about twice as long as one alone."""
    item = {"lyrics": "x", "seconds": 0.4}
    start = time.monotonic()
    assert (await client.post("/generate", json=item)).status == 200
    alone = time.monotonic() - start

    async def timed() -> float:
        begin = time.monotonic()
        assert (await client.post("/generate", json=item)).status == 200
        return time.monotonic() - begin

    together = await asyncio.gather(timed(), timed())
    assert min(together) > 1.5 * alone
    stats = await (await client.get("/_sim/stats")).json()
    assert stats["peak_active_generations"] == 2


async def test_progress_reports_running_then_done(client: Client) -> None:
    """/progress shows a running generation, /result is 409 until it is done, then the wav."""
    pending = asyncio.create_task(client.post("/generate", json={"lyrics": "p", "seconds": 0.5}))
    listed = await poll(lambda: listed_generations(client))
    gen_id = listed[0]["id"]
    await asyncio.sleep(0.1)
    running = await (await client.get(f"/progress/{gen_id}")).json()
    assert running["state"] == "running"
    assert 0.0 < running["progress"] < 1.0
    assert running["expected_seconds"] == 0.5
    assert (await client.get(f"/result/{gen_id}")).status == 409

    resp = await pending
    wav = await resp.read()
    assert resp.headers["X-Generation-Id"] == gen_id
    done = await (await client.get(f"/progress/{gen_id}")).json()
    assert done["state"] == "done"
    assert done["progress"] == 1.0
    result = await client.get(f"/result/{gen_id}")
    assert result.status == 200
    assert await result.read() == wav


async def test_unknown_generation_is_404(client: Client) -> None:
    """Progress, events and result of an unknown id answer 404 with a detail."""
    for path in ("/progress/nope", "/progress/nope/events", "/result/nope"):
        resp = await client.get(path)
        assert resp.status == 404
        assert "nope" in (await resp.json())["detail"]


@pytest.mark.parametrize("path", ["/generate?stream=sse", "/generate/stream"])
async def test_sse_generate_streams_progress_then_done(client: Client, path: str) -> None:
    """The SSE variant answers at once and sends progress events one by one, then done."""
    start = time.monotonic()
    resp = await client.post(path, json={"lyrics": "sse", "seconds": 0.7})
    assert time.monotonic() - start < 0.3
    assert resp.content_type == "text/event-stream"
    events = [e async for e in read_sse(resp)]
    names = [name for _, name, _ in events]
    assert names[-1] == "done" and set(names[:-1]) == {"progress"}
    progress = [data["progress"] for _, name, data in events if name == "progress"]
    assert len(progress) >= 3
    assert progress == sorted(progress) and progress[-1] == 1.0
    first_at, done_at = events[0][0], events[-1][0]
    assert done_at - first_at > 0.4  # spread over the work, not buffered until the end
    done = events[-1][2]
    assert done["id"] == resp.headers["X-Generation-Id"]
    wav = await client.get(done["url"])
    assert wav.status == 200 and wav.content_type == "audio/wav"


async def test_progress_events_follow_a_running_generation(client: Client) -> None:
    """GET /progress/{id}/events streams an existing generation's progress until done."""
    pending = asyncio.create_task(client.post("/generate", json={"lyrics": "e", "seconds": 0.5}))
    listed = await poll(lambda: listed_generations(client))
    resp = await client.get(f"/progress/{listed[0]['id']}/events")
    events = [(name, data) async for _, name, data in read_sse(resp)]
    assert len(events) >= 3
    assert events[-1][0] == "done"
    assert events[-2][1]["progress"] == 1.0
    assert (await pending).status == 200


async def test_batch_generate_runs_all_items_at_once(client: Client) -> None:
    """A batch starts every item together and answers when all are done."""
    resp = await client.post(
        "/batch-generate",
        json={"items": [{"lyrics": "a", "seconds": 0.2}, {"lyrics": "b", "seconds": 0.2}]},
    )
    assert resp.status == 200
    body = await resp.json()
    assert [r["state"] for r in body["results"]] == ["done", "done"]
    assert body["elapsed_seconds"] > 0.3  # shared the engine, so ~2 x 0.2 s
    stats = await (await client.get("/_sim/stats")).json()
    assert stats["peak_active_generations"] == 2


async def test_batch_generate_defaults_to_batch_size_items(client: Client) -> None:
    """Without items, a batch generates --batch-size songs."""
    resp = await client.post("/batch-generate", json={})
    assert resp.status == 200
    assert len((await resp.json())["results"]) == FAST.batch_size
    bad = await client.post("/batch-generate", json={"items": [{"lyrics": 1}]})
    assert bad.status == 422


async def test_download_streams_exactly_n_deterministic_bytes(client: Client) -> None:
    """GET /download sends exactly N bytes with Content-Length, matching download_content."""
    size = 3 * 1024 * 1024 + 12345  # several chunks and past the 1 MiB pattern period
    resp = await client.get("/download", params={"bytes": str(size)})
    assert resp.status == 200
    assert int(resp.headers["Content-Length"]) == size
    digest, total, chunks = hashlib.sha256(), 0, 0
    async for chunk in resp.content.iter_any():
        digest.update(chunk)
        total += len(chunk)
        chunks += 1
    assert total == size
    assert chunks > 1
    assert digest.hexdigest() == hashlib.sha256(download_content(0, size)).hexdigest()
    assert download_content(5, 10) == download_content(0, 15)[5:]


async def test_upload_counts_bytes_and_hashes_streamed_body(client: Client) -> None:
    """POST /upload reports the length and sha256 of a chunked body."""
    parts = [os.urandom(50_000) for _ in range(7)]

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    resp = await client.post("/upload", data=body())
    assert resp.status == 200
    whole = b"".join(parts)
    assert await resp.json() == {"bytes": len(whole), "sha256": hashlib.sha256(whole).hexdigest()}


async def test_gzip_endpoint_body_decompresses(client: Client) -> None:
    """/_sim/gzip sends gzip bytes whose Content-Length is the compressed size."""
    resp = await client.get("/_sim/gzip", auto_decompress=False)
    raw = await resp.read()
    assert resp.headers["Content-Encoding"] == "gzip"
    assert int(resp.headers["Content-Length"]) == len(raw) < len(gzip_plain_body())
    assert gzip.decompress(raw) == gzip_plain_body()


async def test_stats_count_requests_and_reset_clears_them(client: Client) -> None:
    """/_sim/stats counts requests per method and path, keeps the last headers, and resets."""
    await client.get("/healthz")
    await client.get("/healthz", headers={"X-Probe": "yes"})
    await client.post("/generate", json={"lyrics": "s", "seconds": 0})
    stats = await (await client.get("/_sim/stats")).json()
    assert stats["requests"] == {"GET /healthz": 2, "POST /generate": 1}
    assert stats["completed_generations"] == 1
    assert stats["active_generations"] == 0
    assert "X-Probe" not in stats["last_headers"]  # the last request was the generate
    assert stats["last_headers"]["Content-Type"] == "application/json"

    assert (await client.post("/_sim/reset")).status == 200
    stats = await (await client.get("/_sim/stats")).json()
    assert stats["requests"] == {}
    assert stats["completed_generations"] == 0


async def test_finish_ends_the_running_generations_now_with_their_songs(client: Client) -> None:
    """POST /_sim/finish ends every running generation at once (an hour-long one too): each
    answers 200 with its WAV, and the call itself is not recorded."""
    songs = [
        asyncio.create_task(client.post("/generate", json={"lyrics": f"s{i}", "seconds": 3600}))
        for i in range(2)
    ]

    async def running() -> int:
        stats = await (await client.get("/_sim/stats")).json()
        return int(stats["active_generations"])

    while await running() < 2:
        await asyncio.sleep(0.01)
    assert (await (await client.post("/_sim/finish")).json()) == {"finished": 2}
    for resp in await asyncio.gather(*songs):
        assert resp.status == 200
        with wave.open(io.BytesIO(await resp.read())) as w:
            assert w.getnframes() > 0
    assert (await (await client.post("/_sim/finish")).json()) == {"finished": 0}
    stats = await (await client.get("/_sim/stats")).json()
    assert stats["completed_generations"] == 2 and stats["active_generations"] == 0
    assert stats["requests"] == {"POST /generate": 2}


async def test_echo_shows_repeated_headers_and_body(client: Client) -> None:
    """/_sim/echo returns method, path, query, every header pair and the body digest."""
    resp = await client.request(
        "PATCH",
        "/_sim/echo/sub?a=1&a=2",
        data=b"payload",
        headers=[("X-Twice", "1"), ("X-Twice", "2")],
    )
    echo = await resp.json()
    assert echo["method"] == "PATCH"
    assert echo["path"] == "/_sim/echo/sub"
    assert echo["query_string"] == "a=1&a=2"
    assert ["X-Twice", "1"] in echo["headers"] and ["X-Twice", "2"] in echo["headers"]
    assert echo["body_length"] == 7
    assert echo["body_sha256"] == hashlib.sha256(b"payload").hexdigest()


async def test_unknown_route_is_fastapi_style_json(client: Client) -> None:
    """Unknown paths and methods answer JSON details like the real (FastAPI) engine."""
    missing = await client.get("/nope")
    assert missing.status == 404 and await missing.json() == {"detail": "Not Found"}
    wrong = await client.delete("/healthz")
    assert wrong.status == 405 and "GET" in wrong.headers["Allow"]
    health = await client.get("/healthz")
    assert await health.json() == {"status": "ok", "busy": False, "active_generations": 0}


async def test_sleep_delays_the_headers(client: Client) -> None:
    """/_sim/sleep sends nothing until the delay has passed."""
    start = time.monotonic()
    resp = await client.get("/_sim/sleep", params={"seconds": "0.3"})
    assert time.monotonic() - start >= 0.3
    assert await resp.json() == {"slept": 0.3}


async def test_stall_sends_first_bytes_then_waits(client: Client) -> None:
    """/_sim/stall delivers N bytes at once, then nothing for S seconds, then the tail."""
    resp = await client.get("/_sim/stall", params={"after": "100", "seconds": "0.4", "tail": "5"})
    start = time.monotonic()
    first = await resp.content.readexactly(100)
    assert time.monotonic() - start < 0.3
    rest = await resp.read()
    assert time.monotonic() - start >= 0.35
    assert first + rest == download_content(0, 105)


async def test_abort_cuts_the_connection_after_n_bytes(client: Client) -> None:
    """/_sim/abort promises more than it sends: the client gets N bytes then a broken body."""
    resp = await client.get("/_sim/abort", params={"after": "1000"})
    assert int(resp.headers["Content-Length"]) > 1000
    assert await resp.content.readexactly(1000) == download_content(0, 1000)
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()


async def test_headers_endpoint_sends_hop_by_hop_headers(client: Client) -> None:
    """/_sim/headers carries hop-by-hop headers plus end-to-end ones, cookies twice."""
    resp = await client.get("/_sim/headers")
    h = resp.headers
    assert h["Connection"] == "X-Hop, keep-alive"
    for name in ("X-Hop", "Keep-Alive", "Proxy-Authenticate", "Trailer", "Upgrade"):
        assert name in h
    assert h["X-End"] == "1" and h["Cache-Control"] == "no-store"
    assert len(h.getall("Set-Cookie")) == 2


async def test_sim_sse_spaces_events(client: Client) -> None:
    """/_sim/sse sends N events, each arriving about S seconds after the previous one."""
    resp = await client.get("/_sim/sse", params={"events": "3", "interval": "0.15"})
    events = [e async for e in read_sse(resp)]
    assert [data["seq"] for _, _, data in events] == [0, 1, 2]
    assert {name for _, name, _ in events} == {"tick"}
    assert events[-1][0] - events[0][0] >= 0.25


@pytest.mark.slow  # a real CPU worker process
async def test_cpu_worker_is_started_and_reaped(make_client: MakeClient) -> None:
    """With burn_cpu, a worker process holds the memory while generating and is gone after."""
    client = await make_client(SimConfig(seconds=0.5, memory_mb=64, burn_cpu=True))
    me = psutil.Process()
    assert me.children(recursive=True) == []
    pending = asyncio.create_task(client.post("/generate", json={"lyrics": "cpu"}))
    peak_rss = 0
    while not pending.done():
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):  # reaped between the two calls
                peak_rss = max(peak_rss, child.memory_info().rss)
        await asyncio.sleep(0.02)
    assert (await pending).status == 200
    assert peak_rss > 64 * 1024 * 1024
    assert me.children(recursive=True) == []


@pytest.mark.slow  # a real CPU worker process
async def test_dead_worker_fails_the_generation(make_client: MakeClient) -> None:
    """A worker that dies (e.g. OOM-killed) fails its generation with a 500 detail."""
    client = await make_client(SimConfig(seconds=5, memory_mb=0, burn_cpu=True))
    pending = asyncio.create_task(client.post("/generate", json={"lyrics": "oom"}))
    (await poll(worker_processes))[0].kill()
    resp = await pending
    assert resp.status == 500
    assert "worker" in (await resp.json())["detail"]
    stats = await (await client.get("/_sim/stats")).json()
    assert stats["failed_generations"] == 1
    assert stats["active_generations"] == 0


@pytest.mark.slow  # a real CPU worker process
async def test_shutdown_kills_running_workers(make_client: MakeClient) -> None:
    """Closing the app fails running generations at once and leaves no worker behind."""
    client = await make_client(SimConfig(seconds=30, memory_mb=0, burn_cpu=True))
    pending = asyncio.create_task(client.post("/generate", json={"lyrics": "bye"}))
    await poll(worker_processes)
    start = time.monotonic()
    await client.close()
    assert time.monotonic() - start < 5
    assert await worker_processes() == []
    try:
        resp = await pending
        assert resp.status in (500, 503)
    except aiohttp.ClientError:
        pass  # the connection may be closed before the error answer is read


def test_work_endpoints_are_exactly_the_routes_that_start_work() -> None:
    """WORK_ENDPOINTS lists every route of the real router whose handler starts generations."""
    working = set()
    for route in create_app(FAST).router.routes():
        assert route.resource is not None  # every simulator route belongs to a resource
        if is_work_handler(route.handler):
            working.add((route.method, route.resource.canonical))
    assert working == set(enginesim.WORK_ENDPOINTS)
    assert len(enginesim.WORK_ENDPOINTS) == len(working)  # no entry listed twice
    assert {("POST", "/generate"), ("POST", "/batch-generate")} <= working


async def test_an_unmarked_handler_cannot_start_a_generation(aiohttp_client: AiohttpClient) -> None:
    """A route whose handler lacks @starts_work fails with 500 and starts no generation."""
    app = create_app(FAST)

    async def unlisted(request: web.Request) -> web.StreamResponse:
        return await generate(request)

    app.router.add_post("/unlisted", unlisted)
    client = await aiohttp_client(app)
    resp = await client.post("/unlisted", json={"lyrics": "sneaky"})
    assert resp.status == 500
    assert await listed_generations(client) == []


@pytest.mark.slow  # a real Python process
async def test_building_the_gatekeeper_parser_loads_only_the_simulator_flags() -> None:
    """`gatekeeper run`/`check` parse their flags without importing the simulator itself."""
    code = (
        "import sys; from gatekeeper.cli.main import build_parser; build_parser(); "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('gatekeeper.enginesim'))))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, cwd=ROOT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    assert out.decode().split() == ["gatekeeper.enginesim", "gatekeeper.enginesim.flags"]


@pytest.mark.slow  # a real process
async def test_main_serves_over_a_socket_and_exits_0_on_sigterm() -> None:
    """main() prints the bound address, serves a generation, and exits 0 on SIGTERM."""
    code = (
        "import argparse,sys; from gatekeeper import enginesim; p=argparse.ArgumentParser(); "
        "enginesim.add_arguments(p); sys.exit(enginesim.main(p.parse_args("
        "['--listen','127.0.0.1:0','--no-cpu','--seconds','0.2'])))"
    )
    pythonpath = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, pythonpath)))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, env=env, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        prefix = "engine-sim listening on "
        assert line.startswith(prefix + "http://127.0.0.1:")
        url = line[len(prefix) :]
        assert not url.endswith(":0")
        async with (
            aiohttp.ClientSession() as session,
            session.post(url + "/generate", json={"lyrics": "real socket"}) as resp,
        ):
            assert resp.status == 200
            assert parse_wav(await resp.read())[0] == 1
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
