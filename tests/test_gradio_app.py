"""The Gradio test app, its helpers and the browser driver, without gatekeeper.

These pin down what the Gradio-aware tests rely on: the app serves a real Gradio page and
queue, ``/_app/stats`` counts generations, ``gradio_client`` and a headless browser both
reach ``generate_song``.
"""

from __future__ import annotations

import asyncio
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from browser import Browser
from gradio_support import close_clients, require_gradio, song, start_gradio_app
from support import Proc

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

# The URL of the song the page shows. Gradio 6.31's audio output keeps its <audio> element
# empty (no src, class "hidden") and plays through a waveform that fetches the file as a
# blob; the file URL is on the download link next to the player.
SONG_URL = """(() => {
    const player = document.querySelector('audio[data-testid="audio-player-Song"]');
    const link = document.querySelector('a[data-testid="download-link"][href*="file="]');
    return player && link ? (player.getAttribute('src') || link.getAttribute('href')) : null;
})()"""


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One test app with 1-second generations for the module (importing gradio is slow)."""
    require_gradio()
    proc, url = start_gradio_app(tmp_path_factory.mktemp("gradio"), seconds=1.0)
    try:
        yield url
    finally:
        proc.stop()


@pytest.fixture
def app(app_server: str) -> str:
    """The shared app's base URL, its counters zeroed."""
    with urllib.request.urlopen(urllib.request.Request(app_server + "/_app/reset", method="POST")):
        pass
    return app_server


_OPEN: list[object] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Each test's gradio_clients are closed after it, without waiting a second each for
    its heartbeat thread: the app's stop closes their streams (tests/gradio_app.py gives
    open streams a second)."""
    yield
    close_clients(_OPEN)


def _client(url: str):  # type: ignore[no-untyped-def]
    from gradio_client import Client

    client = Client(url + "/", verbose=False, download_files=True)
    _OPEN.append(client)
    return client


async def _stats(url: str) -> dict[str, int]:
    async with aiohttp.ClientSession() as s, s.get(url + "/_app/stats") as r:
        assert r.status == 200
        data: dict[str, int] = await r.json()
        return data


async def test_app_serves_config_with_api_names(app: str) -> None:
    """/config lists generate_song, generate_song_1 and echo as fn_index 0, 1, 2, queued;
    the counters start at zero."""
    async with aiohttp.ClientSession() as s, s.get(app + "/config") as r:
        assert r.status == 200
        config = await r.json()
    assert config["protocol"] == "sse_v3"
    assert config["api_prefix"] == "/gradio_api"
    deps = {d["id"]: d["api_name"] for d in config["dependencies"]}
    assert deps == {0: "generate_song", 1: "generate_song_1", 2: "echo"}
    assert all(d["queue"] for d in config["dependencies"])
    assert await _stats(app) == {"active": 0, "peak": 0, "started": 0, "completed": 0}


async def test_client_predict_returns_audio_and_is_counted(app: str) -> None:
    """gradio_client's predict on /generate_song returns a WAV path; stats count one run."""
    client = await asyncio.to_thread(_client, app)
    audio, info = await asyncio.to_thread(
        client.predict, *song("[verse] hi", "pop"), api_name="/generate_song"
    )
    assert Path(audio).suffix == ".wav"
    assert (await asyncio.to_thread(Path(audio).read_bytes))[:4] == b"RIFF"
    assert info == "generated 1 song(s), Pop"
    assert await _stats(app) == {"active": 0, "peak": 1, "started": 1, "completed": 1}
    async with aiohttp.ClientSession() as s, s.post(app + "/_app/reset") as r:
        assert r.status == 200
    assert await _stats(app) == {"active": 0, "peak": 0, "started": 0, "completed": 0}


async def test_two_listeners_share_one_slot(app: str) -> None:
    """generate_song and generate_song_1 submitted together never run at the same time."""
    client = await asyncio.to_thread(_client, app)
    jobs = [
        client.submit(*song("a", "b"), api_name="/generate_song"),
        client.submit(*song("c", "d"), api_name="/generate_song_1"),
    ]
    results = await asyncio.gather(*(asyncio.to_thread(j.result, 20) for j in jobs))
    assert all(Path(audio).suffix == ".wav" for audio, _ in results)
    stats = await _stats(app)
    assert stats["completed"] == 2 and stats["peak"] == 1


async def test_light_fn_echoes(app: str) -> None:
    """The echo listener answers at once and is not counted as a generation."""
    client = await asyncio.to_thread(_client, app)
    assert await asyncio.to_thread(client.predict, "hello", api_name="/echo") == "hello"
    assert (await _stats(app))["started"] == 0


async def test_browser_generates_a_song(app: str, tmp_path: Path) -> None:
    """In headless chromium, clicking "Generate" ends with the song's player and file URL."""
    async with Browser.start(tmp_path) as browser:
        tab = await browser.new_tab()
        await tab.navigate(app + "/")
        await tab.wait_for("[...document.querySelectorAll('button')].length >= 3", timeout=20)
        await tab.click_button("Generate")
        src = await tab.wait_for(SONG_URL, timeout=20)
        assert src.startswith(app + "/gradio_api/file=") and src.endswith(".wav")
        shot = await tab.screenshot(tmp_path / "generated.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert shot.stat().st_size > 10_000
    assert (await _stats(app))["completed"] == 1


async def test_second_tab_clicks_too(app: str, tmp_path: Path) -> None:
    """Two tabs (two Gradio sessions) each get a song; the app ran them one at a time."""
    async with Browser.start(tmp_path) as browser:
        tabs = [await browser.new_tab(), await browser.new_tab()]
        for tab in tabs:
            await tab.navigate(app + "/")
            await tab.wait_for("[...document.querySelectorAll('button')].length >= 3", timeout=20)
        for tab in tabs:
            await tab.click_button("Generate")
        for tab in tabs:
            await tab.wait_for(SONG_URL, timeout=20)
    stats = await _stats(app)
    assert stats["completed"] == 2 and stats["peak"] == 1


def test_app_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    """SIGTERM stops the app with exit status 0."""
    proc: Proc
    proc, _ = start_gradio_app(tmp_path, seconds=0.1)
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    proc.stop()
