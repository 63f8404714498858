"""Hostile input over raw sockets against the real ``gatekeeper run`` and engine-sim.

Each shape is one a smuggling, desync or resource attack would use. For every
one: gatekeeper answers with a precise 4xx (or closes the connection), nothing
unintended reaches the engine (its own request counter says so), no traceback
is logged, and a normal generation is admitted afterwards.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from support import ADMIT_ROUTES, Proc, start_gatekeeper, wait_output

GEN = {"lyrics": "[verse] la", "description": "pop", "seconds": 0.3}
GEN_BODY = json.dumps(GEN).encode()
ENGINE_SECONDS = 0.3  # the song length of the module's engine (conftest.engine)

RULES = """\
limits:
  max_body_bytes: 1048576
  client_body_timeout: 1s
  client_body_deadline: 3s
  header_timeout: 2s
upstream:
  probe:
    interval: 30s
"""
RULES += ADMIT_ROUTES  # hostile clients against the admit path (busy: 503 at once)


@pytest.fixture(scope="module")
def gk(
    engine: tuple[Proc, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Proc, str, str]]:
    proc, url, admin = start_gatekeeper(tmp_path_factory.mktemp("gk"), RULES, engine[1])
    yield proc, url, admin
    assert proc.stop() == 0
    output = proc.output()
    assert "Traceback" not in output and " ERROR " not in output, output


def addr(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


async def exchange(url: str, raw: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes (or ``timeout``)."""
    reader, writer = await asyncio.open_connection(*addr(url))
    writer.write(raw)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def engine_requests(http: aiohttp.ClientSession, engine: str) -> dict[str, int]:
    async with http.get(engine + "/_sim/stats") as r:
        got: dict[str, int] = (await r.json())["requests"]
    got.pop("GET /", None)  # gatekeeper's probe
    return got


async def reset(http: aiohttp.ClientSession, engine: str) -> None:
    async with http.post(engine + "/_sim/reset") as r:
        assert r.status == 200


def post_generate(extra: bytes = b"", body: bytes = GEN_BODY, path: str = "/generate") -> bytes:
    """A generation request; the server closes after answering unless ``extra`` says more."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
        + (extra or b"Connection: close\r\n")
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


SMUGGLING = {
    "CL+TE": b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nPOST /generate HTTP/1.1\r\nHost: x\r\n\r\n",
    "duplicate Content-Length": b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
    b"Content-Length: 2\r\n\r\n{}",
    "conflicting Content-Length": b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
    b"Content-Length: 40\r\n\r\n{}",
    "Content-Length list": b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 2\r\n\r\n{}",
    "bad chunk size": b"POST /generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\n{}\r\n0\r\n\r\n",
    "space before colon": b"POST /generate HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "obs-fold": b"POST /generate HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n"
    b"Content-Length: 2\r\n\r\n{}",
    "NUL in a header": b"GET /progress HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "bare LF": b"GET /progress HTTP/1.1\nHost: x\n\n",
    "HTTP/1.1 without Host": b"GET /progress HTTP/1.1\r\n\r\n",
    "two Hosts": b"GET /progress HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "oversized URL": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "oversized header": b"GET /progress HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n",
    "too many headers": b"GET /progress HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-%d: a\r\n" % i for i in range(200))
    + b"\r\n",
    "invalid method": b"G@T /progress HTTP/1.1\r\nHost: x\r\n\r\n",
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}


@pytest.mark.parametrize("shape", list(SMUGGLING))
async def test_malformed_framing_gets_400_and_reaches_nothing(
    shape: str, gk: tuple[Proc, str, str], engine: tuple[Proc, str], http: aiohttp.ClientSession
) -> None:
    """Smuggling and desync shapes: 400 and a closed connection; the engine sees nothing."""
    _, url, _ = gk
    await reset(http, engine[1])
    answer = await exchange(url, SMUGGLING[shape])
    assert re.match(rb"HTTP/1\.[01] 400 ", answer), answer[:200]
    # One answer: the tail was never parsed as a second request.
    assert len(re.findall(rb"HTTP/1\.[01] \d{3} [A-Z]", answer)) == 1, answer
    assert await engine_requests(http, engine[1]) == {}
    if shape != "HTTP/2 preface":  # aiohttp refuses that one without logging
        await wait_output(gk[0], "malformed request from 127.0.0.1 refused with 400")


async def test_http09_and_silence_are_closed_by_the_head_deadline(
    gk: tuple[Proc, str, str],
) -> None:
    """An HTTP/0.9 line (no version, no end of head) is closed at limits.header_timeout."""
    _, url, _ = gk
    t0 = time.monotonic()
    answer = await exchange(url, b"GET /generate\r\n", timeout=6)
    assert answer.startswith(b"HTTP/1.1 408 ") and time.monotonic() - t0 < 4


async def test_absolute_form_and_connect_are_refused(
    gk: tuple[Proc, str, str], engine: tuple[Proc, str], http: aiohttp.ClientSession
) -> None:
    """gatekeeper is never an open proxy: absolute-form -> 400, CONNECT -> 405."""
    _, url, _ = gk
    await reset(http, engine[1])
    absolute = await exchange(
        url, f"GET {engine[1]}/_sim/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    connect = await exchange(
        url, b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\nConnection: close\r\n\r\n"
    )
    assert absolute.startswith(b"HTTP/1.1 400 ") and b"origin-form" in absolute
    assert connect.startswith(b"HTTP/1.1 405 ") and b"not a forward proxy" in connect
    assert await engine_requests(http, engine[1]) == {}


async def test_http10_without_host_is_served_and_still_gated(
    gk: tuple[Proc, str, str], engine: tuple[Proc, str], http: aiohttp.ClientSession
) -> None:
    """HTTP/1.0 may omit Host (RFC 9112 §3.2): served, and its generation goes through the gate."""
    _, url, admin = gk
    await reset(http, engine[1])
    raw = post_generate().replace(b"HTTP/1.1\r\nHost: x\r\n", b"HTTP/1.0\r\n")
    answer = await exchange(url, raw, timeout=10)
    assert answer.startswith(b"HTTP/1.0 200 "), answer[:200]
    assert b"RIFF" in answer
    async with http.get(admin + "/metrics") as r:
        text = await r.text()
    assert re.search(
        r'gatekeeper_requests_total\{outcome="admitted",route="generate"\} [1-9]', text
    )


async def test_pipelined_generation_behind_a_poll_is_gated(
    gk: tuple[Proc, str, str], engine: tuple[Proc, str], http: aiohttp.ClientSession
) -> None:
    """A generation pipelined behind a pass request is admitted like any other: busy -> 503."""
    _, url, _ = gk
    await reset(http, engine[1])
    running = asyncio.create_task(
        exchange(url, post_generate(body=json.dumps({**GEN, "seconds": 2}).encode()), timeout=10)
    )
    await asyncio.sleep(0.5)  # the first generation runs
    answer = await exchange(
        url,
        b"GET /progress HTTP/1.1\r\nHost: x\r\n\r\n" + post_generate(b"Connection: close\r\n"),
    )
    first, _, second = answer.partition(b"HTTP/1.1 503 ")
    assert first.startswith(b"HTTP/1.1 200 ") and b"X-Gatekeeper-Reason: busy" in second
    assert (await running).startswith(b"HTTP/1.1 200 ")
    assert await engine_requests(http, engine[1]) == {"GET /progress": 1, "POST /generate": 1}


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/metrics"), ("POST", "/reload"), ("GET", "/healthz"), ("GET", "/readyz")],
)
async def test_admin_paths_on_the_public_port_are_not_gatekeepers(
    method: str,
    path: str,
    gk: tuple[Proc, str, str],
    engine: tuple[Proc, str],
    http: aiohttp.ClientSession,
) -> None:
    """Admin endpoints live only on admin_listen: on the public port they are the engine's."""
    _, url, admin = gk
    async with http.get(admin + "/metrics") as r:
        reloads_before = re.findall(r"gatekeeper_config_reloads_total\{.*", await r.text())
    async with http.request(method, engine[1] + path) as r:
        direct = r.status, r.content_type
    async with http.request(method, url + path) as r:
        body = await r.read()
        assert (r.status, r.content_type) == direct  # whatever the engine answers
        assert b"gatekeeper_" not in body
    async with http.get(admin + "/metrics") as r:
        assert re.findall(r"gatekeeper_config_reloads_total\{.*", await r.text()) == reloads_before


async def test_oversized_body_is_413_and_the_connection_closes_at_once(
    gk: tuple[Proc, str, str], engine: tuple[Proc, str], http: aiohttp.ClientSession
) -> None:
    """A declared body over max_body_bytes: 413, Connection: close, closed within ~1 s."""
    _, url, _ = gk
    await reset(http, engine[1])
    reader, writer = await asyncio.open_connection(*addr(url))
    writer.write(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\nabc")
    t0 = time.monotonic()
    answer = await asyncio.wait_for(reader.read(), 5)  # EOF: the server closed
    elapsed = time.monotonic() - t0
    writer.close()
    assert answer.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in answer
    assert elapsed < 2.0, elapsed
    assert await engine_requests(http, engine[1]) == {}


async def test_chunked_body_over_the_limit_is_413_before_anything_is_forwarded(
    gk: tuple[Proc, str, str], engine: tuple[Proc, str], http: aiohttp.ClientSession
) -> None:
    """Without a declared length, the spool counts: over max_body_bytes -> 413, engine untouched."""
    _, url, _ = gk
    await reset(http, engine[1])
    chunk = b"a" * 65536
    raw = b"POST /generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw += b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(20)) + b"0\r\n\r\n"
    answer = await exchange(url, raw)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert await engine_requests(http, engine[1]) == {}


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("a" * 8000, False),
        ("a" * 129, False),
        ("x<script>", False),
        ("abc def", False),
        ("a" * 128, True),
        ("req-1234_ok.5", True),
    ],
)
async def test_client_request_id_is_capped_and_validated(
    given: str,
    kept: bool,
    gk: tuple[Proc, str, str],
    engine: tuple[Proc, str],
    http: aiohttp.ClientSession,
) -> None:
    """X-Request-ID over 128 chars or with odd bytes is replaced, in the answer and upstream."""
    _, url, _ = gk
    raw = (
        b"GET /_sim/headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Request-ID: "
        + given.encode("latin-1")
        + b"\r\n\r\n"
    )
    answer = await exchange(url, raw)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
    rid = re.search(rb"X-Request-ID: (\S+)", answer)
    assert rid is not None
    async with http.get(engine[1] + "/_sim/stats") as r:
        seen: dict[str, Any] = (await r.json())["last_headers"]
    upstream_id = {k.lower(): v for k, v in seen.items()}["x-request-id"]
    assert upstream_id == rid.group(1).decode()
    if kept:
        assert upstream_id == given
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", upstream_id), upstream_id


async def test_a_trickling_upload_never_holds_the_generation_slot(
    gk: tuple[Proc, str, str], engine: tuple[Proc, str], http: aiohttp.ClientSession
) -> None:
    """One byte every 0.7 s (under the 1 s pause timeout): others generate; the trickler gets 408.

    Before bodies were spooled ahead of admission, 12 of 12 legitimate generations got
    503 while one such client held the slot.
    """
    _, url, admin = gk
    reader, writer = await asyncio.open_connection(*addr(url))
    writer.write(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")

    async def trickle() -> None:
        try:
            for _ in range(100):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.7)
        except (ConnectionError, OSError):
            pass

    trickler = asyncio.create_task(trickle())
    t0 = time.monotonic()
    ok = 0
    for _ in range(3):
        async with http.post(url + "/generate", json=GEN) as r:
            assert r.status == 200, await r.text()
            ok += 1
    answer = await asyncio.wait_for(reader.read(), 6)
    elapsed = time.monotonic() - t0
    trickler.cancel()
    writer.close()
    assert ok == 3
    assert answer.startswith(b"HTTP/1.1 408 ") and b"client_body_deadline" in answer
    assert elapsed < 5.0
    async with http.get(admin + "/status") as r:
        assert (await r.json())["in_flight"] == 0


async def test_busy_rejection_does_not_wait_for_the_upload(
    gk: tuple[Proc, str, str], http: aiohttp.ClientSession
) -> None:
    """While a generation runs, a new one is rejected before its (large) body is read."""
    _, url, _ = gk
    running = asyncio.create_task(
        exchange(url, post_generate(body=json.dumps({**GEN, "seconds": 1.5}).encode()), 10)
    )
    await asyncio.sleep(0.4)
    reader, writer = await asyncio.open_connection(*addr(url))
    writer.write(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 900000\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)  # no body byte sent
    writer.close()
    assert head.startswith(b"HTTP/1.1 503 ") and b"X-Gatekeeper-Reason: busy" in head
    assert (await running).startswith(b"HTTP/1.1 200 ")
