"""Restarts lose nothing (issue #18 §4, §5): the real ``gatekeeper run``, restarted.

- An async job's body is replayed after a restart byte for byte with its head: a
  gzip or deflate body as the client compressed it, and an empty body too (it was
  lost on every restart: ``failed body_lost``, the body file being written only
  for a non-empty body).
- Restored jobs wait for the engine: a gatekeeper restarted while the engine is
  still down dispatches nothing before a probe has seen the engine up (the oldest
  job used to be sent at once and end ``failed upstream_unavailable``).

The engine is ``echo_engine.EchoEngine`` on a real port of this process: it records
the exact bytes and headers of each request and can be stopped and started again.
Processes are started and stopped in threads: this loop serves the engine meanwhile.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from echo_engine import EchoEngine
from support import Proc, free_port, poll, rules, start_gatekeeper, wait_output

# No process of a test (engine, gatekeepers) logged a traceback.
pytestmark = pytest.mark.usefixtures("no_traceback")

JOBS = "/_gatekeeper/jobs"
ASYNC = {"Prefer": "respond-async"}

BASE = {
    "admission": {
        "max_in_flight": 1,
        "expected_seconds": 1,
        "sample_interval": 0.1,
        "queue": {"per_client": 20},
    },
    "upstream": {"probe": {"interval": 0.2, "timeout": 0.5}},
    # A running job is not waited for: the stop interrupts it, the queue stays on disk.
    "shutdown": {"drain_timeout": "1s", "linger": "0s"},
}


@pytest.fixture
async def echo() -> Any:
    e = EchoEngine(free_port())
    yield e
    e.hold.set()
    await e.stop()


async def run_gatekeeper(
    tmp_path: Path, procs: list[Proc], engine: str, state: Path
) -> tuple[Proc, str]:
    proc, url, _ = await asyncio.to_thread(
        start_gatekeeper, tmp_path, rules(BASE), engine, "--state-dir", str(state)
    )
    procs.append(proc)
    return proc, url


async def sigterm(proc: Proc) -> None:
    assert await asyncio.to_thread(proc.stop, 20.0) == 0, proc.output()


async def submit(http: aiohttp.ClientSession, url: str, body: bytes | None, **headers: str) -> Any:
    async with http.post(url + "/generate/song", data=body, headers={**ASYNC, **headers}) as r:
        assert r.status == 202, await r.text()
        return await r.json()


async def job(http: aiohttp.ClientSession, url: str, job_id: str) -> Any:
    async with http.get(f"{url}{JOBS}/{job_id}") as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def until_done(http: aiohttp.ClientSession, url: str, ids: list[str]) -> None:
    async def done() -> bool:
        views = [await job(http, url, i) for i in ids]
        for v in views:
            assert v["state"] in ("queued", "running", "done"), (v["state"], v["reason"])
        return all(v["state"] == "done" for v in views)

    await poll(done, 20.0)


async def test_restored_async_jobs_send_the_exact_bytes_and_an_empty_body(
    tmp_path: Path, procs: list[Proc], echo: EchoEngine, http: aiohttp.ClientSession
) -> None:
    """Jobs queued behind a running one, gatekeeper stopped with SIGTERM and started
    again: each queued body reaches the engine as it was sent, the empty one too."""
    plain = json.dumps({"lyrics": "la " * 300, "description": "pop"}).encode()
    gz, zl = gzip.compress(plain, mtime=0), zlib.compress(plain)
    upstream = await echo.serve()
    state = tmp_path / "state"
    first, url = await run_gatekeeper(tmp_path, procs, upstream, state)

    echo.hold.clear()  # the first job holds the slot: the others wait in the queue
    running = await submit(http, url, b'{"lyrics": "first"}')
    await asyncio.wait_for(echo.arrived.wait(), 10)
    queued = [
        await submit(http, url, gz, **{"Content-Encoding": "gzip", "X-Song": "gz"}),
        await submit(http, url, zl, **{"Content-Encoding": "deflate", "X-Song": "zl"}),
        await submit(http, url, None, **{"X-Song": "empty"}),
    ]
    assert [v["state"] for v in queued] == ["queued"] * 3
    ids = [v["id"] for v in queued]

    await sigterm(first)  # graceful: the queue stays on disk
    await wait_output(first, "gatekeeper stopped")
    echo.seen.clear()
    echo.hold.set()
    _, url = await run_gatekeeper(tmp_path, procs, upstream, state)
    await until_done(http, url, ids)
    assert (await job(http, url, running["id"]))["reason"] == "interrupted"

    got = {s.headers.get("X-Song"): s for s in echo.posts("/generate/")}
    assert sorted(got) == ["empty", "gz", "zl"]
    assert got["gz"].body == gz and got["gz"].headers["Content-Encoding"] == "gzip"
    assert got["gz"].headers["Content-Length"] == str(len(gz))
    assert got["zl"].body == zl and got["zl"].headers["Content-Encoding"] == "deflate"
    assert got["empty"].body == b"" and "Content-Encoding" not in got["empty"].headers

    # The listener `gatekeeper run` builds passes a pass route's body as sent too.
    headers = {"Content-Encoding": "gzip", "X-Song": "pass"}
    async with http.post(url + "/elsewhere", data=gz, headers=headers) as r:
        assert r.status == 200, await r.text()
    (passed,) = echo.posts("/elsewhere")
    assert passed.body == gz and passed.headers["Content-Encoding"] == "gzip"


async def test_restored_jobs_wait_for_the_engine(
    tmp_path: Path, procs: list[Proc], echo: EchoEngine, http: aiohttp.ClientSession
) -> None:
    """gatekeeper restarted while the engine is down: nothing is sent before a probe
    has seen the engine up, no job fails; once the engine answers, every job runs."""
    upstream = echo.url
    state = tmp_path / "state"
    first, url = await run_gatekeeper(tmp_path, procs, upstream, state)
    await wait_output(first, "is DOWN")
    ids = [(await submit(http, url, f"song {i}".encode()))["id"] for i in range(3)]
    await sigterm(first)

    second, url = await run_gatekeeper(tmp_path, procs, upstream, state)
    await wait_output(second, "is DOWN")
    await asyncio.sleep(0.5)  # more probes say down: still nothing may fail
    views = [await job(http, url, i) for i in ids]
    assert [(v["state"], v.get("reason")) for v in views] == [("queued", None)] * 3, views

    await echo.serve()
    await until_done(http, url, ids)
    assert sorted(s.body for s in echo.posts("/generate/")) == [b"song 0", b"song 1", b"song 2"]
