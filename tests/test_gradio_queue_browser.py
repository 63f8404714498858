"""Gradio joins waiting in gatekeeper's queue, seen in headless Chromium (issue #19): the
page shows Gradio's own queue indicator for a waiting tab, and a tab closed while it
waits leaves the queue. The rig (the real CLI in front of the real test app) is
``test_gradio_queue_e2e``'s."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import pytest
from browser import Browser, Tab
from gradio_support import finish
from support import poll
from test_gradio_queue_e2e import get_json, idle, rig

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
__all__ = ["rig"]  # the shared fixture
# The rig's song length here: a minute, so each song runs until the test ends it
# (gradio_support.finish) once the others were seen waiting, however slow the box.
SONG_SECONDS = 60.0

READY = "[...document.querySelectorAll('button')].length >= 3"
SONG_URL = """(() => {
    const link = document.querySelector('a[data-testid="download-link"][href*="file="]');
    return link ? link.getAttribute('href') : null;
})()"""
# Gradio's status tracker of a queued event: "queue: 2/3 | 1.2/10.0s"
QUEUE_TEXT = """(() => {
    const m = document.body.innerText.match(/queue: *(\\d+) *\\/ *(\\d+)/);
    return m ? m[1] + '/' + m[2] : null;
})()"""
DOCS = Path(__file__).resolve().parent.parent / "docs"


async def queue_text(tab: Tab) -> str | None:
    text = await tab.evaluate(QUEUE_TEXT)
    return text if isinstance(text, str) else None


async def open_tabs(browser: Browser, url: str, n: int) -> list[Tab]:
    tabs = [await browser.new_tab() for _ in range(n)]
    for tab in tabs:
        await tab.navigate(url + "/")
        await tab.wait_for(READY, timeout=30)
    return tabs


async def test_three_tabs_at_once_show_gradios_queue_indicator_and_all_get_songs(
    rig: tuple[str, str, str], tmp_path: Path
) -> None:
    """Three tabs click Generate at once: one runs, the other two show Gradio's own
    queue indicator with their places (1/2 and 2/2), and each tab ends with its song.
    The screenshot of a waiting tab is docs/gradio-waiting.png."""
    app, url, _ = rig
    await idle(rig)
    async with Browser.start(tmp_path) as browser:
        tabs = await open_tabs(browser, url, 3)
        await asyncio.gather(*(t.click_button("Generate") for t in tabs))
        shown: dict[int, str] = {}

        async def two_queued() -> bool:
            shown.clear()
            for i, t in enumerate(tabs):
                text = await queue_text(t)
                if text is not None:
                    shown[i] = text
            return sorted(shown.values()) == ["1/2", "2/2"]

        await poll(two_queued, timeout=20)
        waiting = tabs[next(i for i, s in shown.items() if s == "1/2")]
        shot = await waiting.screenshot(tmp_path / "gradio-waiting.png")
        if os.environ.get("GATEKEEPER_UPDATE_SCREENSHOTS"):
            shutil.copy(shot, DOCS / "gradio-waiting.png")
        keep = os.environ.get("GATEKEEPER_SCREENSHOT_DIR")
        if keep:
            shutil.copy(shot, Path(keep) / "gradio-waiting.png")
        for _ in tabs:  # one at a time, as each starts
            await finish(app)
        songs = [await t.wait_for(SONG_URL, timeout=60) for t in tabs]
        assert all(re.match(re.escape(url) + r"/.*\.wav$", s) for s in songs), songs
        assert len(set(songs)) == 3
    stats = await get_json(app + "/_app/stats")
    assert stats["completed"] == 3 and stats["peak"] == 1


async def test_a_tab_closed_while_waiting_leaves_the_queue(
    rig: tuple[str, str, str], tmp_path: Path
) -> None:
    """Tab 1 runs, tab 2 and tab 3 wait; tab 2 closes: it leaves the queue, tab 3 moves
    up to 1/1, and the app never runs tab 2's job (two songs made, not three)."""
    app, url, admin = rig
    await idle(rig)
    async with Browser.start(tmp_path) as browser:
        one, two, three = await open_tabs(browser, url, 3)
        await one.click_button("Generate")

        async def running() -> bool:
            return bool((await get_json(app + "/_app/stats"))["active"] == 1)

        await poll(running, timeout=20)
        await two.click_button("Generate")
        await two.wait_for(QUEUE_TEXT, timeout=20)
        await three.click_button("Generate")
        assert await three.wait_for(QUEUE_TEXT, timeout=20) == "2/2"
        await two.close()

        async def one_waits() -> bool:
            return bool((await get_json(admin + "/status"))["queue"]["waiting"] == 1)

        await poll(one_waits, timeout=10)
        moved = f"(() => {{ const t = {QUEUE_TEXT}; return t === '1/1' ? t : null; }})()"
        await three.wait_for(moved, timeout=10)
        await finish(app)
        await one.wait_for(SONG_URL, timeout=60)
        await finish(app)
        await three.wait_for(SONG_URL, timeout=60)
    stats = await get_json(app + "/_app/stats")
    assert stats["started"] == 2 and stats["completed"] == 2 and stats["peak"] == 1
