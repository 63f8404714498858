"""Gradio's REST ``/call`` flow through a gradio route, against the scripted
Gradio-protocol server of ``test_gradio_route`` (issue #19): the slot from the POST to
the call stream's end, a call that waits its turn (gatekeeper's id, heartbeats, then
the app's frames), a call whose stream nobody opens, a broken call stream; and the
direct calls (``/run/<api>``) that bypass Gradio's queue."""

from __future__ import annotations

import aiohttp
import pytest
import test_gradio_route as scripted
from support import eventually
from test_gradio_route import Rig

from gatekeeper.gradio import outbox

rig = scripted.rig  # the scripted app behind a gradio route (its fixture)


@pytest.mark.parametrize("success", [True, False])
async def test_the_call_rest_flow_is_gated_the_same_way(
    rig: Rig, success: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POST /call/<api> takes the slot; its GET /call/<api>/<event_id> stream's
    ``event: complete`` (or ``error``) frees it. A second call meanwhile waits its turn
    (issue #19): answered at once with gatekeeper's id, its stream carries Gradio's
    heartbeats while it waits, then the app's frames once the first call ended."""
    monkeypatch.setattr(outbox, "HEARTBEAT_SECONDS", 0.2)
    base = rig.base + "/gradio_api/call/generate_song"
    async with rig.http.post(base, json={"data": ["la"]}) as r:
        assert r.status == 200
        eid = (await r.json())["event_id"]
    assert rig.in_flight == 1
    async with rig.http.post(base, json={"data": ["again"]}) as r:
        assert r.status == 200
        ours = (await r.json())["event_id"]
    assert ours.startswith("gatekeeper-") and len(rig.fake.events) == 1
    assert rig.state.jobs is not None and rig.state.jobs.depth() == 1
    waiting = await rig.http.get(f"{base}/{ours}")
    assert waiting.status == 200
    assert await waiting.content.readuntil(b"\n\n") == b"event: heartbeat\ndata: null\n\n"
    stream = await rig.http.get(f"{base}/{eid}")
    assert await stream.content.readuntil(b"\n\n") == b"event: generating\ndata: [null]\n\n"
    assert rig.in_flight == 1
    rig.fake.events[eid].success = success
    rig.fake.events[eid].finish.set()
    assert (b"event: complete" if success else b"event: error") in await stream.read()
    assert await eventually(lambda: len(rig.fake.events) == 2)  # its turn: forwarded
    app_id = next(e for e in rig.fake.events if e != eid)
    assert rig.in_flight == 1 and rig.state.jobs.depth() == 0
    rig.fake.events[app_id].finish.set()
    rest = await waiting.read()
    assert rest.endswith(
        b'event: generating\ndata: [null]\n\nevent: complete\ndata: ["song.wav"]\n\n'
    )
    assert app_id.encode() not in rest
    assert await eventually(lambda: rig.in_flight == 0)
    assert rig.state.gate.estimator.samples == (2 if success else 1)
    gone = await rig.http.get(f"{base}/{ours}")  # all was told: nothing more to read
    assert gone.status == 404 and (await gone.json())["reason"] == "not_found"


async def test_a_call_whose_stream_is_never_opened_frees_the_slot_when_the_app_ends(
    rig: Rig,
) -> None:
    """POST /call/<api> admitted at once and its GET never opened (a client that posted
    and left): gatekeeper reads the app's call stream itself, so the slot frees when the
    app finishes, not at upstream.timeouts.read; a GET that comes later still gets the
    whole result."""
    base = rig.base + "/gradio_api/call/generate_song"
    async with rig.http.post(base, json={"data": ["la"]}) as r:
        eid = (await r.json())["event_id"]
    assert rig.in_flight == 1
    rig.fake.events[eid].finish.set()
    assert await eventually(lambda: rig.in_flight == 0)
    assert rig.state.gate.estimator.samples == 1
    late = await rig.http.get(f"{base}/{eid}")
    assert (
        await late.read()
        == b'event: generating\ndata: [null]\n\nevent: complete\ndata: ["song.wav"]\n\n'
    )


async def test_a_waited_call_whose_app_stream_breaks_frees_the_slot_once(rig: Rig) -> None:
    """A /call that waited, then ran: the app breaking its call stream mid-job ends the
    event (``stream_cut``, no duration learned), frees the slot exactly once, and the
    client's stream is aborted after what the app had said."""
    base = rig.base + "/gradio_api/call/generate_song"
    async with rig.http.post(base, json={"data": ["la"]}) as r:
        eid = (await r.json())["event_id"]
    async with rig.http.post(base, json={"data": ["again"]}) as r:
        ours = (await r.json())["event_id"]
    waiting = await rig.http.get(f"{base}/{ours}")
    rig.fake.events[eid].finish.set()
    first = await rig.http.get(f"{base}/{eid}")
    assert b"event: complete" in await first.read()
    assert await waiting.content.readuntil(b"\n\n") == b"event: generating\ndata: [null]\n\n"
    assert rig.in_flight == 1 and len(rig.fake.events) == 2
    rig.fake.cut.set()
    with pytest.raises(aiohttp.ClientError):
        await waiting.read()
    assert await eventually(lambda: rig.in_flight == 0)
    assert rig.state.gradio is not None and len(rig.state.gradio) == 0
    assert rig.state.gate.estimator.samples == 1  # the first call only


async def test_direct_calls_of_a_gated_function_are_blocked(rig: Rig) -> None:
    """/run/<api> would run generate_song outside the app's queue: 403 with a detail
    saying what to use; a light function's direct call passes."""
    async with rig.http.post(rig.base + "/gradio_api/run/generate_song", json={"data": []}) as r:
        assert r.status == 403
        assert "bypass" in (await r.json())["detail"]
    async with rig.http.post(rig.base + "/gradio_api/run/echo", json={"data": ["x"]}) as r:
        assert r.status == 200
    assert rig.fake.direct == ["echo"]


@pytest.mark.parametrize(
    "rig",
    [
        {
            "routes": [
                {
                    "name": "song",
                    "match": {"path": "/**", "api_name": ["generate_song"]},
                    "action": "gradio",
                    "direct_calls": "admit",
                }
            ]
        }
    ],
    indirect=True,
)
async def test_direct_calls_admitted_like_an_admit_route(rig: Rig) -> None:
    """direct_calls: admit: a direct call takes the slot for its duration; busy -> 503."""
    await rig.join("s1")
    async with rig.http.post(rig.base + "/gradio_api/run/generate_song", json={"data": []}) as r:
        assert r.status == 503 and r.headers["X-Gatekeeper-Reason"] == "busy"
    rig.state.gradio.close() if rig.state.gradio else None
    assert rig.in_flight == 0
    async with rig.http.post(rig.base + "/gradio_api/run/generate_song", json={"data": []}) as r:
        assert r.status == 200
    assert rig.fake.direct == ["generate_song"] and rig.in_flight == 0
