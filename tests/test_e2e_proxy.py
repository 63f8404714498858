"""End to end: the real ``gatekeeper run`` process in front of the real ``gatekeeper engine-sim``.

Everything crosses real sockets between real processes, exactly as a user runs it.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from support import (
    ADMIT_ROUTES,
    Proc,
    resources_file,
    rules,
    send_generation,
    start_engine,
    start_gatekeeper,
)

from gatekeeper.enginesim import gzip_plain_body

GEN = {"lyrics": "[verse] 海风吹过夏天的街", "description": "pop"}
ENGINE_SECONDS = 1.5  # the song length of the module's engine (conftest.engine)


# Short intervals. CPU and memory come from a readings file, never from psutil: on a 2-core
# box running the test suite, real CPU often exceeds 90 % and admission would (rightly)
# reject the requests a test is about. /generate is an ``admit`` route (these tests are
# about the proxy path and admission: ADMIT_ROUTES) unless a test gives the routes.
BASE = {
    "admission": {"expected_seconds": 30, "sample_interval": 0.1},
    "upstream": {"probe": {"interval": 0.5}},
}


@pytest.fixture(scope="module")
def gk(
    engine: tuple[Proc, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Proc, str, str]]:
    tmp = tmp_path_factory.mktemp("gk")
    text = rules(BASE, resources_file(tmp / "calm.json"), ADMIT_ROUTES)
    proc, url, admin = start_gatekeeper(tmp, text, engine[1])
    yield proc, url, admin
    assert proc.stop() == 0
    assert "Traceback" not in proc.output()


@pytest.fixture(scope="module")
def gk_queue(
    engine: tuple[Proc, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Proc, str, str]]:
    """The shipped queue route; per_client 5 so one test client may queue 5."""
    tmp = tmp_path_factory.mktemp("gkq")
    queue = {"admission": {"queue": {"per_client": 5}}}
    text = rules(BASE, resources_file(tmp / "calm.json"), queue)
    proc, url, admin = start_gatekeeper(tmp, text, engine[1])
    yield proc, url, admin
    assert proc.stop() == 0
    assert "Traceback" not in proc.output()


async def get_json(s: aiohttp.ClientSession, url: str) -> Any:
    async with s.get(url) as r:
        return await r.json()


async def in_flight(s: aiohttp.ClientSession, admin: str) -> int:
    return int((await get_json(s, admin + "/status"))["in_flight"])


async def wait_in_flight(s: aiohttp.ClientSession, admin: str, n: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while await in_flight(s, admin) != n:
        assert time.monotonic() < deadline, f"in_flight never became {n}"
        await asyncio.sleep(0.05)


async def wait_client_connections(
    s: aiohttp.ClientSession, admin: str, n: int, timeout: float = 10
) -> None:
    """Until gatekeeper_client_connections (open on the public listener) is ``n``."""
    deadline = time.monotonic() + timeout
    while True:
        async with s.get(admin + "/metrics") as r:
            m = re.search(r"^gatekeeper_client_connections (\S+)$", await r.text(), re.M)
        if m and float(m.group(1)) == n:
            return
        assert time.monotonic() < deadline, f"client connections never became {n}"
        await asyncio.sleep(0.05)


async def test_exact_admission_under_burst(
    gk: tuple[Proc, str, str], engine: tuple[Proc, str], http: aiohttp.ClientSession
) -> None:
    """200 simultaneous generations through the real process: exactly 1 reaches the engine."""
    _, url, admin = gk
    await http.post(engine[1] + "/_sim/reset")

    async def one() -> tuple[int, float]:
        t0 = time.monotonic()
        async with http.post(url + "/generate", json=GEN) as r:
            await r.read()
            return r.status, time.monotonic() - t0

    results = await asyncio.gather(*(one() for _ in range(200)))
    statuses = [s for s, _ in results]
    assert statuses.count(200) == 1 and statuses.count(503) == 199
    st = await get_json(http, engine[1] + "/_sim/stats")
    assert st["requests"].get("POST /generate") == 1
    assert st["peak_active_generations"] == 1
    await wait_in_flight(http, admin, 0)
    rejected = sorted(t for s, t in results if s == 503)
    print(
        f"\nburst of 200: rejections answered in p50 {rejected[len(rejected) // 2] * 1000:.0f} ms"
    )


async def test_wav_generated_through_proxy(
    gk: tuple[Proc, str, str], http: aiohttp.ClientSession
) -> None:
    """A generation through gatekeeper returns the engine's WAV, byte-exact, then frees the slot."""
    _, url, admin = gk
    async with http.post(url + "/generate", json=GEN) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "audio/wav"
        wav = await r.read()
    assert wav[:4] == b"RIFF" and len(wav) == int(r.headers["Content-Length"])
    assert await in_flight(http, admin) == 0


async def test_client_leaving_holds_slot_until_engine_finishes(
    gk: tuple[Proc, str, str], engine: tuple[Proc, str], http: aiohttp.ClientSession
) -> None:
    """finish: a client that leaves mid-generation keeps the slot held until the engine is done."""
    _, url, admin = gk
    t0 = time.monotonic()
    writer = await send_generation(url, {**GEN, "seconds": 2.0})
    await wait_in_flight(http, admin, 1)
    writer.transport.abort()
    await wait_client_connections(http, admin, 0)  # gatekeeper saw the client go
    assert await in_flight(http, admin) == 1  # the engine is still computing
    async with http.post(url + "/generate", json=GEN) as r:
        assert r.status == 503 and r.headers["X-Gatekeeper-Reason"] == "busy"
    await wait_in_flight(http, admin, 0)
    assert time.monotonic() - t0 >= 2.0  # held until the engine's 2 s of work were done
    st = await get_json(http, engine[1] + "/_sim/stats")
    assert st["active_generations"] == 0


async def test_cancel_mode_frees_slot_at_once(
    engine: tuple[Proc, str], tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """cancel: a client that leaves frees the slot within a second, the upstream call dropped."""
    proc, url, admin = start_gatekeeper(
        tmp_path,
        rules(
            BASE,
            resources_file(tmp_path / "calm.json"),
            ADMIT_ROUTES,
            {"admission": {"on_client_disconnect": "cancel"}},
        ),
        engine[1],
    )
    try:
        writer = await send_generation(url, {**GEN, "seconds": 20})
        await wait_in_flight(http, admin, 1)
        t0 = time.monotonic()
        writer.transport.abort()
        await wait_in_flight(http, admin, 0, timeout=3)
        print(f"\ncancel: slot freed {time.monotonic() - t0:.2f} s after the client left")
    finally:
        assert proc.stop() == 0
        # The module's engine computes the dropped 20 s song on: end it, or it halves the
        # speed of every song of the next tests (engine-sim shares itself between songs).
        async with http.post(engine[1] + "/_sim/finish") as r:
            assert r.status == 200


async def test_upstream_errors_free_the_slot(
    engine: tuple[Proc, str], tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """502 on a dead engine, 504 on a read timeout, each with JSON; the slot is freed each time."""
    # The engine dies after gatekeeper's probe saw it up (its first round runs before the
    # listener opens: an engine already dead at start is 503 engine_down, not a 502).
    doomed, doomed_url = start_engine(tmp_path)
    dead, url, admin = start_gatekeeper(
        tmp_path,
        rules(
            BASE,
            resources_file(tmp_path / "calm.json"),
            ADMIT_ROUTES,
            {"upstream": {"probe": {"interval": 600}}},
        ),
        doomed_url,
    )
    doomed.kill()
    try:
        async with http.post(url + "/generate", json=GEN) as r:
            assert r.status == 502
            assert (await r.json())["reason"] == "upstream_unavailable"
        assert await in_flight(http, admin) == 0
    finally:
        dead.stop()
    slow_rules = rules(
        BASE,
        resources_file(tmp_path / "calm.json"),
        {"upstream": {"timeouts": {"read": 0.5}}},
        {"routes": [{"name": "slow", "match": {"path": "/_sim/sleep"}, "action": "admit"}]},
    )
    slow, url, admin = start_gatekeeper(tmp_path, slow_rules, engine[1])
    try:
        t0 = time.monotonic()
        async with http.get(url + "/_sim/sleep?seconds=5") as r:
            assert r.status == 504
            body = await r.json()
        assert body["reason"] == "upstream_timeout"
        assert time.monotonic() - t0 < 4
        assert await in_flight(http, admin) == 0
        async with http.get(admin + "/metrics") as r:
            text = await r.text()
        assert 'gatekeeper_upstream_errors_total{kind="timeout",route="slow"} 1.0' in text
    finally:
        slow.stop()


async def test_sse_first_event_before_upstream_finishes(
    gk: tuple[Proc, str, str], http: aiohttp.ClientSession
) -> None:
    """The engine's SSE progress reaches the client event by event while it still generates."""
    _, url, _ = gk
    async with http.post(url + "/generate/stream", json={**GEN, "seconds": 1.0}) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        first = await r.content.readuntil(b"\n\n")
        t_first = time.monotonic()
        rest = await r.read()
        t_done = time.monotonic()
    assert b"event: progress" in first
    assert b"event: done" in rest and b"event: done" not in first
    assert t_done - t_first > 0.5  # the rest was still being generated


async def test_gzip_and_headers_through_real_process(
    gk: tuple[Proc, str, str], engine: tuple[Proc, str], http: aiohttp.ClientSession
) -> None:
    """gzip bytes pass byte-identical; hop-by-hop response headers go, end-to-end ones stay."""
    _, url, _ = gk
    async with http.get(engine[1] + "/_sim/gzip") as r:
        direct = await r.read()
    async with http.get(url + "/_sim/gzip") as r:
        assert r.headers["Content-Encoding"] == "gzip"
        relayed = await r.read()
    assert relayed == direct and gzip.decompress(relayed) == gzip_plain_body()
    async with http.get(url + "/_sim/headers") as r:
        assert "X-Hop" not in r.headers and "Keep-Alive" not in r.headers
        assert "Upgrade" not in r.headers and "Trailer" not in r.headers
        assert r.headers["X-End"] == "1" and len(r.headers.getall("Set-Cookie")) == 2


async def test_block_and_open_proxy_refusals(
    gk: tuple[Proc, str, str], engine: tuple[Proc, str], http: aiohttp.ClientSession
) -> None:
    """Blocked routes and absolute-form targets are answered by gatekeeper, never forwarded."""
    _, url, _ = gk
    await http.post(engine[1] + "/_sim/reset")
    async with http.post(url + "/batch-generate", json={"items": [GEN]}) as r:
        assert r.status == 410 and (await r.json())["reason"] == "blocked"
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {engine[1]}/_sim/echo HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 400")
    requests = (await get_json(http, engine[1] + "/_sim/stats"))["requests"]
    requests.pop("GET /", None)  # gatekeeper's own upstream probe may land meanwhile
    assert requests == {}


@pytest.mark.parametrize("action", ["admit", "queue"])
@pytest.mark.parametrize(
    "path", ["/generate/stream", "//generate", "/generate/", "/generate;x", "/./generate"]
)
async def test_every_way_to_start_a_generation_is_admitted_once(
    path: str,
    action: str,
    request: pytest.FixtureRequest,
    engine: tuple[Proc, str],
    http: aiohttp.ClientSession,
) -> None:
    """5 at once on a work endpoint or a non-normal spelling of it: the engine runs one at
    a time (admit: one, the rest 503; queue: all five, one after another)."""
    _, url, admin = request.getfixturevalue("gk" if action == "admit" else "gk_queue")
    await http.post(engine[1] + "/_sim/reset")
    host, port = url.removeprefix("http://").split(":")

    # admit: the first song outlasts the others' arrival; queue: all five run in turn.
    seconds = 0.5 if action == "admit" else 0.2

    async def one(i: int) -> bytes:
        # Five different songs: identical ones would (rightly) be coalesced into one job.
        body = json.dumps({**GEN, "lyrics": f"song {i}", "seconds": seconds}).encode()
        # Raw bytes: aiohttp's client would normalise the path before sending it.
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return data

    async def counts() -> tuple[float, float]:
        async with http.get(admin + "/metrics") as r:
            text = await r.text()

        def value(labels: str) -> float:
            m = re.search(r"^gatekeeper_requests_total\{" + labels + r"\} ([0-9.e+]+)$", text, re.M)
            return float(m.group(1)) if m else 0.0

        gated = sum(
            value(f'outcome="{outcome}",route="generate"')
            for outcome in ("admitted", "rejected", "queued", "coalesced")
        )
        return gated, value('outcome="passed",route="default"')

    # A generation left running by an earlier test (cancel mode frees the slot while the
    # simulator keeps computing) is counted in the peak; ours may add at most one.
    leftover = (await get_json(http, engine[1] + "/_sim/stats"))["active_generations"]
    before = await counts()
    answers = await asyncio.gather(*(one(i) for i in range(5)))
    after = await counts()
    assert after[0] - before[0] == 5, [a[:60] for a in answers]  # all 5 went through the gate
    assert after[1] == before[1]  # none passed around it
    if action == "queue":  # each waited and got the engine's own answer (it may 404 a spelling)
        heads = [a.partition(b"\r\n\r\n")[0] for a in answers]
        assert not any(b"X-Gatekeeper-Reason" in h for h in heads), heads
    st = await get_json(http, engine[1] + "/_sim/stats")
    assert st["peak_active_generations"] <= leftover + 1, st
    await wait_in_flight(http, admin, 0)


async def test_hysteresis_through_file_source(
    engine: tuple[Proc, str], tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A fire drill through the readings file: cpu trips at >90, holds at 80, clears under 75."""
    res = tmp_path / "res.json"
    res.write_text('{"cpu_percent": 10, "memory_percent": 10}')
    text = rules(BASE, resources_file(res), ADMIT_ROUTES)
    proc, url, _ = start_gatekeeper(tmp_path, text, engine[1])
    try:

        async def decision(cpu: float) -> tuple[int, str | None]:
            res.write_text(json.dumps({"cpu_percent": cpu, "memory_percent": 10}))
            await asyncio.sleep(0.4)
            async with http.post(url + "/generate", json={**GEN, "seconds": 0.05}) as r:
                await r.read()
                return r.status, r.headers.get("X-Gatekeeper-Reason")

        assert await decision(95) == (503, "cpu")
        assert await decision(80) == (503, "cpu")
        assert await decision(70) == (200, None)
    finally:
        proc.stop()


@pytest.mark.slow
def test_rss_bounded_while_streaming_1gib(engine: tuple[Proc, str], tmp_path: Path) -> None:
    """A 1 GiB download and a 1 GiB upload pass with gatekeeper's RSS growing < 20 MiB."""
    text = rules(
        BASE,
        resources_file(tmp_path / "calm.json"),
        ADMIT_ROUTES,
        {"limits": {"max_body_bytes": 2147483648}},
    )
    proc, url, _ = start_gatekeeper(tmp_path, text, engine[1])
    ps = psutil.Process(proc.proc.pid)
    size = 1 << 30
    peak = [ps.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], ps.memory_info().rss)
            time.sleep(0.02)

    import httpx

    base = ps.memory_info().rss
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        digest = hashlib.sha256()
        got = 0
        t0 = time.monotonic()
        with httpx.Client(timeout=60) as c, c.stream("GET", f"{url}/download?bytes={size}") as r:
            for chunk in r.iter_raw(1 << 20):
                got += len(chunk)
        down_s = time.monotonic() - t0

        def body() -> Iterator[bytes]:
            block = b"\xa5" * (1 << 20)
            for _ in range(size >> 20):
                digest.update(block)
                yield block

        t0 = time.monotonic()
        with httpx.Client(timeout=60) as c:
            answer = c.post(f"{url}/upload", content=body()).json()
        up_s = time.monotonic() - t0
    finally:
        stop.set()
        sampler.join()
        proc.stop()
    assert got == size
    assert answer == {"bytes": size, "sha256": digest.hexdigest()}
    growth = (peak[0] - base) / (1 << 20)
    print(
        f"\n1 GiB down {size / down_s / 1e6:.0f} MB/s, up {size / up_s / 1e6:.0f} MB/s; "
        f"gatekeeper RSS {base / (1 << 20):.0f} MiB, peak growth {growth:.1f} MiB"
    )
    assert growth < 20
