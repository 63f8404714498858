"""One box on the PostgreSQL store, in-process (issue #21): jobs run through it, and a
database that stops answering turns new submissions into ``503 store_unavailable`` with
``Retry-After`` until it answers again, by itself."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from pgserver import PgServer
from support import resources_file

from gatekeeper.app.wiring import build_proxy_app, create_state
from gatekeeper.config import load_config
from gatekeeper.enginesim import SimConfig, create_app

pytestmark = pytest.mark.slow  # a PostgreSQL server

ServerFactory = Callable[..., Awaitable[TestServer]]
ClientFactory = Callable[..., Awaitable[TestClient]]
JOBS = "/_gatekeeper/jobs"
ASYNC = {"Prefer": "respond-async"}


@pytest.fixture
async def engine(aiohttp_server: ServerFactory) -> TestServer:
    return await aiohttp_server(
        create_app(SimConfig(seconds=0.05, burn_cpu=False, memory_mb=0, progress_interval=0.05))
    )


async def until(check: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    """Await ``check`` until true or ``timeout`` seconds; its last value."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _server_pids(server: PgServer) -> list[int]:
    pid = int((server.data / "postmaster.pid").read_text().split()[0])
    kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [pid, *(int(p) for p in kids.stdout.split())]


async def test_a_box_on_postgres_runs_jobs_and_refuses_while_the_store_is_away(
    engine: TestServer,
    aiohttp_client: ClientFactory,
    pg_server: PgServer,
    pg_schema: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """jobs.store: postgres: an async job is accepted, runs and its result is served; with
    the database frozen a submission is answered 503 store_unavailable (JSON, Retry-After);
    once it answers again submissions are accepted again without a restart."""
    monkeypatch.setenv("GK_TEST_APP_DSN", pg_server.dsn)
    doc: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:1",
        "upstream": {"url": str(engine.make_url("")).rstrip("/")},
        "admission": {
            "max_in_flight": 1,
            **resources_file(tmp_path / "calm.json")["admission"],
        },
        "jobs": {
            "min_free_bytes": 0,
            "store": "postgres",
            "postgres": {"dsn_env": "GK_TEST_APP_DSN", "schema": pg_schema, "timeout": "500ms"},
        },
        "routes": [{"name": "big", "match": {"path": "/download"}, "action": "queue"}],
    }
    st = await create_state(load_config(yaml.safe_dump(doc)), state_dir=tmp_path / "state")
    st.set_upstream_up(True)  # no probe runs here
    client = await aiohttp_client(build_proxy_app(st, monitor=False, probe=False))

    async with client.get("/download?bytes=1000", headers=ASYNC) as r:
        assert r.status == 202, await r.text()
        job = (await r.json())["id"]

    async def done() -> bool:
        async with client.get(f"{JOBS}/{job}") as r:
            return bool((await r.json())["state"] == "done")

    assert await until(done, timeout=20)
    async with client.get(f"{JOBS}/{job}/result") as r:
        assert r.status == 200 and len(await r.read()) == 1000

    pids = _server_pids(pg_server)
    for p in pids:
        os.kill(p, signal.SIGSTOP)
    try:
        async with client.get("/download?bytes=10", headers=ASYNC) as r:
            body = await r.json()
            assert (r.status, body["reason"]) == (503, "store_unavailable"), body
            assert int(r.headers["Retry-After"]) >= 1 and body["retry_after"] >= 1
            assert body["detail"]
    finally:
        for p in pids:
            os.kill(p, signal.SIGCONT)

    async def accepted() -> bool:
        async with client.get("/download?bytes=10", headers=ASYNC) as r:
            return r.status == 202

    assert await until(accepted, timeout=30)
