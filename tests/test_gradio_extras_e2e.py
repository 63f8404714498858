"""gatekeeper (the real CLI) in front of the real Gradio test app, driven by gradio_client:
the engine's own progress frames in ``/status``, ``gatekeeper status`` and a metric; a
completion without audio counted as a failed generation that teaches no duration; and
the access log telling what the client got for a refusal told inside the stream.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from gradio_support import (
    HELD,
    app_idle,
    finish,
    get_json,
    gradio_client,
    require_gradio,
    song,
    start_gradio_app,
)
from support import Proc, metric, poll, start_gatekeeper, wait_metrics

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

RULES = """
admission:
  expected_seconds: 120
  queue:
    max_waiting: 0   # a second song is refused (told in its stream), not held
shutdown:
  linger: 0s
routes:
  - name: song
    match: {path: /**, api_name: [generate_song, generate_song_1]}
    action: gradio
"""

ERRORS = 'gatekeeper_upstream_request_duration_seconds_count{code="error",route="song"}'
OK = 'gatekeeper_upstream_request_duration_seconds_count{code="200",route="song"}'


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str, Proc]]:
    """(app URL, gatekeeper URL, admin URL, gatekeeper): a half-second generate_song behind
    gatekeeper, JSON logs. A test that looks at a song while it runs makes it hours long
    and ends it (``gradio_support.HELD`` and ``finish``)."""
    require_gradio()
    tmp = tmp_path_factory.mktemp("gradio-extras")
    procs: list[Proc] = []
    try:
        app, app_url = start_gradio_app(tmp, seconds=0.5)
        procs.append(app)
        gk, url, admin = start_gatekeeper(tmp, RULES, app_url, "--log-format", "json")
        procs.append(gk)
        yield app_url, url, admin, gk
        assert gk.stop(timeout=10) == 0
        assert "Traceback" not in gk.output()
    finally:
        for p in reversed(procs):
            p.stop()


def access_lines(gk: Proc) -> list[dict[str, Any]]:
    out = []
    for line in gk.output().splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            if doc.get("logger") == "gatekeeper.access" and doc.get("message") == "request":
                out.append(doc)
    return out


async def test_the_engines_progress_shows_in_status_cli_and_metric(
    rig: tuple[str, str, str, Proc],
) -> None:
    """gr.Progress frames of the running gated event feed its running entry's progress
    and description in /status, `gatekeeper status` and
    gatekeeper_generation_progress_ratio; they go when it ends."""
    app, url, admin, _ = rig
    await app_idle(app, admin)
    # Held: it runs until `gatekeeper status` has shown it, however loaded the box.
    job = (await asyncio.to_thread(gradio_client, url)).submit(
        *song("[verse] progress", HELD), api_name="/generate_song"
    )
    seen: dict[str, Any] = {}

    async def reported() -> bool:
        running = (await get_json(admin + "/status"))["running"]
        if running and running[0]["progress"] is not None and running[0]["progress"] > 0:
            seen.update(running[0])
            return True
        return False

    await poll(reported, timeout=20)
    assert 0 < seen["progress"] <= 1 and seen["progress_description"] == "Generating"
    text = await wait_metrics(
        admin, lambda t: metric(t, "gatekeeper_generation_progress_ratio") > 0
    )
    assert metric(text, "gatekeeper_generation_progress_ratio") <= 1
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    shown = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gatekeeper", "status", "--admin", admin],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert shown.returncode == 0 and "(engine: Generating)" in shown.stdout, shown.stdout
    await finish(app)
    await asyncio.to_thread(job.result, 60)

    async def gone() -> bool:
        return bool((await get_json(admin + "/status"))["in_flight"] == 0)

    await poll(gone, timeout=10)
    text = await wait_metrics(admin, lambda t: True)
    assert metric(text, "gatekeeper_generation_progress_ratio") == 0


async def test_a_completion_without_audio_is_a_failed_generation(
    rig: tuple[str, str, str, Proc],
) -> None:
    """Invalid lyrics: the app answers no audio and a JSON error as a *successful*
    completion; gatekeeper counts a failed generation (the error code of the duration
    metric, reason no_result in the access log) and learns no duration from it."""
    app, url, admin, gk = rig
    await app_idle(app, admin)
    before = await get_json(admin + "/status")
    metrics = await wait_metrics(admin, lambda t: True)
    errors, oks = metric(metrics, ERRORS, 0.0), metric(metrics, OK, 0.0)
    c = await asyncio.to_thread(gradio_client, url)
    audio, info = await asyncio.to_thread(
        c.predict, *song("invalid lyrics", "pop"), api_name="/generate_song"
    )
    assert audio is None and "invalid lyrics" in info

    async def ended() -> bool:
        return bool((await get_json(admin + "/status"))["in_flight"] == 0)

    await poll(ended, timeout=10)
    after = await get_json(admin + "/status")
    assert after["expected_samples"] == before["expected_samples"]  # nothing learned
    metrics = await wait_metrics(admin, lambda t: metric(t, ERRORS, 0.0) == errors + 1)
    assert metric(metrics, OK, 0.0) == oks
    joins = [d for d in access_lines(gk) if d["path"].endswith("/queue/join")]
    assert joins[-1]["reason"] == "no_result" and joins[-1]["decision"] == "admitted"
    # A song with audio is a generation again.
    audio, _info = await asyncio.to_thread(
        c.predict, *song("[verse] fine", "pop"), api_name="/generate_song"
    )
    assert audio is not None
    await poll(ended, timeout=10)
    doc = await get_json(admin + "/status")
    assert doc["expected_samples"] == before["expected_samples"] + 1


async def test_a_refusal_told_in_the_stream_is_logged_as_what_the_client_got(
    rig: tuple[str, str, str, Proc],
) -> None:
    """A second song while one runs and the queue is full (``max_waiting: 0``): its join
    is answered 200 with gatekeeper's event id and its stream tells the refusal. Both
    access lines say status 200 and the bytes sent, decision rejected and the refusal's
    reason (not status=503 bytes_out=0)."""
    app, url, admin, gk = rig
    await app_idle(app, admin)
    # Held: the second client is made and refused (the queue is full at once) while it
    # runs, however loaded the box.
    first = (await asyncio.to_thread(gradio_client, url)).submit(
        *song("[verse] one", HELD), api_name="/generate_song"
    )

    async def running() -> bool:
        return bool((await get_json(admin + "/status"))["in_flight"] == 1)

    await poll(running, timeout=20)
    second = await asyncio.to_thread(gradio_client, url)
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError):
        await asyncio.to_thread(
            second.predict, *song("[verse] two", "rock"), api_name="/generate_song"
        )
    await finish(app)
    await asyncio.to_thread(first.result, 60)
    lines = access_lines(gk)
    refused = [d for d in lines if d["decision"] == "rejected" and d["route"] == "song"]
    join = [d for d in refused if d["path"].endswith("/queue/join")][-1]
    data = [d for d in refused if d["path"].endswith("/queue/data")][-1]
    for line in (join, data):
        assert line["status"] == 200 and line["bytes_out"] > 0, line
        assert line["reason"] == "queue_full", line
    assert data["bytes_out"] > join["bytes_out"]  # the frames with the detail
