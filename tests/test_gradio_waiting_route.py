"""Waiting Gradio joins against the scripted Gradio-protocol server (issue #19): the
session stream gatekeeper writes, the event-id mapping both ways, and the race of a
waiting join forwarded just as the app closes the session's stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from support import ProductionLikeServer, connections_closed, eventually, settle
from test_gradio_route import RULES, FakeGradio, Rig, frame

from gatekeeper.app.wiring import build_proxy_app, create_state
from gatekeeper.config import load_config


class CancellingGradio(FakeGradio):
    """The scripted app, with Gradio's /cancel (it records the event id it was given) and
    a stream that reports only the events joined before it opened and says close_stream
    a moment after the last of them: as Gradio does when a join arrives just after it
    decided the session had nothing left."""

    def __init__(self) -> None:
        super().__init__()
        self.cancels: list[str] = []
        self.closes = 0  # close_stream frames written
        self.app.router.add_post("/gradio_api/cancel", self.cancel)

    async def data(self, request: web.Request) -> web.StreamResponse:
        session = request.query["session_hash"]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        mine = [e for e in self.events.values() if e.session == session and not e.done]
        for e in mine:
            await resp.write(frame(msg="estimation", event_id=e.event_id, rank=0))
            await resp.write(frame(msg="process_starts", event_id=e.event_id, eta=1.0))
        for e in mine:
            await e.finish.wait()
            e.done = True
            out = {"data": ["song.wav"]}
            await resp.write(
                frame(msg="process_completed", event_id=e.event_id, success=e.success, output=out)
            )
        await asyncio.sleep(0.3)  # the next join of the session arrives meanwhile
        await resp.write(frame(msg="close_stream", event_id=None))
        self.closes += 1
        return resp

    async def cancel(self, request: web.Request) -> web.Response:
        eid = (await request.json())["event_id"]
        self.cancels.append(eid)
        e = self.events.get(eid)
        if e is not None and not e.done:
            e.success = False
            e.finish.set()
        return web.json_response({"success": True})


@pytest.fixture
async def rig(aiohttp_server: Any, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    fake = CancellingGradio()
    upstream = await aiohttp_server(fake.app)
    doc = {**RULES, "upstream": {"url": str(upstream.make_url("")).rstrip("/")}}
    doc.update(getattr(request, "param", {}))
    cfg = load_config(yaml.safe_dump(doc))
    st = await create_state(cfg)
    for engine in st.gate.engine_up or {"default": None}:
        st.gate.engine_up[engine] = True  # no probe here: the engine is up
    server = ProductionLikeServer(build_proxy_app(st, monitor=False, probe=False))
    await server.start_server()
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as http:
            yield Rig(fake, st, str(server.make_url("")).rstrip("/"), http, server)
    finally:  # the clients gone first: their streams end, whatever a test left running
        await server.close()


async def frames(
    stream: aiohttp.ClientResponse, until: str, event_id: str | None = None
) -> list[dict[str, Any]]:
    """The stream's messages up to and including the first ``until`` (of ``event_id``)."""
    out: list[dict[str, Any]] = []

    def last() -> bool:
        m = out[-1]
        return bool(m["msg"] == until and (event_id is None or m["event_id"] == event_id))

    async with asyncio.timeout(10):
        while not out or not last():
            raw = await stream.content.readuntil(b"\n\n")
            out.append(json.loads(raw[6:]))
    return out


async def test_one_session_two_events_one_waiting_on_one_stream(rig: Rig) -> None:
    """Event 1 runs in the app, event 2 of the same session waits in gatekeeper: the one
    stream reports 2's place, swallows the app's close_stream after 1, reports 2 under
    gatekeeper's id once it runs (the app's id never reaches the client), then closes."""
    first = json.loads(await (await rig.join("s1")).read())["event_id"]
    second = json.loads(await (await rig.join("s1")).read())["event_id"]
    assert second.startswith("gatekeeper-") and not first.startswith("gatekeeper-")
    assert len(rig.fake.joins) == 1 and rig.in_flight == 1
    stream = await rig.stream("s1")
    told = await frames(stream, "estimation", second)
    waiting = [m for m in told if m["event_id"] == second]
    assert waiting and waiting[0]["msg"] == "estimation"
    assert waiting[0]["rank"] == 0 and waiting[0]["queue_size"] == 1
    assert waiting[0]["rank_eta"] > 0
    rig.fake.events[first].finish.set()
    told = await frames(stream, "process_starts", second)
    assert [m["msg"] for m in told if m["event_id"] == first] == ["process_completed"]
    assert all(m["msg"] != "close_stream" for m in told)  # swallowed: 2 is not done
    assert told[-1]["event_id"] == second  # the app's process_starts, under our id
    assert len(rig.fake.joins) == 2 and rig.in_flight == 1
    app_id = next(e for e in rig.fake.events if e != first)
    rig.fake.events[app_id].finish.set()
    rest = await stream.read()
    assert app_id.encode() not in rest
    msgs = [json.loads(x[6:]) for x in rest.split(b"\n\n") if x.startswith(b"data: ")]
    assert [m["msg"] for m in msgs] == ["process_completed", "close_stream"]
    assert msgs[0]["event_id"] == second
    assert await eventually(lambda: rig.in_flight == 0)
    assert rig.state.gate.estimator.samples == 2


async def test_cancel_of_a_waiting_event_and_of_a_running_one(rig: Rig) -> None:
    """/cancel naming a waiting event of ours: answered here, it leaves the queue and its
    stream says process_completed as Gradio says it; /cancel naming one of ours the app
    runs: the app gets its own id."""
    await rig.join("s1")
    waiting = json.loads(await (await rig.join("s2")).read())["event_id"]
    later = json.loads(await (await rig.join("s3")).read())["event_id"]
    assert rig.state.jobs is not None and rig.state.jobs.depth() == 2
    body = {"session_hash": "s2", "fn_index": 0, "event_id": waiting}
    resp = await rig.http.post(rig.base + "/gradio_api/cancel", json=body)
    assert resp.status == 200 and (await resp.json()) == {"success": True}
    assert rig.state.jobs.depth() == 1 and rig.fake.cancels == []
    told = await (await rig.stream("s2")).read()
    msgs = [json.loads(x[6:]) for x in told.split(b"\n\n") if x.startswith(b"data: ")]
    assert msgs[-2] == {
        "msg": "process_completed",
        "event_id": waiting,
        "output": {},
        "success": True,
    }
    assert msgs[-1]["msg"] == "close_stream"
    # s1's event ends: s3's (ours) is forwarded; its cancel reaches the app with the app's id
    stream = await rig.stream("s1")
    rig.fake.events[next(iter(rig.fake.events))].finish.set()
    await stream.read()
    assert await eventually(lambda: len(rig.fake.joins) == 2)
    three = await rig.stream("s3")
    await frames(three, "process_starts")
    body = {"session_hash": "s3", "fn_index": 0, "event_id": later}
    resp = await rig.http.post(rig.base + "/gradio_api/cancel", json=body)
    assert resp.status == 200 and (await resp.json()) == {"success": True}
    app_id = [e for e in rig.fake.events if rig.fake.events[e].session == "s3"]
    assert rig.fake.cancels == app_id
    done = await frames(three, "process_completed")
    assert done[-1]["event_id"] == later and done[-1]["success"] is False
    assert b'"close_stream"' in await three.read()
    assert await eventually(lambda: rig.in_flight == 0)


async def test_a_waiting_event_joins_a_stream_already_open_for_a_light_function(
    rig: Rig,
) -> None:
    """The session's stream is already open, carrying only a light (ungated) event, when
    a gated join of the session finds the slot taken: the join waits (not 503) and its
    frames join that open stream: its place, the light event's frames untouched and in
    order, the app's close_stream after the light one swallowed (ours still waits), then
    its own frames under gatekeeper's id and one close_stream at the very end."""
    running = json.loads(await (await rig.join("s1")).read())["event_id"]
    light = json.loads(await (await rig.join("s2", fn_index=1)).read())["event_id"]
    stream = await rig.stream("s2")
    first = await frames(stream, "process_starts", light)
    assert [m["msg"] for m in first] == ["estimation", "process_starts"]
    gated = await rig.join("s2")
    assert gated.status == 200
    ours = json.loads(await gated.read())["event_id"]
    assert ours.startswith("gatekeeper-") and len(rig.fake.joins) == 2
    told = await frames(stream, "estimation", ours)
    assert told[-1]["rank"] == 0 and told[-1]["queue_size"] == 1
    rig.fake.events[light].finish.set()
    told = await frames(stream, "process_completed", light)
    assert all(m["msg"] != "close_stream" for m in told)
    assert await eventually(lambda: rig.fake.closes == 1)  # after the light event: swallowed
    rig.fake.events[running].finish.set()  # the slot frees: ours goes to the app
    assert await eventually(lambda: len(rig.fake.joins) == 3)
    app_id = next(e for e in rig.fake.events if e not in (running, light))
    told = await frames(stream, "process_starts", ours)
    assert all(m["msg"] in ("estimation", "heartbeat") for m in told[:-1]), told
    rig.fake.events[app_id].finish.set()
    rest = await stream.read()
    assert app_id.encode() not in rest
    msgs = [json.loads(x[6:]) for x in rest.split(b"\n\n") if x.startswith(b"data: ")]
    assert [m["msg"] for m in msgs] == ["process_completed", "close_stream"]
    assert msgs[0]["event_id"] == ours and msgs[0]["success"] is True
    assert await eventually(lambda: rig.in_flight == 0)


@pytest.mark.slow  # a real 2 s max_wait
@pytest.mark.parametrize(
    "rig",
    [{"admission": {"expected_seconds": 60, "queue": {"max_wait": "2s", "per_client": 8}}}],
    indirect=True,
)
async def test_a_waiting_call_cancelled_left_or_timed_out_leaves_the_queue(rig: Rig) -> None:
    """/call events waiting in gatekeeper: a /cancel naming gatekeeper's id ends its
    stream as Gradio ends a cancelled call's (``event: complete``, ``data: null``); one
    whose client closes its stream leaves the queue; one that waits past max_wait gets
    ``event: error`` with the queue_timeout text and the wait; the app runs none of them."""
    base = rig.base + "/gradio_api/call/generate_song"

    async def call() -> str:
        async with rig.http.post(base, json={"data": ["x"]}) as r:
            assert r.status == 200
            return str((await r.json())["event_id"])

    await call()  # runs: the slot is taken
    assert rig.state.jobs is not None
    cancelled, left, timed_out = await call(), await call(), await call()
    assert rig.state.jobs.depth() == 3
    one = await rig.http.get(f"{base}/{cancelled}")
    body = {"session_hash": cancelled, "fn_index": 0, "event_id": cancelled}
    resp = await rig.http.post(rig.base + "/gradio_api/cancel", json=body)
    assert resp.status == 200 and (await resp.json()) == {"success": True}
    assert await one.read() == b"event: complete\ndata: null\n\n"
    two = await rig.http.get(f"{base}/{left}")
    assert two.status == 200
    two.close()
    assert await eventually(lambda: rig.state.jobs is not None and rig.state.jobs.depth() == 1)
    three = await rig.http.get(f"{base}/{timed_out}")
    async with asyncio.timeout(10):
        told = await three.read()
    event, data = told.split(b"\n")[:2]
    assert event == b"event: error"
    error = json.loads(data.removeprefix(b"data: "))
    assert "2 s" in error["error"] and error["visible"] is True
    assert len(rig.fake.events) == 1 and rig.fake.cancels == []
    unknown = await rig.http.get(f"{base}/gatekeeper-{'0' * 32}")
    assert unknown.status == 404 and (await unknown.json())["reason"] == "not_found"


async def test_a_stream_left_with_only_light_events_is_over_for_its_session(rig: Rig) -> None:
    """The client leaves a stream that carries only a light event: gatekeeper closes its
    reader of the app's stream too (as a relay would) and keeps nothing for the session:
    its next stream starts fresh with the next event, not a stale close_stream."""
    light = json.loads(await (await rig.join("s2", fn_index=1)).read())["event_id"]
    stream = await rig.stream("s2")
    await frames(stream, "estimation", light)
    stream.close()
    assert await eventually(lambda: connections_closed(rig.server))
    await settle()
    rig.fake.events[light].finish.set()
    again = json.loads(await (await rig.join("s2", fn_index=1)).read())["event_id"]
    fresh = await rig.stream("s2")
    told = await frames(fresh, "estimation", again)
    assert [m["msg"] for m in told] == ["estimation"], told
    rig.fake.events[again].finish.set()
    rest = await fresh.read()
    msgs = [json.loads(x[6:]) for x in rest.split(b"\n\n") if x.startswith(b"data: ")]
    assert [m["msg"] for m in msgs][-2:] == ["process_completed", "close_stream"]
