"""The proxy in-process (aiohttp test servers) in front of the in-process engine simulator.

Real sockets on 127.0.0.1 both sides; the gatekeeper app is built exactly as
``gatekeeper run`` builds it, minus the probe loop.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from support import ADMIT_ROUTES, ProductionLikeServer, eventually, free_port, poll
from support import rules as rules_text

from gatekeeper.app.state import AppState
from gatekeeper.app.wiring import build_proxy_app, create_state
from gatekeeper.config import Config, load_config
from gatekeeper.enginesim import SimConfig, create_app, gzip_plain_body
from gatekeeper.enginesim.state import ENGINE

ServerFactory = Callable[..., Awaitable[TestServer]]
ClientFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def engine(aiohttp_server: ServerFactory) -> TestServer:
    return await aiohttp_server(
        create_app(SimConfig(seconds=0.6, burn_cpu=False, memory_mb=0, progress_interval=0.1))
    )


def rules(upstream_url: str, **extra: Any) -> Config:
    """A validated Config for the test: short defaults plus ``extra`` merged in as YAML keys.

    This file tests the proxy path itself, so /generate is an ``admit`` route (no free
    slot: 503 at once); tests of the waiting room pass ``routes=QUEUE_ROUTES``."""
    base: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:1",
        "upstream": {"url": upstream_url},
        "admission": {"retry_after_default": 7, "expected_seconds": 60},
        "routes": yaml.safe_load(ADMIT_ROUTES)["routes"],
    }
    return load_config(rules_text(base, extra))


QUEUE_ROUTES = [{"name": "generate", "match": {"path": "/generate/**"}, "action": "queue"}]


class Gk:
    def __init__(self, client: TestClient, state: AppState):
        self.client = client
        self.state = state

    @property
    def port(self) -> int:
        assert self.client.server.port is not None
        return self.client.server.port


@pytest.fixture
def gatekeeper(aiohttp_client: ClientFactory) -> Callable[..., Awaitable[Gk]]:
    async def start(
        cfg: Config, *, monitor: bool = False, handler_cancellation: bool = False
    ) -> Gk:
        state = await create_state(cfg)
        app = build_proxy_app(state, monitor=monitor, probe=False)
        server = ProductionLikeServer(app, handler_cancellation=handler_cancellation)
        client = await aiohttp_client(server, auto_decompress=False)
        return Gk(client, state)

    return start


def server_connections(gk: Gk) -> list[Any]:
    """The client connections gatekeeper's aiohttp server still holds open (its handlers)."""
    runner = gk.client.server.runner
    assert runner is not None and runner.server is not None
    return runner.server.connections


def client_gone(gk: Gk) -> bool:
    """gatekeeper's server has seen every client connection it holds close."""
    return all(h.transport is None for h in server_connections(gk))


def handling(gk: Gk) -> int:
    """Proxied requests whose handler (or finish job) is running now."""
    usage = gk.state.usage
    return usage.open_through(usage.epoch)


def url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


async def stats(engine: TestServer) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(engine.make_url("/_sim/stats")) as r:
        data: dict[str, Any] = await r.json()
        return data


async def raw_request(port: int, data: bytes, read: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = await asyncio.wait_for(reader.read(65536), 5) if read else b""
    writer.close()
    return out


GEN = {"lyrics": "la la", "description": "pop"}
# A song that runs until the test ends it (``finish``): it still holds its slot while the
# test looks, however slow the box, and ends as soon as the test is done with it.
HELD = {**GEN, "seconds": 3600}


def finish(engine: TestServer) -> int:
    """End the engine's running songs now (each answers with its WAV); how many."""
    return engine.app[ENGINE].finish_running()


# --------------------------------------------------------------------------- transparency


async def test_any_method_path_and_query_forwarded_unchanged(
    engine: TestServer, gatekeeper: Any
) -> None:
    """Method, raw path (escapes kept) and query string (repeats kept) reach the engine as sent."""
    gk = await gatekeeper(rules(url(engine)))
    for method in ("GET", "PUT", "PATCH", "DELETE", "OPTIONS", "POST"):
        async with gk.client.request(
            method, "/_sim/echo/a%2Fb?x=1&x=2&y=%20z", data=b"body" if method != "GET" else None
        ) as r:
            assert r.status == 200
            echo = await r.json()
        assert echo["method"] == method
        assert echo["raw_path"] == "/_sim/echo/a%2Fb?x=1&x=2&y=%20z"
        assert echo["body_length"] == (0 if method == "GET" else 4)


async def test_raw_path_bytes_preserved(engine: TestServer, gatekeeper: Any) -> None:
    """The request target is forwarded byte for byte (percent-escapes are not re-encoded)."""
    gk = await gatekeeper(rules(url(engine)))
    out = await raw_request(
        gk.port,
        b"GET /_sim/echo/%7Euser/a%2Fb?q=%E4%BD%A0 HTTP/1.1\r\n"
        b"Host: x\r\nConnection: close\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 200")
    body = json.loads(out.split(b"\r\n\r\n", 1)[1])
    assert body["raw_path"] == "/_sim/echo/%7Euser/a%2Fb?q=%E4%BD%A0"


async def test_request_headers_kept_hop_by_hop_dropped(engine: TestServer, gatekeeper: Any) -> None:
    """End-to-end request headers, repeats too, reach the engine; hop-by-hop and invented not."""
    gk = await gatekeeper(rules(url(engine)))
    req = (
        b"GET /_sim/echo HTTP/1.1\r\nHost: music.example\r\nConnection: X-Secret, close\r\n"
        b"X-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: h2c\r\n"
        b"Proxy-Authorization: Basic eA==\r\nX-Multi: a\r\nX-Multi: b\r\n"
        b"X-Forwarded-For: 203.0.113.9\r\nCookie: sid=1\r\n\r\n"
    )
    out = await raw_request(gk.port, req)
    echo = json.loads(out.split(b"\r\n\r\n", 1)[1])
    names = [k.lower() for k, _ in echo["headers"]]
    headers = {k.lower(): v for k, v in echo["headers"]}
    for hop in ("x-secret", "keep-alive", "te", "upgrade", "proxy-authorization"):
        assert hop not in names
    assert [v for k, v in echo["headers"] if k.lower() == "x-multi"] == ["a", "b"]
    assert headers["host"] == "music.example"
    assert headers["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "music.example"
    assert headers["cookie"] == "sid=1"
    assert len(headers["x-request-id"]) >= 16
    for invented in ("user-agent", "accept", "accept-encoding", "content-type"):
        assert invented not in names


async def test_response_headers_hop_by_hop_removed(engine: TestServer, gatekeeper: Any) -> None:
    """Hop-by-hop response headers are removed; end-to-end ones, repeats included, are kept."""
    gk = await gatekeeper(rules(url(engine)))
    async with gk.client.get("/_sim/headers") as r:
        assert r.status == 200
        for hop in ("X-Hop", "Keep-Alive", "Proxy-Authenticate", "Trailer", "Upgrade"):
            assert hop not in r.headers
        assert r.headers.get("Connection", "keep-alive").lower() == "keep-alive"
        assert r.headers["X-End"] == "1"
        assert len(r.headers.getall("Set-Cookie")) == 2
        assert r.headers["Cache-Control"] == "no-store"
        assert not ("Content-Length" in r.headers and "Transfer-Encoding" in r.headers)


async def test_gzip_body_relayed_byte_identical(engine: TestServer, gatekeeper: Any) -> None:
    """A gzip body passes untouched: same bytes, same Content-Encoding and Content-Length."""
    gk = await gatekeeper(rules(url(engine)))
    async with (
        aiohttp.ClientSession(auto_decompress=False) as s,
        s.get(engine.make_url("/_sim/gzip")) as direct,
    ):
        want = await direct.read()
    async with gk.client.get("/_sim/gzip", headers={"Accept-Encoding": "gzip"}) as r:
        got = await r.read()
        assert r.headers["Content-Encoding"] == "gzip"
        assert int(r.headers["Content-Length"]) == len(want)
    assert got == want
    assert gzip.decompress(got) == gzip_plain_body()


async def test_sse_events_arrive_as_they_are_sent(engine: TestServer, gatekeeper: Any) -> None:
    """The first SSE event reaches the client while the engine is still producing the stream."""
    gk = await gatekeeper(rules(url(engine)))
    async with gk.client.get("/_sim/sse?events=4&interval=0.4") as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert "Content-Length" not in r.headers
        first = await r.content.readuntil(b"\n\n")
        t_first = time.monotonic()
        rest = await r.read()
        t_end = time.monotonic()
    head, data = first.rsplit(b"\ndata: ", 1)
    assert head == b"id: 0\nevent: tick"  # the first event whole, not a fragment
    assert json.loads(data)["seq"] == 0
    events = [e for e in rest.split(b"\n\n") if e]
    assert [json.loads(e.rsplit(b"data: ", 1)[1])["seq"] for e in events] == [1, 2, 3]
    # Ordering, not speed: the rest of the stream was still being produced after event 1.
    assert t_end - t_first >= 0.8


async def test_upload_streamed_and_download_relayed(engine: TestServer, gatekeeper: Any) -> None:
    """A chunked upload arrives intact; a large download arrives with its exact length."""
    gk = await gatekeeper(rules(url(engine)))
    payload = bytes(range(256)) * 20_000  # 5 MB

    async def chunks() -> Any:
        for i in range(0, len(payload), 65536):
            yield payload[i : i + 65536]

    async with gk.client.post("/upload", data=chunks()) as r:
        body = await r.json()
    import hashlib

    assert body == {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    async with gk.client.get("/download?bytes=3000000") as r:
        assert r.headers["Content-Length"] == "3000000"
        assert len(await r.read()) == 3_000_000


async def test_head_keeps_content_length(engine: TestServer, gatekeeper: Any) -> None:
    """HEAD answers carry the engine's Content-Length and no body."""
    gk = await gatekeeper(rules(url(engine)))
    async with gk.client.head("/download?bytes=12345") as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == "12345"
        assert await r.read() == b""


async def test_request_id_kept_or_generated(engine: TestServer, gatekeeper: Any) -> None:
    """X-Request-ID comes from the client, else is generated; it is returned and forwarded."""
    gk = await gatekeeper(rules(url(engine)))
    async with gk.client.get("/_sim/echo", headers={"X-Request-ID": "abc-123"}) as r:
        echo = await r.json()
        assert r.headers["X-Request-ID"] == "abc-123"
    assert dict((k.lower(), v) for k, v in echo["headers"])["x-request-id"] == "abc-123"
    async with gk.client.get("/_sim/echo") as r:
        assert len(r.headers["X-Request-ID"]) == 32


# --------------------------------------------------------------------------- refusals


async def test_block_route_never_reaches_upstream(engine: TestServer, gatekeeper: Any) -> None:
    """POST /batch-generate is answered 410 by gatekeeper and never forwarded."""
    gk = await gatekeeper(rules(url(engine)))
    async with gk.client.post("/batch-generate", json={"items": [GEN]}) as r:
        assert r.status == 410
        body = await r.json()
        assert r.headers["X-Gatekeeper-Reason"] == "blocked"
    assert body["reason"] == "blocked" and "Batch generation is disabled" in body["detail"]
    assert not any("batch" in k for k in (await stats(engine))["requests"])


async def test_open_proxy_refused(engine: TestServer, gatekeeper: Any) -> None:
    """Absolute-form targets and CONNECT are refused (400/405) and nothing is forwarded."""
    gk = await gatekeeper(rules(url(engine)))
    out = await raw_request(
        gk.port, b"GET http://example.com/_sim/echo HTTP/1.1\r\nHost: example.com\r\n\r\n"
    )
    assert out.startswith(b"HTTP/1.1 400")
    assert b"origin-form" in out
    out = await raw_request(
        gk.port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    )
    assert out.split(b" ")[1] in (b"400", b"405")
    assert (await stats(engine))["requests"] == {}


async def test_body_limit(engine: TestServer, gatekeeper: Any) -> None:
    """Bodies over limits.max_body_bytes get 413 JSON, whether declared or counted in flight."""
    gk = await gatekeeper(rules(url(engine), limits={"max_body_bytes": 1000}))
    async with gk.client.post("/upload", data=b"x" * 1001) as r:
        assert r.status == 413
        assert (await r.json())["reason"] == "body_too_large"
    assert (await stats(engine))["requests"] == {}

    async def chunks() -> Any:
        for _ in range(10):
            yield b"y" * 300

    async with gk.client.post("/upload", data=chunks()) as r:
        assert r.status == 413
        body = await r.json()
    assert "max_body_bytes" in body["detail"]
    async with gk.client.post("/upload", data=b"z" * 1000) as r:
        assert r.status == 200


# --------------------------------------------------------------------------- admission


async def test_rejection_format(engine: TestServer, gatekeeper: Any) -> None:
    """A busy rejection: 503, Retry-After from the running generation, reason header, JSON."""
    gk = await gatekeeper(rules(url(engine)))
    first = asyncio.create_task(gk.client.post("/generate", json=HELD))
    assert await eventually(lambda: gk.state.gate.in_flight == 1)
    async with gk.client.post("/generate", json=GEN) as r:
        assert r.status == 503
        body = await r.json()
        assert r.headers["X-Gatekeeper-Reason"] == "busy"
        retry = int(r.headers["Retry-After"])
    assert body["reason"] == "busy" and body["retry_after"] == retry
    assert 55 <= retry <= 60  # expected_seconds 60 minus the few ms elapsed
    assert "请" in body["detail"] and "busy" in body["detail"]
    assert await eventually(lambda: finish(engine) == 1)
    resp = await first
    assert resp.status == 200 and resp.headers["Content-Type"] == "audio/wav"
    resp.release()
    assert gk.state.gate.in_flight == 0
    # The completed generation now informs the estimate used by Retry-After.
    assert gk.state.gate.estimator.samples == 1
    assert gk.state.gate.estimator.expected < 60


async def test_exact_admission_under_burst(engine: TestServer, gatekeeper: Any) -> None:
    """200 simultaneous generate requests: exactly max_in_flight forwarded, the rest 503 busy."""
    gk = await gatekeeper(rules(url(engine), admission={"max_in_flight": 2}))
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:
        base = f"http://127.0.0.1:{gk.port}"

        async def one() -> int:
            async with s.post(base + "/generate", json=GEN) as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(one() for _ in range(200)))
    assert statuses.count(200) == 2
    assert statuses.count(503) == 198
    st = await stats(engine)
    assert st["requests"]["POST /generate"] == 2
    assert st["peak_active_generations"] == 2
    assert gk.state.gate.in_flight == 0
    assert (
        gk.state.counters.outcomes["admitted"] == 2
        and gk.state.counters.outcomes["rejected"] == 198
    )


async def test_hysteresis_through_file_source(
    engine: TestServer, gatekeeper: Any, tmp_path: Path
) -> None:
    """CPU over reject_above rejects with reason cpu until it falls under recover_below."""
    f = tmp_path / "res.json"
    f.write_text('{"cpu_percent": 10, "memory_percent": 10}')
    cfg = rules(
        url(engine),
        admission={"sample_interval": 0.05, "resources": {"source": "file", "file": str(f)}},
    )
    gk = await gatekeeper(cfg, monitor=True)

    def readings() -> tuple[float, float]:
        res = gk.state.gate.resources
        return res.cpu_percent, res.memory_percent

    async def status_after(cpu: float, mem: float = 10) -> tuple[int, str | None]:
        f.write_text(json.dumps({"cpu_percent": cpu, "memory_percent": mem}))
        assert await eventually(lambda: readings() == (cpu, mem))  # the monitor read it
        async with gk.client.post("/generate", json={**GEN, "seconds": 0.01}) as r:
            await r.read()
            return r.status, r.headers.get("X-Gatekeeper-Reason")

    assert await status_after(95) == (503, "cpu")
    assert await status_after(80) == (503, "cpu")  # between the thresholds: still over
    assert await status_after(74) == (200, None)
    assert await status_after(20, 95) == (503, "memory")
    assert await status_after(20, 85) == (503, "memory")
    assert await status_after(20, 79) == (200, None)


async def test_high_cpu_holds_the_queue_instead_of_failing_it(
    engine: TestServer, gatekeeper: Any, tmp_path: Path
) -> None:
    """On a queue route, CPU over reject_above holds dispatch: the request waits (nothing
    reaches the engine, it is not failed) and is served once CPU is under recover_below."""
    f = tmp_path / "res.json"
    f.write_text('{"cpu_percent": 95, "memory_percent": 10}')
    cfg = rules(
        url(engine),
        routes=QUEUE_ROUTES,
        admission={"sample_interval": 0.05, "resources": {"source": "file", "file": str(f)}},
    )
    gk = await gatekeeper(cfg, monitor=True)
    gk.state.set_upstream_up(True)  # the probe's word (none runs here): a job waits for it
    jobs = gk.state.jobs
    assert jobs is not None
    assert await eventually(lambda: gk.state.gate.resources.cpu_percent == 95)
    held = asyncio.create_task(gk.client.post("/generate", json={**GEN, "seconds": 0.01}))
    assert await eventually(lambda: jobs.depth() == 1)
    f.write_text('{"cpu_percent": 80, "memory_percent": 10}')  # between the thresholds
    assert await eventually(lambda: gk.state.gate.resources.cpu_percent == 80)
    jobs.dispatch()  # what the queue's tick does: between the thresholds it starts nothing
    assert not held.done() and jobs.depth() == 1
    assert "POST /generate" not in (await stats(engine))["requests"]
    f.write_text('{"cpu_percent": 74, "memory_percent": 10}')
    resp = await asyncio.wait_for(held, 10)
    assert resp.status == 200 and resp.headers["Content-Type"] == "audio/wav"
    resp.release()
    assert (await stats(engine))["requests"]["POST /generate"] == 1
    assert jobs.depth() == 0 and gk.state.gate.in_flight == 0


# --------------------------------------------------------------------------- upstream failures


async def test_upstream_down_is_502_and_frees_slot(gatekeeper: Any) -> None:
    """Connection refused → 502 upstream_unavailable with JSON; the slot is released."""

    gk = await gatekeeper(rules(f"http://127.0.0.1:{free_port()}"))
    async with gk.client.post("/generate", json=GEN) as r:
        assert r.status == 502
        assert (await r.json())["reason"] == "upstream_unavailable"
    assert gk.state.gate.in_flight == 0
    assert gk.state.counters.upstream_errors_by_kind == {"connect": 1}


async def test_read_timeout_is_504_and_frees_slot(engine: TestServer, gatekeeper: Any) -> None:
    """No byte within timeouts.read → 504 upstream_timeout; the slot is released."""
    gk = await gatekeeper(
        rules(
            url(engine),
            routes=[{"name": "slow", "match": {"path": "/_sim/sleep"}, "action": "admit"}],
            upstream={"timeouts": {"read": 0.3}},
        )
    )
    async with gk.client.get("/_sim/sleep?seconds=3") as r:
        assert r.status == 504
        assert (await r.json())["reason"] == "upstream_timeout"
    assert gk.state.gate.in_flight == 0
    assert gk.state.counters.upstream_errors_by_kind == {"timeout": 1}


async def test_pool_timeout_is_503_upstream_busy(engine: TestServer, gatekeeper: Any) -> None:
    """No free pool connection within timeouts.pool → 503 upstream_busy."""
    pool = {
        "timeouts": {"pool": 0.2},
        "limits": {"max_connections": 1, "max_keepalive_connections": 1},
    }
    gk = await gatekeeper(rules(url(engine), upstream={"passthrough": pool}))
    slow = asyncio.create_task(gk.client.get("/_sim/sleep?seconds=1"))

    async def pool_taken() -> bool:  # the pool's one connection carries the slow request
        return bool((await stats(engine))["in_flight_requests"] == 1)

    await poll(pool_taken)
    async with gk.client.get("/_sim/echo") as r:
        assert r.status == 503
        assert (await r.json())["reason"] == "upstream_busy"
    resp = await slow
    assert resp.status == 200
    resp.release()


async def test_failure_mid_body_aborts_client(engine: TestServer, gatekeeper: Any) -> None:
    """The engine dying mid-response aborts the client connection: no truncated 'complete' body."""
    gk = await gatekeeper(rules(url(engine)))
    with pytest.raises(aiohttp.ClientPayloadError):
        async with gk.client.get("/_sim/abort?after=5000") as r:
            assert r.status == 200
            await r.read()


async def test_stall_mid_body_past_read_timeout_aborts(engine: TestServer, gatekeeper: Any) -> None:
    """A mid-body gap longer than timeouts.read aborts the client instead of hanging."""
    gk = await gatekeeper(rules(url(engine), upstream={"passthrough": {"timeouts": {"read": 0.3}}}))
    with pytest.raises(aiohttp.ClientPayloadError):
        async with gk.client.get("/_sim/stall?after=100&seconds=3") as r:
            await r.read()
    assert gk.state.counters.upstream_errors_by_kind == {"timeout": 1}


async def test_write_timeout(gatekeeper: Any) -> None:
    """An upstream that stops reading the upload → 504 after timeouts.write, slot released."""
    stalled: list[asyncio.StreamWriter] = []

    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        stalled.append(writer)  # then never read again: the upload backs up

    server = await asyncio.start_server(never_read, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gk = await gatekeeper(
            rules(f"http://127.0.0.1:{port}", upstream={"timeouts": {"write": 0.3}})
        )
        size = 64 * 1024 * 1024  # far more than the socket buffers on both hops hold
        reader, writer = await asyncio.open_connection("127.0.0.1", gk.port)
        writer.write(
            f"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()
        )

        async def upload() -> None:
            chunk = b"x" * 65536
            for _ in range(size // len(chunk)):
                writer.write(chunk)
                await writer.drain()

        pump = asyncio.create_task(upload())
        t0 = time.monotonic()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        elapsed = time.monotonic() - t0
        # aiohttp lingers to discard the unread rest of the upload; let the client finish it.
        await asyncio.wait_for(pump, 10)
        writer.transport.abort()
        assert head.startswith(b"HTTP/1.1 504")
        assert b"X-Gatekeeper-Reason: upstream_timeout" in head
        assert elapsed < 5  # the write timeout fired; nothing waited for the upstream
        assert await eventually(lambda: gk.state.gate.in_flight == 0)
        # aiohttp discards the unread rest of the upload ("lingering"); a server shut down in
        # the middle of that waits out its 10 s lingering_time, so let it finish first.
        assert await eventually(lambda: not server_connections(gk))
    finally:
        for w in stalled:
            w.transport.abort()
        server.close()


# --------------------------------------------------------------------------- client gone


async def _post_and_vanish(gk: Gk, engine: TestServer, seconds: float) -> None:
    """POST a generation of ``seconds`` and close the connection once the engine works on it."""
    body = json.dumps({**GEN, "seconds": seconds}).encode()
    _, writer = await asyncio.open_connection("127.0.0.1", gk.port)
    writer.write(
        b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()

    async def working() -> bool:
        return bool((await stats(engine))["active_generations"] == 1)

    await poll(working)
    assert gk.state.gate.in_flight == 1
    writer.close()


@pytest.mark.slow  # in process, but seconds of real timeouts: the fast tier stays under a minute
async def test_client_gone_finish_holds_slot_until_engine_done(
    engine: TestServer, gatekeeper: Any
) -> None:
    """on_client_disconnect=finish: the slot stays held while the engine works, then is freed."""
    gk = await gatekeeper(rules(url(engine)))
    t0 = time.monotonic()
    await _post_and_vanish(gk, engine, 1.2)
    assert await eventually(lambda: client_gone(gk))  # gatekeeper saw the client go
    assert gk.state.gate.in_flight == 1
    async with gk.client.post("/generate", json=GEN) as r:
        assert r.status == 503  # never two generations because a tab closed
    assert await eventually(lambda: gk.state.gate.in_flight == 0)
    assert time.monotonic() - t0 >= 1.2  # held until the engine's 1.2 s of work were done
    assert gk.state.gate.in_flight == 0
    st = await stats(engine)
    assert st["completed_generations"] == 1 and st["active_generations"] == 0


async def test_finish_survives_servers_that_cancel_handlers(
    engine: TestServer, gatekeeper: Any
) -> None:
    """Even when the server cancels the handler on disconnect, finish holds the slot to the end."""
    gk = await gatekeeper(rules(url(engine)), handler_cancellation=True)
    t0 = time.monotonic()
    await _post_and_vanish(gk, engine, 1.2)
    assert await eventually(lambda: client_gone(gk))  # and the server cancelled its handler
    assert gk.state.gate.in_flight == 1
    assert await eventually(lambda: gk.state.gate.in_flight == 0)
    assert time.monotonic() - t0 >= 1.2  # held until the engine's 1.2 s of work were done
    assert gk.state.gate.in_flight == 0
    assert (await stats(engine))["completed_generations"] == 1


async def test_client_gone_cancel_frees_slot_at_once(engine: TestServer, gatekeeper: Any) -> None:
    """on_client_disconnect=cancel: the upstream request is dropped and the slot freed promptly."""
    gk = await gatekeeper(rules(url(engine), admission={"on_client_disconnect": "cancel"}))
    await _post_and_vanish(gk, engine, 5.0)
    assert await eventually(lambda: gk.state.gate.in_flight == 0)
    assert gk.state.gate.in_flight == 0
    assert gk.state.counters.upstream_errors_by_kind.get("client_disconnect") == 1


async def test_client_gone_during_upload_never_takes_the_slot(
    engine: TestServer, gatekeeper: Any
) -> None:
    """An upload is taken before admission: mid-upload the slot is free; leaving costs nothing."""
    gk = await gatekeeper(rules(url(engine)))
    _, writer = await asyncio.open_connection("127.0.0.1", gk.port)
    writer.write(
        b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000
    )
    await writer.drain()
    assert await eventually(lambda: handling(gk) == 1)  # the handler waits for the body
    assert gk.state.gate.in_flight == 0  # the body is still being spooled
    assert (await gk.client.post("/generate", json={**GEN, "seconds": 0.05})).status == 200
    writer.close()
    assert await eventually(
        lambda: gk.state.counters.upstream_errors_by_kind == {"client_disconnect": 1}
    )
    assert gk.state.gate.in_flight == 0
    assert gk.state.counters.outcomes["admitted"] == 1  # only the complete one


@pytest.mark.parametrize("mode", ["finish", "cancel"])
async def test_shutdown_mid_generation_releases_slot(engine: TestServer, mode: str) -> None:
    """Shutting down mid-generation (handlers cancelled, pools closed) releases the slot."""
    state = await create_state(rules(url(engine), admission={"on_client_disconnect": mode}))
    app = build_proxy_app(state, monitor=False, probe=False)
    # Handlers are cancelled by the shutdown (after 0.5 s), not when the client leaves.
    server = ProductionLikeServer(app, shutdown_timeout=0.5)
    await server.start_server()
    assert server.port is not None
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    body = json.dumps({**GEN, "seconds": 3.0}).encode()
    writer.write(
        b"POST /generate HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    assert await eventually(lambda: state.gate.in_flight == 1)
    t0 = time.monotonic()
    await server.close()
    assert state.gate.in_flight == 0
    assert time.monotonic() - t0 < 2.5  # not after the engine's 3 s
    writer.transport.abort()


async def test_keepalive_cap(engine: TestServer, gatekeeper: Any) -> None:
    """After a burst, at most max_keepalive_connections idle connections stay open upstream."""
    gk = await gatekeeper(rules(url(engine)))
    await asyncio.gather(*(gk.client.get("/_sim/sleep?seconds=0.2") for _ in range(8)))
    pool = gk.state.runtime.passthrough
    assert (
        pool.connector.idle_count()
        <= gk.state.config.upstream.passthrough.limits.max_keepalive_connections
    )
    assert pool.connector.idle_count() >= 1  # keep-alive does happen


async def test_pass_routes_not_starved_by_generation(engine: TestServer, gatekeeper: Any) -> None:
    """While a generation holds the gated pool, status polls use their own pool and succeed."""
    gk = await gatekeeper(rules(url(engine)))
    gen = asyncio.create_task(gk.client.post("/generate", json=HELD))
    assert await eventually(lambda: gk.state.gate.in_flight == 1)
    for _ in range(5):
        async with gk.client.get("/progress") as r:
            assert r.status == 200
    assert await eventually(lambda: finish(engine) == 1)
    resp = await gen
    assert resp.status == 200
    resp.release()


async def test_finish_drains_after_client_leaves_mid_response(
    engine: TestServer, gatekeeper: Any
) -> None:
    """finish: a client leaving mid-body keeps the slot until the engine's body has ended."""
    admit_sse = [{"name": "ticks", "match": {"path": "/_sim/sse"}, "action": "admit"}]
    gk = await gatekeeper(rules(url(engine), routes=admit_sse))
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", gk.port)
    # Ten events 0.1 s apart: the body ends 0.9 s after it began.
    writer.write(b"GET /_sim/sse?events=10&interval=0.1 HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    writer.transport.abort()
    counters = gk.state.counters
    # A write to the gone client failed: gatekeeper knows it is reading for nobody now.
    assert await eventually(lambda: counters.upstream_errors_by_kind == {"client_disconnect": 1})
    assert gk.state.gate.in_flight == 1  # the engine's answer is still being read
    assert await eventually(lambda: gk.state.gate.in_flight == 0)
    assert time.monotonic() - t0 >= 0.9  # not before the engine's body had ended
    assert gk.state.counters.upstream_errors_by_kind == {"client_disconnect": 1}


async def test_engine_failing_while_draining_for_a_gone_client(
    engine: TestServer, gatekeeper: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An engine that breaks while gatekeeper drains for a gone client frees the slot quietly."""
    routes = [{"name": "abort", "match": {"path": "/_sim/abort"}, "action": "admit"}]
    gk = await gatekeeper(rules(url(engine), routes=routes))
    reader, writer = await asyncio.open_connection("127.0.0.1", gk.port)
    writer.write(b"GET /_sim/abort?after=2000000 HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    writer.transport.abort()
    assert await eventually(lambda: gk.state.gate.in_flight == 0)
    assert gk.state.counters.upstream_errors_by_kind == {"client_disconnect": 1, "protocol": 1}
    assert "Traceback" not in caplog.text and "Error handling request" not in caplog.text


async def test_access_log_counts_streamed_bytes(
    engine: TestServer, gatekeeper: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The access line counts the bytes really relayed, also for chunked uploads."""
    gk = await gatekeeper(rules(url(engine)))

    async def chunks() -> Any:
        for _ in range(10):
            yield b"u" * 100_000

    with caplog.at_level("INFO", logger="gatekeeper.access"):
        async with gk.client.post("/upload", data=chunks()) as r:
            assert (await r.json())["bytes"] == 1_000_000
    fields = [
        getattr(rec, "fields", {}) for rec in caplog.records if rec.name == "gatekeeper.access"
    ]
    assert fields[-1]["bytes_in"] == 1_000_000
    assert fields[-1]["bytes_out"] > 0 and fields[-1]["decision"] == "passed"


async def test_trickling_upload_times_out_and_frees_slot(
    engine: TestServer, gatekeeper: Any
) -> None:
    """A client pausing mid-upload past limits.client_body_timeout gets 408, never the slot."""
    gk = await gatekeeper(rules(url(engine), limits={"client_body_timeout": 0.3}))
    reader, writer = await asyncio.open_connection("127.0.0.1", gk.port)
    writer.write(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"{" * 10)
    await writer.drain()
    assert await eventually(lambda: handling(gk) == 1)  # the handler waits for the body
    assert gk.state.gate.in_flight == 0
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.transport.abort()
    assert head.startswith(b"HTTP/1.1 408")
    assert b"X-Gatekeeper-Reason: client_timeout" in head
    assert await eventually(lambda: gk.state.gate.in_flight == 0)
    assert gk.state.counters.rejections_by_reason == {"client_timeout": 1}


@pytest.mark.slow  # in process, but seconds of real timeouts: the fast tier stays under a minute
async def test_client_that_stops_reading_small_events_is_dropped(
    engine: TestServer, gatekeeper: Any
) -> None:
    """Small SSE events to a client that never reads: the writes that could wait are timed
    (the send timeout is armed only near the transport's high-water mark) and it is dropped."""
    routes = [{"name": "ticks", "match": {"path": "/_sim/sse"}, "action": "admit"}]
    gk = await gatekeeper(
        rules(
            url(engine),
            routes=routes,
            limits={"client_send_timeout": 0.5},
            admission={"on_client_disconnect": "cancel"},
        )
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gk.port)
    # A tiny receive buffer so the kernel stops taking bytes early.
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(b"GET /_sim/sse?events=1000000&interval=0 HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")  # then never read again, never close
    assert gk.state.gate.in_flight == 1
    assert await eventually(lambda: gk.state.gate.in_flight == 0, timeout=15)
    assert gk.state.counters.upstream_errors_by_kind == {"client_disconnect": 1}
    writer.transport.abort()


@pytest.mark.parametrize("mode", ["finish", "cancel"])
async def test_client_that_stops_reading_is_dropped_and_frees_slot(
    engine: TestServer, gatekeeper: Any, mode: str
) -> None:
    """A client that stops reading the answer is dropped after client_send_timeout; slot freed."""
    routes = [{"name": "dl", "match": {"path": "/download"}, "action": "admit"}]
    gk = await gatekeeper(
        rules(
            url(engine),
            routes=routes,
            limits={"client_send_timeout": 0.5},
            admission={"on_client_disconnect": mode},
        )
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gk.port)
    writer.write(b"GET /download?bytes=67108864 HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")  # then never read again, never close
    assert gk.state.gate.in_flight == 1
    assert await eventually(lambda: gk.state.gate.in_flight == 0, timeout=10)
    assert gk.state.counters.upstream_errors_by_kind == {"client_disconnect": 1}
    writer.transport.abort()
