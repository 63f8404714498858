"""A gradio route against a scripted Gradio-protocol server: the slot's exact life.

The fake app speaks Gradio 5's queue protocol (join -> event_id, one SSE stream
per session with estimation / process_starts / process_completed /
close_stream) and lets each test decide when an event completes or the stream
breaks, so every path that must release the slot exactly once is driven
deterministically. The real Gradio app is tested in test_gradio_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from support import ProductionLikeServer, connections_closed, eventually, settle

from gatekeeper.app.state import AppState
from gatekeeper.app.wiring import build_proxy_app, create_state
from gatekeeper.config import Config, load_config


@dataclass
class FakeEvent:
    event_id: str
    session: str
    fn_index: int
    finish: asyncio.Event = field(default_factory=asyncio.Event)
    success: bool = True
    done: bool = False  # reported completed (test_gradio_waiting_route's stream)


class FakeGradio:
    """Gradio 5 routes under /gradio_api, fn 0 = generate_song (gated), fn 1 = echo."""

    def __init__(self) -> None:
        self.events: dict[str, FakeEvent] = {}
        self.joins: list[dict[str, Any]] = []
        self.direct: list[str] = []
        self.cut = asyncio.Event()  # break every open queue/data stream
        self.new_event = asyncio.Event()
        self.beats = 0  # heartbeats written: a clock the test can wait on
        self.app = web.Application()
        r = self.app.router
        r.add_get("/config", self.config)
        r.add_post("/gradio_api/queue/join", self.join)
        r.add_get("/gradio_api/queue/data", self.data)
        r.add_get("/gradio_api/heartbeat/{session}", self.heartbeat)
        r.add_post("/gradio_api/run/{api}", self.run)
        r.add_post("/gradio_api/call/{api}", self.call)
        r.add_get("/gradio_api/call/{api}/{event_id}", self.call_stream)
        r.add_get("/", self.page)

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text="<html>gradio</html>", content_type="text/html")

    async def config(self, request: web.Request) -> web.Response:
        deps = [{"id": 0, "api_name": "generate_song"}, {"id": 1, "api_name": "echo"}]
        return web.json_response({"dependencies": deps})

    async def join(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.joins.append(body)
        eid = uuid.uuid4().hex
        self.events[eid] = FakeEvent(eid, body["session_hash"], body["fn_index"])
        self.new_event.set()
        return web.json_response({"event_id": eid})

    async def call(self, request: web.Request) -> web.Response:
        """POST /call/<api>: the REST flow; without a session_hash the event is its own."""
        eid = uuid.uuid4().hex
        self.events[eid] = FakeEvent(eid, eid, 0)
        return web.json_response({"event_id": eid})

    async def call_stream(self, request: web.Request) -> web.StreamResponse:
        e = self.events[request.match_info["event_id"]]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"event: generating\ndata: [null]\n\n")
        cut = asyncio.ensure_future(self.cut.wait())
        done = asyncio.ensure_future(e.finish.wait())
        await asyncio.wait((cut, done), return_when=asyncio.FIRST_COMPLETED)
        cut.cancel()
        done.cancel()
        if self.cut.is_set():
            assert request.transport is not None
            request.transport.abort()  # the engine breaks the stream mid-call
            return resp
        name = b"complete" if e.success else b"error"
        await resp.write(b"event: " + name + b'\ndata: ["song.wav"]\n\n')
        return resp

    async def run(self, request: web.Request) -> web.Response:
        self.direct.append(request.match_info["api"])
        return web.json_response({"data": ["ran"]})

    async def heartbeat(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        while True:
            await resp.write(b"data: ALIVE\n\n")
            self.beats += 1
            await asyncio.sleep(0.2)

    async def data(self, request: web.Request) -> web.StreamResponse:
        session = request.query["session_hash"]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        mine = [e for e in self.events.values() if e.session == session]
        for rank, e in enumerate(mine):
            await resp.write(frame(msg="estimation", event_id=e.event_id, rank=rank))
            await resp.write(frame(msg="process_starts", event_id=e.event_id, eta=1.0))
        for e in mine:
            cut = asyncio.ensure_future(self.cut.wait())
            done = asyncio.ensure_future(e.finish.wait())
            await asyncio.wait((cut, done), return_when=asyncio.FIRST_COMPLETED)
            cut.cancel()
            done.cancel()
            if self.cut.is_set():
                assert request.transport is not None
                request.transport.abort()  # the engine breaks the stream mid-job
                return resp
            await resp.write(
                frame(
                    msg="process_completed",
                    event_id=e.event_id,
                    success=e.success,
                    output={"data": ["song.wav"]},
                )
            )
        await resp.write(frame(msg="close_stream", event_id=None))
        return resp


def frame(**msg: Any) -> bytes:
    return b"data: " + json.dumps(msg).encode() + b"\n\n"


RULES = {
    "listen": "127.0.0.1:0",
    "admin_listen": "127.0.0.1:1",
    "admission": {"expected_seconds": 60},
    "routes": [
        {
            "name": "song",
            "match": {"path": "/**", "api_name": ["generate_song"]},
            "action": "gradio",
        }
    ],
}


@dataclass
class Rig:
    fake: FakeGradio
    state: AppState
    base: str
    http: aiohttp.ClientSession
    server: ProductionLikeServer

    @property
    def in_flight(self) -> int:
        return self.state.gate.in_flight

    async def join(self, session: str, fn_index: int = 0, **extra: Any) -> aiohttp.ClientResponse:
        body = {"fn_index": fn_index, "session_hash": session, "data": ["la"], **extra}
        resp = await self.http.post(self.base + "/gradio_api/queue/join", json=body)
        await resp.read()
        return resp

    async def stream(self, session: str) -> aiohttp.ClientResponse:
        return await self.http.get(self.base + f"/gradio_api/queue/data?session_hash={session}")


@pytest.fixture
async def rig(aiohttp_server: Any, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    fake = FakeGradio()
    upstream = await aiohttp_server(fake.app)
    extra = getattr(request, "param", {})
    cfg_doc = {**RULES, "upstream": {"url": str(upstream.make_url("")).rstrip("/")}}
    for k, v in extra.items():
        cfg_doc[k] = v
    cfg: Config = load_config(yaml.safe_dump(cfg_doc))
    st = await create_state(cfg)
    for engine in st.gate.engine_up or {"default": None}:
        st.gate.engine_up[engine] = True  # no probe here: the engine is up (waiters start)
    server = ProductionLikeServer(build_proxy_app(st, monitor=False, probe=False))
    await server.start_server()
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        try:
            yield Rig(fake, st, str(server.make_url("")).rstrip("/"), http, server)
        finally:
            await server.close()


async def test_slot_from_join_to_process_completed(rig: Rig) -> None:
    """A gated join takes the slot; it is held while the stream reports the job running
    and freed by that event's process_completed, not by the join's answer."""
    resp = await rig.join("s1")
    assert resp.status == 200
    eid = (json.loads(await resp.read()))["event_id"]
    assert rig.in_flight == 1
    stream = await rig.stream("s1")
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    assert (await stream.content.readuntil(b"\n\n")).startswith(b"data: {")  # estimation
    # process_starts relayed: gatekeeper has read both messages before it (and freed nothing)
    assert b'"process_starts"' in await stream.content.readuntil(b"\n\n")
    assert rig.in_flight == 1  # running: estimation and process_starts do not free it
    assert rig.state.gate.running()[0].route == "song"
    rig.fake.events[eid].finish.set()
    rest = await stream.read()
    assert b'"process_completed"' in rest and b'"close_stream"' in rest
    assert rig.in_flight == 0
    assert rig.state.gate.estimator.samples == 1  # the whole job's duration is learned


NO_WAITING = {"admission": {"expected_seconds": 60, "queue": {"max_waiting": 0}}}


@pytest.mark.parametrize("rig", [NO_WAITING], indirect=True)
async def test_a_second_join_is_refused_with_its_detail_in_the_session_stream(rig: Rig) -> None:
    """One generation at a time and no room to wait (``max_waiting: 0``; issue #19: a
    join that may wait, waits): the second gated join never reaches the app. It is
    answered with gatekeeper's own event id, and the session's queue/data stream (which
    the client opens next) reports that event failed with the refusal's detail, the way
    Gradio reports a gr.Error; a light function still passes meanwhile."""
    first = await rig.join("s1")
    assert first.status == 200
    second = await rig.join("s2")
    assert second.status == 200
    assert second.headers["X-Gatekeeper-Reason"] == "queue_full"
    assert int(second.headers["Retry-After"]) > 0
    eid = json.loads(await second.read())["event_id"]
    assert eid.startswith("gatekeeper-")
    told = await (await rig.stream("s2")).read()
    msgs = [json.loads(line[6:]) for line in told.split(b"\n\n") if line.startswith(b"data: ")]
    assert [m["msg"] for m in msgs] == ["process_completed", "close_stream"]
    assert msgs[0]["event_id"] == eid and msgs[0]["success"] is False
    assert "queue is full" in msgs[0]["output"]["error"] and "请" in msgs[0]["output"]["error"]
    assert len(rig.fake.joins) == 1
    light = await rig.join("s2", fn_index=1)
    assert light.status == 200 and len(rig.fake.joins) == 2
    assert rig.in_flight == 1
    page = await rig.http.get(rig.base + "/")
    assert page.status == 200 and "gradio" in await page.text()
    counts = rig.state.counters.outcomes
    assert counts["admitted"] == 1 and counts["rejected"] == 1 and counts["passed"] >= 2
    assert rig.state.counters.rejections_by_reason == {"queue_full": 1}


async def test_tab_closed_mid_job_keeps_the_slot_until_the_app_finishes(rig: Rig) -> None:
    """The browser leaves while its job runs: gatekeeper keeps reading the session's
    stream (and its heartbeat) itself; the slot frees when process_completed arrives."""
    eid = json.loads(await (await rig.join("s1")).read())["event_id"]
    stream = await rig.stream("s1")
    beat = await rig.http.get(rig.base + "/gradio_api/heartbeat/s1")
    await stream.content.readuntil(b"\n\n")
    await beat.content.readuntil(b"\n\n")
    stream.close()  # the tab closes: both connections go
    beat.close()
    assert await eventually(lambda: connections_closed(rig.server))  # gatekeeper saw them go
    # Two more heartbeats of the app reached gatekeeper, which has nobody to relay them to.
    beats = rig.fake.beats
    assert await eventually(lambda: rig.fake.beats >= beats + 2)
    await settle()
    assert rig.in_flight == 1
    rig.fake.events[eid].finish.set()
    assert await eventually(lambda: rig.in_flight == 0)


async def test_engine_cutting_the_stream_releases_the_slot_once(rig: Rig) -> None:
    """The app breaks queue/data mid-job: the event ends (stream_cut), the slot frees
    exactly once, and a later completion message for it changes nothing."""
    await rig.join("s1")
    stream = await rig.stream("s1")
    await stream.content.readuntil(b"\n\n")
    rig.fake.cut.set()
    with pytest.raises(aiohttp.ClientError):
        await stream.read()
    assert await eventually(lambda: rig.in_flight == 0)
    assert rig.state.gradio is not None and len(rig.state.gradio) == 0
    assert rig.state.gate.estimator.samples == 0  # a broken job teaches no duration


async def test_unknown_event_ids_and_foreign_sessions_change_nothing(rig: Rig) -> None:
    """A completion for an event id gatekeeper never admitted (another session's, a
    light function's) does not free the running job's slot."""
    await rig.join("s1")
    light = json.loads(await (await rig.join("s2", fn_index=1)).read())["event_id"]
    rig.fake.events[light].finish.set()
    other = await rig.stream("s2")
    assert b'"close_stream"' in await other.read()
    assert rig.in_flight == 1


async def test_stop_ends_idle_session_streams_at_once(rig: Rig) -> None:
    """Gradio's heartbeat and queue/data streams never end by themselves: at stop those
    of sessions with no running generation are ended, not waited for (aiohttp would wait
    its shutdown timeout for each, twice)."""
    beat = await rig.http.get(rig.base + "/gradio_api/heartbeat/idle")
    await beat.content.readuntil(b"\n\n")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with asyncio.timeout(5):
        await rig.server.close()
    assert loop.time() - t0 < 2.0
    beat.close()


async def test_malformed_joins_are_400_and_take_no_slot(rig: Rig) -> None:
    for body in (b"not json", b"[1]", b'{"fn_index": "zero", "session_hash": "s"}'):
        async with rig.http.post(
            rig.base + "/gradio_api/queue/join",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as r:
            assert r.status == 400
            doc = await r.json()
            assert doc["reason"] == "bad_gradio_request" and "Gradio join body" in doc["detail"]
    assert rig.fake.joins == [] and rig.in_flight == 0


async def test_an_event_never_heard_of_again_is_released_after_the_read_timeout(
    aiohttp_server: Any,
) -> None:
    """A join whose result nobody reads: the slot frees after upstream.timeouts.read,
    counted as an upstream timeout, not held forever."""
    fake = FakeGradio()
    upstream = await aiohttp_server(fake.app)
    doc = {
        **RULES,
        "upstream": {"url": str(upstream.make_url("")).rstrip("/"), "timeouts": {"read": "300ms"}},
    }
    st = await create_state(load_config(yaml.safe_dump(doc)))
    server = ProductionLikeServer(build_proxy_app(st, monitor=False, probe=False))
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            body = {"fn_index": 0, "session_hash": "s", "data": []}
            async with http.post(server.make_url("/gradio_api/queue/join"), json=body) as r:
                assert r.status == 200
            assert st.gate.in_flight == 1
            assert await eventually(lambda: st.gate.in_flight == 0, timeout=3)
            assert st.counters.upstream_errors_by_kind.get("timeout") == 1
    finally:
        await server.close()


def test_a_gradio_route_says_what_it_gates() -> None:
    """The startup log and `gatekeeper check` line of a gradio route."""
    cfg = load_config(yaml.safe_dump(RULES))
    assert cfg.routes[0].summary() == (
        "song: * /** gradio (gated: generate_song; direct calls block)"
    )
    every = load_config("routes: [{name: ui, match: {path: /**}, action: gradio}]")
    assert "gated: every queued function" in every.routes[0].summary()
