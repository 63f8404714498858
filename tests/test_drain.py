"""Graceful drain (issue #5 §2): real ``gatekeeper run`` and engine-sim processes, SIGTERM."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import time
import wave
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from support import Proc, poll, start_engine, start_gatekeeper

from gatekeeper.app import process as app_module
from gatekeeper.app.process import Gatekeeper
from gatekeeper.config import load_config

pytestmark = pytest.mark.slow

RULES = """
upstream:
  probe: {{interval: 200ms}}
admission:
  max_in_flight: 1
  sample_interval: 200ms
shutdown:
  drain_timeout: {drain_timeout}
  drain_log_interval: 500ms
  linger: {linger}
"""

SONG = {"lyrics": "[verse] 海风吹过夏天的街", "description": "pop, piano, 90 bpm"}


async def _finish(c: httpx.AsyncClient, engine: str) -> None:
    """End the engine's running song now (engine-sim's /_sim/finish): a song held for as
    long as the test's steps take, however slow the box."""

    async def ended() -> bool:
        return bool((await c.post(engine + "/_sim/finish")).json()["finished"] == 1)

    await poll(ended)


def wav_frames(body: bytes) -> int:
    with wave.open(io.BytesIO(body)) as w:
        return w.getnframes()


async def _running(c: httpx.AsyncClient, admin: str, n: int = 1) -> None:
    async def check() -> bool:
        return bool((await c.get(admin + "/status")).json()["in_flight"] == n)

    await poll(check)


async def _ready(c: httpx.AsyncClient, admin: str) -> None:
    async def check() -> bool:
        return (await c.get(admin + "/readyz")).status_code == 200

    await poll(check)


def _start(
    tmp_path: Path, procs: list[Proc], seconds: float, drain_timeout: str, linger: str = "0s"
) -> tuple[Proc, str, str]:
    gk, proxy, admin, _ = _start_with_engine(tmp_path, procs, seconds, drain_timeout, linger)
    return gk, proxy, admin


def _start_with_engine(
    tmp_path: Path, procs: list[Proc], seconds: float, drain_timeout: str, linger: str = "0s"
) -> tuple[Proc, str, str, str]:
    """``_start``, and the engine's URL last."""
    engine, upstream = start_engine(tmp_path, seconds=seconds)
    procs.append(engine)
    gk, proxy, admin = start_gatekeeper(
        tmp_path, RULES.format(drain_timeout=drain_timeout, linger=linger), upstream
    )
    procs.append(gk)
    return gk, proxy, admin, upstream


async def test_sigterm_lets_the_running_generation_finish(
    tmp_path: Path, procs: list[Proc]
) -> None:
    """SIGTERM mid-song: full WAV delivered, new songs 503 draining, passes served, exit 0."""
    # Held (an hour), ended below once every check during the drain is done.
    gk, proxy, admin, engine = _start_with_engine(tmp_path, procs, 3600.0, "30s")
    async with httpx.AsyncClient(timeout=30, trust_env=False) as c:
        await _ready(c, admin)
        song = asyncio.create_task(c.post(proxy + "/generate", json=SONG))
        await _running(c, admin)
        gk.signal(signal.SIGTERM)

        async def not_ready() -> bool:
            return (await c.get(admin + "/readyz")).status_code == 503

        await poll(not_ready, timeout=2.0)
        assert (await c.get(admin + "/readyz")).json()["reasons"] == ["draining"]

        refused = await c.post(proxy + "/generate", json=SONG)
        assert refused.status_code == 503
        assert refused.headers["X-Gatekeeper-Reason"] == "draining"
        assert int(refused.headers["Retry-After"]) > 0
        assert refused.json()["reason"] == "draining"

        progress = await c.get(proxy + "/progress")  # a pass route: the job's progress poll
        assert progress.status_code == 200
        assert [g["state"] for g in progress.json()["generations"]] == ["running"]
        assert gk.proc.poll() is None

        async def logged_twice() -> bool:  # drain_log_interval 500ms: it keeps saying so
            return gk.output().count("draining: waiting for 1 generation(s)") >= 2

        await poll(logged_twice)
        assert gk.proc.poll() is None
        await _finish(c, engine)
        resp = await song
        finished = time.monotonic()
        assert resp.status_code == 200
        assert len(resp.content) == int(resp.headers["Content-Length"])
        assert wav_frames(resp.content) > 0
    assert await asyncio.to_thread(gk.wait, 15) == 0
    exited = time.monotonic()
    assert exited >= finished
    out = gk.output()
    assert out.count("draining: waiting for 1 generation(s)") >= 2, out
    assert "drained: no generation running" in out
    assert "decision=rejected reason=draining" in out


async def test_result_download_works_during_linger(tmp_path: Path, procs: list[Proc]) -> None:
    """An SSE job's client fetches /result/{id} after "done": linger keeps it served."""
    gk, proxy, admin, engine = _start_with_engine(tmp_path, procs, 3600.0, "30s", "2s")
    async with httpx.AsyncClient(timeout=30, trust_env=False) as c:
        await _ready(c, admin)
        done: dict[str, Any] = {}

        async def stream() -> None:
            async with c.stream("POST", proxy + "/generate?stream=sse", json=SONG) as r:
                assert r.status_code == 200
                event = None
                async for line in r.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "done":
                        done.update(json.loads(line[6:]))

        job = asyncio.create_task(stream())
        await _running(c, admin)
        gk.signal(signal.SIGTERM)
        await _finish(c, engine)  # the song (held) ends while gatekeeper drains
        await job
        result = await c.get(proxy + done["url"])
        assert result.status_code == 200
        assert wav_frames(result.content) > 0
    assert await asyncio.to_thread(gk.wait, 15) == 0
    assert "shutdown.linger" in gk.output()


async def test_drain_timeout_expiry_exits_zero_with_a_warning(
    tmp_path: Path, procs: list[Proc]
) -> None:
    """A generation outliving shutdown.drain_timeout is cut; exit code 0, warning logged."""
    gk, proxy, admin = _start(tmp_path, procs, seconds=30.0, drain_timeout="1s")
    async with httpx.AsyncClient(timeout=30, trust_env=False) as c:
        await _ready(c, admin)
        song = asyncio.create_task(c.post(proxy + "/generate", json=SONG))
        await _running(c, admin)
        t0 = time.monotonic()
        gk.signal(signal.SIGTERM)
        assert await asyncio.to_thread(gk.wait, 10) == 0
        took = time.monotonic() - t0
        with pytest.raises(httpx.HTTPError):
            await song
    assert 1.0 <= took < 4.0, took
    out = gk.output()
    assert "WARNING" in out and "drain timeout (1s) reached with 1 generation(s)" in out


async def test_second_signal_exits_at_once(tmp_path: Path, procs: list[Proc]) -> None:
    """A second SIGTERM during the drain exits within a second or two with code 1."""
    gk, proxy, admin = _start(tmp_path, procs, seconds=30.0, drain_timeout="60s")
    async with httpx.AsyncClient(timeout=30, trust_env=False) as c:
        await _ready(c, admin)
        song = asyncio.create_task(c.post(proxy + "/generate", json=SONG))
        await _running(c, admin)
        gk.signal(signal.SIGTERM)

        async def draining() -> bool:
            return "draining: waiting" in gk.output()

        await poll(draining)
        t0 = time.monotonic()
        gk.signal(signal.SIGTERM)
        assert await asyncio.to_thread(gk.wait, 10) == 1
        took = time.monotonic() - t0
        with pytest.raises(httpx.HTTPError):
            await song
    assert took < 2.5, took
    out = gk.output()
    assert "second signal: exiting now" in out
    assert "Traceback" not in out and "Unclosed" not in out, out


async def test_sigterm_with_nothing_running_exits_at_once(
    tmp_path: Path, procs: list[Proc]
) -> None:
    """Idle: SIGTERM exits 0 without waiting for the drain timeout or the linger."""
    gk, _, admin = _start(tmp_path, procs, seconds=1.0, drain_timeout="60s", linger="30s")
    async with httpx.AsyncClient(timeout=30, trust_env=False) as c:
        await _ready(c, admin)
    t0 = time.monotonic()
    gk.signal(signal.SIGTERM)
    assert await asyncio.to_thread(gk.wait, 10) == 0
    assert time.monotonic() - t0 < 2.0


async def test_sigterm_with_an_open_pass_through_stream_exits_at_once(
    tmp_path: Path, procs: list[Proc]
) -> None:
    """Issue #18 §7: an engine's own SSE stream open on a pass route (a progress feed that
    never ends by itself) does not hold the stop: with nothing running, SIGTERM exits 0
    within 2 s (it waited 2 x the close grace, 20 s), and the stream's client sees it end."""
    gk, proxy, admin = _start(tmp_path, procs, seconds=1.0, drain_timeout="60s", linger="30s")
    async with httpx.AsyncClient(timeout=30, trust_env=False) as c:
        await _ready(c, admin)
        url = proxy + "/_sim/sse?events=100000&interval=0.5"
        async with c.stream("GET", url) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            lines = resp.aiter_lines()
            while "tick" not in await anext(lines):
                pass
            t0 = time.monotonic()
            gk.signal(signal.SIGTERM)
            assert await asyncio.to_thread(gk.wait, 30) == 0
            took = time.monotonic() - t0
            with pytest.raises((httpx.HTTPError, StopAsyncIteration)):
                while True:  # the rest of the stream ends (cut) instead of hanging
                    await asyncio.wait_for(anext(lines), 5)
    assert took < 2.0, f"stop took {took:.1f}s with only a pass-through stream open"
    assert "gatekeeper stopped" in gk.output()


async def test_sigterm_with_a_job_events_watcher_open_exits_at_once(
    tmp_path: Path, procs: list[Proc]
) -> None:
    """Issue #18 §7: a watcher of a queued async job's /events (the job waits for the next
    start: CPU over its threshold holds dispatch, nothing runs) does not hold the stop."""
    readings = tmp_path / "hot.json"
    readings.write_text('{"cpu_percent": 97, "memory_percent": 5}')
    rules = RULES.format(drain_timeout="60s", linger="0s").replace(
        "admission:\n", f"admission:\n  resources: {{source: file, file: {readings}}}\n", 1
    )
    engine, upstream = start_engine(tmp_path, seconds=1.0)
    procs.append(engine)
    gk, proxy, admin = start_gatekeeper(tmp_path, rules, upstream)
    procs.append(gk)
    async with httpx.AsyncClient(timeout=30, trust_env=False) as c:
        await _ready(c, admin)
        job = await c.post(proxy + "/generate", json=SONG, headers={"Prefer": "respond-async"})
        assert job.status_code == 202, job.text
        assert job.json()["state"] == "queued"
        async with c.stream("GET", proxy + job.headers["Location"] + "/events") as resp:
            lines = resp.aiter_lines()
            while "event: job" not in await anext(lines):
                pass
            t0 = time.monotonic()
            gk.signal(signal.SIGTERM)
            assert await asyncio.to_thread(gk.wait, 30) == 0
            took = time.monotonic() - t0
    assert took < 2.0, f"stop took {took:.1f}s with only a job's /events watcher open"


async def test_aiohttp_shutdown_timeout_does_not_cut_the_drain_short(
    aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With aiohttp's close grace far below the song length, drain + stop still deliver it."""
    monkeypatch.setattr(app_module, "CLOSE_GRACE_SECONDS", 0.05)
    finish = asyncio.Event()  # the song ends when the test says so, not after a sleep

    async def generate(request: web.Request) -> web.Response:
        await finish.wait()
        return web.Response(body=b"x" * 100_000)

    engine = web.Application()
    engine.router.add_post("/generate", generate)
    server = await aiohttp_server(engine)
    cfg = load_config(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n"
        f"upstream: {{url: '{server.make_url('')}'}}\n"
        "shutdown: {drain_timeout: 10s, linger: 0s}\n"
        f"jobs: {{dir: '{tmp_path / 'state'}'}}\n"  # not ./gatekeeper-state: no kept result
    )
    gk = Gatekeeper(cfg)
    await gk.start()
    try:
        async with httpx.AsyncClient(timeout=10, trust_env=False) as c:
            song = asyncio.create_task(c.post(gk.proxy_urls[0] + "/generate"))
            await _running(c, gk.admin_urls[0])
            drain = asyncio.create_task(gk.drain())
            await asyncio.sleep(0.2)  # four times the close grace: the drain must still wait
            assert not drain.done()
            finish.set()
            assert await drain is True
            await gk.stop()
            resp = await song
    finally:
        await gk.stop()
    assert resp.status_code == 200
    assert resp.content == b"x" * 100_000
