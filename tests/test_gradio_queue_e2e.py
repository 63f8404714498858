"""Gradio joins wait their turn in gatekeeper's waiting room (issue #19), end to end:
the real CLI in front of the real test Gradio app, driven by gradio_client.

Every join that finds the slot taken is answered at once with gatekeeper's event id,
waits in the same fair ring as the queue routes' jobs, is reported by ``estimation``
frames on the session's stream (gradio_client's ``job.status()`` shows rank and ETA)
and is forwarded to the app when its turn comes.
"""

from __future__ import annotations

import asyncio
import json
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from gradio_support import (
    HELD,
    close_clients,
    finish,
    get_json,
    join_data,
    require_gradio,
    song,
    start_gradio_app,
)
from support import Proc, poll, start_gatekeeper

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

# A song nobody needs to look at while it runs; one that must still run while the test
# acts (the slot taken, a rank seen) is held (gradio_support.HELD) until it ends it.
SONG_SECONDS = 0.5
# Each gradio_client (like each browser tab) holds its heartbeat stream open on the
# passthrough pool, and each session with an event in the app one queue/data stream.
RULES = """
upstream:
  passthrough:
    limits: {max_connections: 64}
admission:
  expected_seconds: 120
  queue:
    max_waiting: 4
    per_client: 4
    client_key: header:X-Client
shutdown:
  linger: 0s
routes:
  - name: song
    match: {path: /**, api_name: [generate_song, generate_song_1]}
    action: gradio
"""


READINGS: list[Path] = []  # the CPU/memory readings file of the module's gatekeeper


@pytest.fixture(scope="module")
def rig(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, str]]:
    """(app URL, gatekeeper URL, admin URL): generate_song behind gatekeeper, as long as
    the module's ``SONG_SECONDS`` (a browser cannot hold a song: its module sets 3 s)."""
    require_gradio()
    tmp = tmp_path_factory.mktemp("gradio-queue")
    procs: list[Proc] = []
    try:
        seconds = getattr(request.module, "SONG_SECONDS", SONG_SECONDS)
        app, app_url = start_gradio_app(tmp, seconds=seconds)
        procs.append(app)
        gk, url, admin = start_gatekeeper(
            tmp, RULES + f"jobs: {{dir: '{tmp / 'state'}'}}\n", app_url
        )
        procs.append(gk)
        READINGS[:] = [tmp / f"calm-{url.rsplit(':', 1)[1]}.json"]  # support.calm_resources
        yield app_url, url, admin
        assert gk.stop(timeout=15) == 0
        assert "Traceback" not in gk.output()
    finally:
        for p in reversed(procs):
            p.stop()


async def idle(rig: tuple[str, str, str]) -> None:
    """Nothing running or waiting in the app or in gatekeeper; the app's counters zeroed."""
    app, _, admin = rig

    async def quiet() -> bool:
        stats = await get_json(app + "/_app/stats")
        doc = await get_json(admin + "/status")
        return bool(stats["active"] == 0 and doc["in_flight"] == 0 and not doc["queue"]["waiting"])

    await poll(quiet, timeout=60)
    async with aiohttp.ClientSession() as s, s.post(app + "/_app/reset") as r:
        assert r.status == 200


_OPEN: list[Any] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Each test's gradio_clients end their heartbeat streams after it."""
    yield
    close_clients(_OPEN)


def client(url: str, key: str) -> Any:
    from gradio_client import Client

    c = Client(url + "/", verbose=False, headers={"X-Client": key})
    _OPEN.append(c)
    return c


async def clients(url: str, *keys: str) -> list[Any]:
    return list(await asyncio.gather(*(asyncio.to_thread(client, url, k) for k in keys)))


def watch(jobs: list[Any], seen: list[list[tuple[int | None, float | None]]]) -> None:
    """Record each waiting job's (rank, eta) as job.status() reports it, until all end."""
    from gradio_client.utils import Status

    while not all(j.done() for j in jobs):
        for i, j in enumerate(jobs):
            st = j.status()
            if st.code == Status.IN_QUEUE and (not seen[i] or seen[i][-1] != (st.rank, st.eta)):
                seen[i].append((st.rank, st.eta))
        time.sleep(0.05)


async def test_three_clients_at_once_all_get_their_song_one_at_a_time(
    rig: tuple[str, str, str], tmp_path: Path
) -> None:
    """Three gradio_client jobs from three clients at once: all three get their song, the
    app never runs two at once, and a waiting job's status() shows rank 1, then 0, with
    an ETA; /status lists the waiting events. One uploads a prompt_audio through
    gatekeeper, which reaches generate_song whole."""
    from gradio_client import handle_file

    app, url, admin = rig
    await idle(rig)
    prompt = tmp_path / "prompt.wav"
    with wave.open(str(prompt), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * 4000)
    a, b, c = await clients(url, "a", "b", "c")
    jobs = [
        cl.submit(
            *song("[verse] n", HELD, handle_file(str(prompt)) if cl is c else None),
            api_name="/generate_song",
        )
        for cl in (a, b, c)
    ]
    seen: list[list[tuple[int | None, float | None]]] = [[], [], []]
    watcher = asyncio.create_task(asyncio.to_thread(watch, jobs, seen))

    async def two_wait() -> bool:
        return bool((await get_json(admin + "/status"))["queue"]["waiting"] == 2)

    await poll(two_wait, timeout=20)
    entries = (await get_json(admin + "/status"))["queue"]["entries"]
    assert [e["position"] for e in entries] == [1, 2] and all(e["held"] for e in entries)

    async def last_at(rank: int) -> bool:
        return any(s and s[0][0] == 1 and s[-1][0] == rank for s in seen)

    await poll(lambda: last_at(1), timeout=20)  # its client was told rank 1
    await finish(app)  # the first ends: the second runs, the last moves up to rank 0
    await poll(lambda: last_at(0), timeout=20)
    await finish(app)
    await finish(app)
    results = await asyncio.gather(*(asyncio.to_thread(j.result, 60) for j in jobs))
    await watcher
    assert all(Path(audio).suffix == ".wav" for audio, _ in results)
    assert results[2][1].endswith(f", prompt prompt.wav ({prompt.stat().st_size} B)")
    stats = await get_json(app + "/_app/stats")
    assert stats == {"active": 0, "peak": 1, "started": 3, "completed": 3}
    last = [s for s in seen if s and s[0][0] == 1]
    assert last, seen
    ranks = [r for r, _ in last[0]]
    assert ranks[0] == 1 and 0 in ranks and ranks.index(0) > 0, seen
    assert all(eta is not None and eta > 0 for _, eta in last[0]), seen


async def test_two_client_keys_take_turns(rig: tuple[str, str, str]) -> None:
    """Client A sends three jobs, then B one, while the slot is taken: the app runs them
    A B A A after the running one (round-robin across keys, FIFO within one)."""
    app, url, admin = rig
    await idle(rig)
    first, a, b = await clients(url, "first", "A", "B")
    running = first.submit(*song("[verse] first", HELD), api_name="/generate_song")

    async def started() -> bool:
        return bool((await get_json(app + "/_app/stats"))["active"] == 1)

    await poll(started, timeout=20)
    order: list[str] = []
    jobs: list[Any] = []
    for key, cl, n in (("A", a, 3), ("B", b, 1)):
        for i in range(n):
            job = cl.submit(*song(f"[verse] {key}{i}", "pop"), api_name="/generate_song")
            job.add_done_callback(lambda _, key=key: order.append(key))
            jobs.append(job)

            async def queued(k: int = len(jobs)) -> bool:
                return bool((await get_json(admin + "/status"))["queue"]["waiting"] == k)

            await poll(queued, timeout=20)  # joined in this order
    await finish(app)
    await asyncio.gather(*(asyncio.to_thread(j.result, 90) for j in [running, *jobs]))
    assert order == ["A", "B", "A", "A"]
    assert (await get_json(app + "/_app/stats"))["peak"] == 1


async def test_a_waiting_event_cancelled_leaves_the_queue_and_a_waiting_call_waits_too(
    rig: tuple[str, str, str],
) -> None:
    """job.cancel() of a waiting event (its /cancel names gatekeeper's id): it leaves the
    queue at once, the app never runs it, and the next one moves up. A /call (Gradio's
    two-step REST API, as curl uses it) that finds the slot taken waits in the same
    queue: answered at once with gatekeeper's id, its GET stream held open while it
    waits, then the app's ``event: complete`` with the song's URL on gatekeeper."""
    app, url, admin = rig
    await idle(rig)
    a, b, c = await clients(url, "ca", "cb", "cc")
    running = a.submit(*song("[verse] run", "pop"), api_name="/generate_song")

    async def started() -> bool:
        return bool((await get_json(app + "/_app/stats"))["active"] == 1)

    await poll(started, timeout=20)
    doomed = b.submit(*song("[verse] doomed", "pop"), api_name="/generate_song")
    later = c.submit(*song("[verse] later", "pop"), api_name="/generate_song")

    async def waiting(n: int) -> bool:
        return bool((await get_json(admin + "/status"))["queue"]["waiting"] == n)

    await poll(lambda: waiting(2), timeout=20)
    call = url + "/gradio_api/call/generate_song"
    async with aiohttp.ClientSession() as http:
        body = {"data": list(song("[verse] rest"))}
        async with http.post(call, json=body, headers={"X-Client": "rest"}) as r:
            assert r.status == 200
            ours = (await r.json())["event_id"]
        assert ours.startswith("gatekeeper-")
        await poll(lambda: waiting(3), timeout=10)
        async with http.get(f"{call}/{ours}") as stream:
            assert stream.status == 200
            assert await asyncio.to_thread(doomed.cancel)
            await poll(lambda: waiting(2), timeout=10)
            async with asyncio.timeout(60):
                told = await stream.read()
    await asyncio.gather(*(asyncio.to_thread(j.result, 60) for j in (running, later)))
    event, data = told.strip().split(b"\n\n")[-1].split(b"\n")
    assert event == b"event: complete", told
    assert json.loads(data.removeprefix(b"data: "))[0]["url"].startswith(url + "/gradio_api/file=")
    stats = await get_json(app + "/_app/stats")
    assert stats["started"] == 3 and stats["peak"] == 1


async def test_one_session_streaming_a_light_function_then_two_songs_on_one_stream(
    rig: tuple[str, str, str],
) -> None:
    """A client's session stream is open carrying only the light function while another
    client's song runs: its two songs wait in gatekeeper (not refused) and join that open
    stream; the first then runs in the app while the second still waits; all three end
    with their results on the one stream."""
    from gradio_client.utils import Status

    app, url, _ = rig
    await idle(rig)
    one, other = await clients(url, "solo", "other")
    running = other.submit(*song("[verse] 0", "pop"), api_name="/generate_song")

    async def started() -> bool:
        return bool((await get_json(app + "/_app/stats"))["active"] == 1)

    await poll(started, timeout=20)
    light = one.submit("sleep=2", api_name="/echo")

    async def streaming() -> bool:  # its process_starts came on the session's stream
        return bool(light.status().code == Status.PROCESSING)

    await poll(streaming, timeout=10)
    first = one.submit(*song("[verse] 1", "pop"), api_name="/generate_song")
    second = one.submit(*song("[verse] 2", "rock"), api_name="/generate_song_1")
    out = await asyncio.gather(*(asyncio.to_thread(j.result, 60) for j in (running, first, second)))
    assert all(Path(audio).suffix == ".wav" for audio, _ in out)
    assert await asyncio.to_thread(light.result, 10) == "sleep=2"
    stats = await get_json(app + "/_app/stats")
    assert stats == {"active": 0, "peak": 1, "started": 3, "completed": 3}


async def test_a_join_whose_stream_is_never_read_frees_the_slot_when_the_app_ends(
    rig: tuple[str, str, str],
) -> None:
    """A join whose client never opens queue/data: gatekeeper reads the session's stream
    itself, so the slot frees when the app finishes, not at upstream.timeouts.read."""
    app, url, admin = rig
    await idle(rig)
    async with aiohttp.ClientSession() as s:
        body = {"data": join_data("[verse] x"), "fn_index": 0, "session_hash": "nostream1"}
        async with s.post(url + "/gradio_api/queue/join", json=body) as r:
            assert r.status == 200

    async def done() -> bool:
        stats = await get_json(app + "/_app/stats")
        in_flight = (await get_json(admin + "/status"))["in_flight"]
        return bool(stats["completed"] == 1 and in_flight == 0)

    await poll(done, timeout=SONG_SECONDS + 15)


async def test_cpu_over_threshold_holds_dispatch_and_recovery_dispatches(
    rig: tuple[str, str, str],
) -> None:
    """CPU over its threshold: joins wait (not refused) and none reaches the app; when the
    CPU recovers, the waiting events are dispatched one at a time and all finish."""
    app, url, admin = rig
    await idle(rig)
    (readings,) = READINGS
    readings.write_text('{"cpu_percent": 99, "memory_percent": 5}')
    try:

        async def hot() -> bool:
            doc = await get_json(admin + "/status")
            return bool(any(doc["overloaded"].values()))

        await poll(hot, timeout=10)
        a, b = await clients(url, "hot-a", "hot-b")
        jobs = [cl.submit(*song("[verse] h", "pop"), api_name="/generate_song") for cl in (a, b)]

        async def both_wait() -> bool:
            return bool((await get_json(admin + "/status"))["queue"]["waiting"] == 2)

        await poll(both_wait, timeout=20)
        await asyncio.sleep(2.5)  # more than two samples: still held, nobody refused
        doc = await get_json(admin + "/status")
        assert doc["queue"]["waiting"] == 2 and doc["in_flight"] == 0
        assert (await get_json(app + "/_app/stats"))["started"] == 0
        assert not any(j.done() for j in jobs)
    finally:
        readings.write_text('{"cpu_percent": 5, "memory_percent": 5}')
    out = await asyncio.gather(*(asyncio.to_thread(j.result, 60) for j in jobs))
    assert all(Path(audio).suffix == ".wav" for audio, _ in out)
    stats = await get_json(app + "/_app/stats")
    assert stats["completed"] == 2 and stats["peak"] == 1


async def test_a_full_queue_still_refuses_with_the_text(rig: tuple[str, str, str]) -> None:
    """One running and max_waiting (4) waiting: the next join is refused, and
    gradio_client raises AppError with gatekeeper's queue_full text and the wait."""
    from gradio_client.exceptions import AppError

    _, url, admin = rig
    await idle(rig)
    cls = await clients(url, "f0", "f1", "f2", "f3", "f4", "f5")
    jobs = []
    for i, cl in enumerate(cls[:5]):
        # The first holds the slot until the refusal is seen.
        jobs.append(
            cl.submit(*song(f"[verse] {i}", HELD if i == 0 else "pop"), api_name="/generate_song")
        )

        async def placed(k: int = i) -> bool:
            doc = await get_json(admin + "/status")
            return bool(doc["in_flight"] + doc["queue"]["waiting"] == k + 1)

        await poll(placed, timeout=20)
    with pytest.raises(AppError) as refused:
        await asyncio.to_thread(
            cls[5].predict, *song("[verse] 5", "pop"), api_name="/generate_song"
        )
    assert "queue is full" in str(refused.value) and "请约" in str(refused.value)
    await finish(rig[0])
    await asyncio.gather(*(asyncio.to_thread(j.result, 90) for j in jobs))
