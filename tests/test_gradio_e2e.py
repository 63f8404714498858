"""gatekeeper (the real CLI) in front of a real Gradio app, driven by gradio_client and
headless Chromium: one generation at a time, the refusal's text shown by both clients,
the light function and the page unaffected, and a closed tab's job still holding the slot
until the app has finished it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import Browser
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

# linger 0s: nothing here fetches a result after the last generation. max_waiting 0:
# no join waits (the waiting joins of issue #19 are tests/test_gradio_queue_e2e.py), so
# a second one is refused, and the refusal's text is what both clients show.
RULES = """
admission:
  expected_seconds: 120
  queue: {max_waiting: 0}
shutdown:
  linger: 0s
routes:
  - name: song
    match: {path: /**, api_name: [generate_song, generate_song_1]}
    action: gradio
"""

READY = "[...document.querySelectorAll('button')].length >= 3"
# The song the page shows: Gradio 6's player keeps <audio> empty; the download link has it.
SONG_URL = """(() => {
    const link = document.querySelector('a[data-testid="download-link"][href*="file="]');
    return link ? link.getAttribute('href') : null;
})()"""
# The text of Gradio's error toasts on the page.
TOASTS = """[...document.querySelectorAll('[data-testid="toast-body"], .toast-body')]
    .map(e => e.innerText).join(' | ')"""
# A toast is on screen and no animation of it (or of a box around it) is still running:
# Gradio fades toasts in with a CSS animation, removed when it ends.
TOAST_SETTLED = """(() => {
    const body = document.querySelector('[data-testid="toast-body"], .toast-body');
    if (!body) return null;
    const moving = document.getAnimations().some(a => a.playState !== 'finished'
        && a.effect && a.effect.target && a.effect.target.contains(body));
    return moving ? null : true;
})()"""


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """(app URL, gatekeeper URL, admin URL): generate_song behind gatekeeper, a minute
    long: each song runs until its test ends it (gradio_support.finish), however slow the
    box (a browser tab cannot ask for a HELD song)."""
    require_gradio()
    tmp = tmp_path_factory.mktemp("gradio-e2e")
    procs: list[Proc] = []
    try:
        app, app_url = start_gradio_app(tmp, seconds=60.0)
        procs.append(app)
        gk, url, admin = start_gatekeeper(
            tmp, RULES + f"jobs: {{dir: '{tmp / 'state'}'}}\n", app_url
        )
        procs.append(gk)
        yield app_url, url, admin
        assert gk.stop(timeout=10) == 0  # idle Gradio streams are ended at stop, not waited for
        assert "Traceback" not in gk.output()
    finally:
        for p in reversed(procs):
            p.stop()


async def idle(rig: tuple[str, str, str]) -> None:
    """Nothing running in the app or in gatekeeper; the app's counters zeroed."""
    app, _, admin = rig
    await app_idle(app, admin)


async def test_gradio_client_one_generation_at_a_time(rig: tuple[str, str, str]) -> None:
    """Two gradio_client jobs at once: the app runs one; the other raises AppError with
    gatekeeper's detail (not Gradio's generic text). The light function answers while the
    song runs, and the slot is held for the whole job, not for the join."""
    app, url, admin = rig
    await idle(rig)
    first_client = await asyncio.to_thread(gradio_client, url)
    # Held (gradio_support.HELD): the refusal, the echo and the checks below happen while
    # it runs however loaded the box (a timed song of 3 s ended first on a busy one).
    first = first_client.submit(*song("[verse] one", HELD), api_name="/generate_song")

    async def running() -> bool:
        return bool((await get_json(app + "/_app/stats"))["active"] == 1)

    await poll(running, timeout=20)
    status = await get_json(admin + "/status")
    assert status["in_flight"] == 1 and status["running"][0]["route"] == "song"
    second_client = await asyncio.to_thread(gradio_client, url)
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as refused:
        await asyncio.to_thread(
            second_client.predict, *song("[verse] two", "rock"), api_name="/generate_song_1"
        )
    assert "queue is full" in str(refused.value) and "请约" in str(refused.value)
    echo = await asyncio.to_thread(second_client.predict, "still here", api_name="/echo")
    assert echo == "still here"
    assert (await get_json(admin + "/status"))["in_flight"] == 1
    await finish(app)
    audio, _info = await asyncio.to_thread(first.result, 30)
    assert Path(audio).suffix == ".wav"
    stats = await get_json(app + "/_app/stats")
    assert stats == {"active": 0, "peak": 1, "started": 1, "completed": 1}

    async def freed() -> bool:
        return bool((await get_json(admin + "/status"))["in_flight"] == 0)

    await poll(freed, timeout=10)
    doc = await get_json(admin + "/status")
    assert doc["rejections_by_reason"].get("queue_full", 0) >= 1
    assert doc["expected_samples"] >= 1  # the whole job was learned, not the join's ms


async def test_browser_two_tabs_and_the_refusal_toast(
    rig: tuple[str, str, str], tmp_path: Path
) -> None:
    """The page loads unchanged through gatekeeper; tab 1's click makes a song; tab 2's
    click while it runs shows gatekeeper's message in Gradio's error toast. The
    screenshot of tab 2 is the README's (GATEKEEPER_SCREENSHOT_DIR keeps a copy)."""
    app, url, admin = rig
    await idle(rig)
    async with Browser.start(tmp_path) as browser:
        one, two = await browser.new_tab(), await browser.new_tab()
        for tab in (one, two):
            await tab.navigate(url + "/")
            await tab.wait_for(READY, timeout=30)
        await one.click_button("Generate")

        async def running() -> bool:
            return bool((await get_json(admin + "/status"))["in_flight"] == 1)

        await poll(running, timeout=20)
        await two.click_button("Generate")
        toast = await two.wait_for(
            f"(() => {{ const t = {TOASTS}; return t || null; }})()", timeout=20
        )
        assert "queue is full" in toast and "请约" in toast, toast
        await two.wait_for(TOAST_SETTLED, timeout=10)  # the toast has faded in
        shot = await two.screenshot(tmp_path / "gradio-refused.png")
        keep = os.environ.get("GATEKEEPER_SCREENSHOT_DIR")
        if keep:
            shutil.copy(shot, Path(keep) / "gradio-refused.png")
        await finish(app)
        src = await one.wait_for(SONG_URL, timeout=30)
        assert src.startswith(url + "/") and src.endswith(".wav")  # URLs point at the proxy
    stats = await get_json(app + "/_app/stats")
    assert stats["completed"] == 1 and stats["peak"] == 1


async def test_tab_closed_mid_job_holds_the_slot_until_the_app_finishes(
    rig: tuple[str, str, str], tmp_path: Path
) -> None:
    """The tab closes while its song is generated: Gradio runs the job anyway, so the slot
    stays taken (gatekeeper reads the session's stream itself) and frees when it ends."""
    app, url, admin = rig
    await idle(rig)
    # Connections other clients of this module's rig may still hold open (keep-alive).
    before = metric(await wait_metrics(admin, lambda t: True), "gatekeeper_client_connections")
    async with Browser.start(tmp_path) as browser:
        tab = await browser.new_tab()
        await tab.navigate(url + "/")
        await tab.wait_for(READY, timeout=30)
        await tab.click_button("Generate")

        async def started() -> bool:
            return bool((await get_json(app + "/_app/stats"))["active"] == 1)

        await poll(started, timeout=20)
        await tab.close()
    # gatekeeper has seen every connection of the closed browser go
    await wait_metrics(admin, lambda t: metric(t, "gatekeeper_client_connections") <= before)
    assert (await get_json(admin + "/status"))["in_flight"] == 1
    assert (await get_json(app + "/_app/stats"))["active"] == 1
    await finish(app)  # the app finishes the closed tab's song now

    async def finished() -> bool:
        # gatekeeper first, then the app: a slot seen free while the app is seen still
        # running *afterwards* was freed too early (the other order raced the app's end).
        in_flight = (await get_json(admin + "/status"))["in_flight"]
        stats = await get_json(app + "/_app/stats")
        assert in_flight == 1 or stats["active"] == 0, "slot freed while the app still ran"
        return bool(stats["completed"] == 1 and in_flight == 0)

    await poll(finished, timeout=30)
