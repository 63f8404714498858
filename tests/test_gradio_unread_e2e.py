"""gatekeeper (the real CLI) in front of the real Gradio test app: a gated event whose
session's stream no client reads (the tab closed between its join and its ``queue/data``
request, or a client that joined and left) frees its slot when the app finishes it, not
after ``upstream.timeouts.read``, and a stop does not wait for it: gatekeeper reads
the session's stream itself from the join on (``gradio.pipe``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import aiohttp
import pytest
from gradio_support import get_json, join_data, require_gradio, start_gradio_app
from support import Proc, poll, start_gatekeeper

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

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


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """(app URL, gatekeeper URL, admin URL): a 3-second generate_song behind gatekeeper;
    at the end the stop takes no more than a few seconds."""
    require_gradio()
    tmp = tmp_path_factory.mktemp("gradio-unread")
    procs: list[Proc] = []
    try:
        app, app_url = start_gradio_app(tmp, seconds=3.0)
        procs.append(app)
        gk, url, admin = start_gatekeeper(tmp, RULES, app_url)
        procs.append(gk)
        yield app_url, url, admin
        assert gk.stop(timeout=10) == 0
        assert "Traceback" not in gk.output()
    finally:
        for p in reversed(procs):
            p.stop()


async def join(url: str, session: str) -> str:
    """A browser's join of ``generate_song`` in ``session``; returns its event id."""
    body = {"data": join_data("[verse] la"), "fn_index": 0, "session_hash": session}
    async with (
        aiohttp.ClientSession() as s,
        s.post(url + "/gradio_api/queue/join?", json=body) as r,
    ):
        assert r.status == 200
        return str((await r.json())["event_id"])


async def reset(app: str, admin: str) -> None:
    async def quiet() -> bool:
        stats = await get_json(app + "/_app/stats")
        return bool(stats["active"] == 0 and (await get_json(admin + "/status"))["in_flight"] == 0)

    await poll(quiet, timeout=30)
    async with aiohttp.ClientSession() as s, s.post(app + "/_app/reset") as r:
        assert r.status == 200


async def freed_when_the_app_finishes(app: str, admin: str) -> None:
    """The slot is held while the app runs the job and freed soon after it finished."""

    async def started() -> bool:
        return bool((await get_json(app + "/_app/stats"))["started"] == 1)

    await poll(started, timeout=20)

    async def finished() -> bool:
        # gatekeeper first, then the app: a slot seen free while the app is seen still
        # running *afterwards* was freed too early (the other order raced the app's end).
        in_flight = (await get_json(admin + "/status"))["in_flight"]
        stats = await get_json(app + "/_app/stats")
        assert in_flight == 1 or stats["active"] == 0, "slot freed while the app still ran"
        return bool(stats["completed"] == 1 and in_flight == 0)

    # 3 s of generation, 2 s of grace, the rest for a loaded box; not 900 s.
    await poll(finished, timeout=25)


async def test_a_join_whose_stream_is_never_opened_frees_the_slot_when_the_app_ends(
    rig: tuple[str, str, str],
) -> None:
    """The client joins and is never heard of again: gatekeeper reads the session's stream
    itself after a short grace and frees the slot on the event's process_completed."""
    app, url, admin = rig
    await reset(app, admin)
    await join(url, "unread00001")
    await freed_when_the_app_finishes(app, admin)


async def test_a_stream_dropped_before_its_answer_frees_the_slot_when_the_app_ends(
    rig: tuple[str, str, str],
) -> None:
    """The client sends its queue/data request and closes the connection before the answer
    (a tab closed at that moment): the app's stream is not closed under the running job
    (Gradio would drop its messages), and the slot frees when the app finishes."""
    app, url, admin = rig
    await reset(app, admin)
    session = "dropped0001"
    await join(url, session)
    where = urlsplit(url)
    _reader, writer = await asyncio.open_connection(where.hostname, where.port)
    writer.write(
        f"GET /gradio_api/queue/data?session_hash={session} HTTP/1.1\r\n"
        f"Host: {where.netloc}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await freed_when_the_app_finishes(app, admin)
    doc = await get_json(admin + "/status")
    assert doc["expected_samples"] >= 1, json.dumps(doc)  # the generation was learned
