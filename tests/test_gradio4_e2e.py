"""gatekeeper (the real CLI) in front of the same test app on gradio 4.x, in a virtualenv
the test makes (``gradio4_venv``): the routes have no ``/gradio_api`` prefix, one song is
gated, a second session's song waits its turn in gatekeeper's queue (``estimation``
frames in its own stream, then its song), a direct ``/run`` call is blocked, the engine's progress
shows in ``/status`` and a completion without audio teaches no duration.

Versions: ``GATEKEEPER_GRADIO4_VERSIONS`` (comma separated; default 4.26.0, the version
SongGeneration pinned in its early releases; 4.44.1, the last 4.x, passes too).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from gradio4_venv import Broken, Unavailable, gradio4_python
from gradio_support import APP, HELD, finish, get_json, join_data
from support import REQUIRE_E2E, Proc, free_port, poll, start_gatekeeper

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

VERSIONS = os.environ.get("GATEKEEPER_GRADIO4_VERSIONS", "4.26.0").split(",")

RULES = """
admission:
  expected_seconds: 120
shutdown:
  linger: 0s
routes:
  - name: song
    match: {path: /**, api_name: [generate_song, generate_song_1]}
    action: gradio
"""


def python_for(version: str) -> Path:
    try:
        return gradio4_python(version)
    except Unavailable as exc:
        pytest.skip(f"gradio {version} cannot be installed here: {exc}")
    except Broken as exc:
        if REQUIRE_E2E:
            pytest.fail(f"gradio {version} installs but is broken: {exc}")
        pytest.skip(f"gradio {version} installs but is broken: {exc}")


@pytest.fixture(scope="module", params=VERSIONS)
def rig(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, str, str]]:
    """(version, app URL, gatekeeper URL, admin URL): a 4-second generate_song on gradio
    4.x behind gatekeeper."""
    version = str(request.param)
    python = python_for(version)
    tmp = tmp_path_factory.mktemp(f"gradio-{version}")
    procs: list[Proc] = []
    try:
        port = free_port()
        args = ["--port", str(port), "--seconds", "4", "--out-dir", str(tmp / "out")]
        app = Proc(
            args,
            tmp / "gradio-app.log",
            ready=r"gradio-app listening on http://",
            timeout=120.0,
            program=[str(python), str(APP)],
        )
        procs.append(app)
        app_url = f"http://127.0.0.1:{port}"
        gk, url, admin = start_gatekeeper(tmp, RULES, app_url)
        procs.append(gk)
        yield version, app_url, url, admin
        assert gk.stop(timeout=10) == 0
        assert "Traceback" not in gk.output()
    finally:
        for p in reversed(procs):
            p.stop()


async def join(
    http: aiohttp.ClientSession, url: str, session: str, lyrics: str, description: str = "pop"
) -> str:
    """A join of ``generate_song``; ``description`` "seconds=N": a song of N seconds."""
    body = {"data": join_data(lyrics, description), "fn_index": 0, "session_hash": session}
    async with http.post(url + "/queue/join", json=body) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["event_id"])


async def frames(http: aiohttp.ClientSession, url: str, session: str) -> list[dict[str, Any]]:
    """The session's queue/data stream, read to its end (Gradio 4.x, no prefix)."""
    out: list[dict[str, Any]] = []
    async with http.get(url + f"/queue/data?session_hash={session}") as r:
        assert r.status == 200
        async for line in r.content:
            if line.startswith(b"data: "):
                out.append(json.loads(line[6:]))
    return out


def completion(seen: list[dict[str, Any]], event_id: str) -> dict[str, Any]:
    done = [f for f in seen if f.get("msg") == "process_completed"]
    assert [f["event_id"] for f in done] == [event_id], seen
    return done[0]


async def test_gradio4_one_song_gated_the_second_waits_its_turn(
    rig: tuple[str, str, str, str],
) -> None:
    """4.x paths (no /gradio_api): session A's song runs, its progress shows in /status;
    session B's join while it runs is answered with gatekeeper's event id, B's stream
    shows its place (an ``estimation``: rank 0 of 1, an ETA), then B gets its own song
    under that id once A's is done; a direct /run call is blocked; both songs' URLs go
    through the proxy and the app never runs two at once."""
    version, app, url, admin = rig
    config = await get_json(url + "/config")
    assert config["version"] == version and not config.get("api_prefix")
    async with aiohttp.ClientSession() as http:
        a = await join(http, url, "session0000a", "[verse] first", HELD)  # ended below
        a_stream = asyncio.ensure_future(frames(http, url, "session0000a"))

        async def reporting() -> bool:
            running = (await get_json(admin + "/status"))["running"]
            return bool(running and running[0]["progress"] is not None)

        await poll(reporting, timeout=30)
        assert (await get_json(app + "/_app/stats"))["active"] == 1
        b = await join(http, url, "session0000b", "[verse] second", "seconds=0.5")
        assert b.startswith("gatekeeper-")
        b_stream = asyncio.ensure_future(frames(http, url, "session0000b"))
        direct = {"data": join_data("[verse] direct")}
        async with http.post(url + "/run/generate_song", json=direct) as r:
            assert r.status == 403 and (await r.json())["reason"] == "blocked"
        await finish(app)  # A's song ends only now: B waited for it
        song = completion(await asyncio.wait_for(a_stream, 60), a)
        b_frames = await asyncio.wait_for(b_stream, 60)
    waiting = [f for f in b_frames if f.get("msg") == "estimation"]
    assert waiting and waiting[0]["event_id"] == b, b_frames
    assert waiting[0]["rank"] == 0 and waiting[0]["queue_size"] == 1
    assert waiting[0]["rank_eta"] is not None
    second = completion(b_frames, b)
    assert b_frames[-1]["msg"] == "close_stream"
    for done in (song, second):
        assert done["success"] is True
        audio = done["output"]["data"][0]
        assert audio["url"].startswith(url + "/file=") and audio["url"].endswith(".wav")
    stats = await get_json(app + "/_app/stats")
    assert stats["peak"] == 1 and stats["completed"] == 2 and stats["started"] == 2

    async def freed() -> bool:
        return bool((await get_json(admin + "/status"))["in_flight"] == 0)

    await poll(freed, timeout=10)
    doc = await get_json(admin + "/status")
    assert doc["expected_samples"] == 2 and not doc["rejections_by_reason"].get("busy")


async def test_gradio4_a_completion_without_audio_teaches_no_duration(
    rig: tuple[str, str, str, str],
) -> None:
    """On 4.x too, /config says which output is the audio: invalid lyrics (no audio, a
    successful completion) end the generation as failed and nothing is learned."""
    _version, _app, url, admin = rig
    before = (await get_json(admin + "/status"))["expected_samples"]
    async with aiohttp.ClientSession() as http:
        event = await join(http, url, "session0000c", "invalid lyrics", "seconds=0.5")
        done = completion(await frames(http, url, "session0000c"), event)
    assert done["success"] is True and done["output"]["data"][0] is None

    async def freed() -> bool:
        return bool((await get_json(admin + "/status"))["in_flight"] == 0)

    await poll(freed, timeout=10)
    assert (await get_json(admin + "/status"))["expected_samples"] == before
