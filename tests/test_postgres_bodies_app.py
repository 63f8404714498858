"""A box that claims a job whose large body another box keeps, in process (issue #21,
``jobs.service_bodies``), on a real PostgreSQL: the taking box is a store of the same
schema whose registered address is a relay the test controls. A fetch broken off
mid-body gives the job back (queued again, nothing sent to the engine, the slot
released exactly once) and the next claim runs it with the whole body, once; a taking
box that answers ``410 body_gone`` ends the job ``body_lost``, engine untouched."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from echo_engine import EchoEngine
from pgserver import PgServer
from prometheus_client import generate_latest
from support import eventually, metric, poll, resources_file
from test_postgres_shared import add

from gatekeeper.app.wiring import build_proxy_app, create_state
from gatekeeper.config import load_config
from gatekeeper.core.lease import Lease
from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.bodyrelay import BODY_PATH
from gatekeeper.jobs.postgres import PostgresJobStore

pytestmark = pytest.mark.slow  # a PostgreSQL server

ServerFactory = Callable[..., Awaitable[TestServer]]
ClientFactory = Callable[..., Awaitable[TestClient]]
BODY = os.urandom(3 * 1024 * 1024)


class Relay:
    """The taking box's body relay, as the test wants it to answer."""

    def __init__(self) -> None:
        self.mode = "half"
        self.asked: list[str] = []

    async def serve(self, request: web.Request) -> web.StreamResponse:
        self.asked.append(f"{self.mode} {request.match_info['box']}")
        if self.mode == "gone":
            return web.json_response({"reason": "body_gone", "detail": "-"}, status=410)
        out = web.StreamResponse(headers={"Content-Length": str(len(BODY))})
        await out.prepare(request)
        if self.mode == "whole":
            await out.write(BODY)
            await out.write_eof()
            return out
        await out.write(BODY[: len(BODY) // 2])  # half, then the connection drops
        assert request.transport is not None
        request.transport.abort()
        return out


async def test_a_fetch_broken_off_gives_the_job_back_and_a_gone_body_is_lost(
    aiohttp_server: ServerFactory,
    aiohttp_client: ClientFactory,
    pg_server: PgServer,
    pg_schema: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Box A (a store) takes a 3 MiB body; box B (in process, idle) claims it, its fetch
    breaks off mid-body: the job is queued again, B's engine got nothing, B's slot is
    free; the relay then answers whole: B runs the job once with the exact bytes. A
    second job whose body A says it has no more ends ``body_lost``; no slot was ever
    released twice."""
    relay = Relay()
    fake = web.Application()
    fake.router.add_get(f"{BODY_PATH}/{{box}}/{{job}}", relay.serve)
    relay_server = await aiohttp_server(fake)
    a = PostgresJobStore.open(
        tmp_path / "a",
        dsn=pg_server.dsn,
        schema=pg_schema,
        max_body_bytes=10,
        address=str(relay_server.make_url("")).rstrip("/"),
    )
    engine = EchoEngine()
    engine_server = await aiohttp_server(engine.app())
    monkeypatch.setenv("GK_TEST_APP_DSN", pg_server.dsn)
    doc: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:1",
        "upstream": {"url": str(engine_server.make_url("")).rstrip("/")},
        "admission": {"max_in_flight": 1, **resources_file(tmp_path / "calm.json")["admission"]},
        "jobs": {
            "min_free_bytes": 0,
            "store": "postgres",
            "postgres": {"dsn_env": "GK_TEST_APP_DSN", "schema": pg_schema},
        },
    }
    st = await create_state(load_config(yaml.safe_dump(doc)), state_dir=tmp_path / "b")
    st.set_upstream_up(True)
    await aiohttp_client(build_proxy_app(st, monitor=False, probe=False))
    try:
        job = add(a, BODY)

        def state() -> tuple[JobState, str | None]:
            row = a.get(job.id)
            assert row is not None
            return row.state, row.reason

        assert await eventually(lambda: len(relay.asked) >= 1, 10)
        # Given back within the backoff's second: queued, no engine request, slot free.
        assert await eventually(lambda: state() == (JobState.QUEUED, None), 0.9)
        assert await eventually(lambda: st.gate.in_flight == 0, 2)
        assert engine.posts("/") == []
        assert relay.asked == [f"half {a.box}"]
        relay.mode = "whole"
        assert await eventually(lambda: state() == (JobState.DONE, None), 15), state()
        assert [len(s.body) for s in engine.posts("/")] == [len(BODY)]
        assert engine.posts("/")[0].body == BODY  # once, whole
        assert len(relay.asked) == 2  # the broken fetch, then the whole one
        relay.mode = "gone"
        lost = add(a, BODY)
        assert await eventually(lambda: a.get(lost.id).state is JobState.FAILED, 10)  # type: ignore[union-attr]
        assert a.get(lost.id).reason == "body_lost"  # type: ignore[union-attr]
        assert len(engine.posts("/")) == 1
        assert await eventually(lambda: st.gate.in_flight == 0, 5)
        assert st.gate.repeat_releases == 0
        text = generate_latest(st.metrics.registry).decode()
        for result, n in (("fetched", 1), ("given_back", 1), ("lost", 1)):
            assert metric(text, f'gatekeeper_body_fetches_total{{result="{result}"}}') == n
        bodies = tmp_path / "b" / "bodies"
        assert not [p for p in bodies.iterdir() if p.name.startswith((job.id, lost.id))]
    finally:
        a.close()


async def test_a_job_queued_again_elsewhere_waits_again_in_its_taking_box_view(
    aiohttp_client: ClientFactory,
    pg_server: PgServer,
    pg_schema: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Box A (in process, its one slot held) takes an async job; box B (a store) claims
    it, so A shows it running on B; B gives it back (its body's fetch failed, or a sweep
    queued it again): A's view follows the database back to ``queued`` with a place,
    not "running on B" until the next claim."""
    monkeypatch.setenv("GK_TEST_APP_DSN", pg_server.dsn)
    doc: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:1",
        "upstream": {"url": "http://127.0.0.1:9"},  # A never runs it: its slot is held
        "admission": {"max_in_flight": 1, **resources_file(tmp_path / "calm.json")["admission"]},
        "jobs": {
            "min_free_bytes": 0,
            "store": "postgres",
            "postgres": {"dsn_env": "GK_TEST_APP_DSN", "schema": pg_schema},
        },
        "routes": [{"name": "gen", "match": {"path": "/generate"}, "action": "queue"}],
    }
    st = await create_state(load_config(yaml.safe_dump(doc)), state_dir=tmp_path / "a")
    st.set_upstream_up(True)
    held = st.gate.try_admit("gen", st.clock())
    assert isinstance(held, Lease)
    client = await aiohttp_client(build_proxy_app(st, monitor=False, probe=False))
    b = PostgresJobStore.open(tmp_path / "b", dsn=pg_server.dsn, schema=pg_schema)
    try:
        async with client.post("/generate", data=b"{}", headers={"Prefer": "respond-async"}) as r:
            assert r.status == 202, await r.text()
            job = (await r.json())["id"]

        async def view() -> dict[str, Any]:
            async with client.get(f"/_gatekeeper/jobs/{job}") as r:
                assert r.status == 200
                got: dict[str, Any] = await r.json()
                return got

        claimed = b.claim_next(1.0)
        assert claimed is not None and claimed.id == job
        seen: list[dict[str, Any]] = []

        async def shows(state: str) -> bool:
            seen.append(await view())
            return seen[-1]["state"] == state

        await poll(lambda: shows("running"), timeout=10)
        assert seen[-1]["state"] == "running"
        assert b.give_back(job) is not None
        await poll(lambda: shows("queued"), timeout=10)
        assert seen[-1].get("position") == 1, seen[-1]
    finally:
        held.release()
        b.close()
