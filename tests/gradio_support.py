"""Helpers for tests that run the real Gradio test app (``tests/gradio_app.py``).

Gradio is a test extra (``pip install -e '.[test]'`` or ``'.[gradio-test]'``). Without it
these tests skip, unless ``GATEKEEPER_REQUIRE_E2E=1`` (CI), where a missing Gradio fails
them, as a missing binary does in ``support.find_binary``.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import REQUIRE_E2E, Proc, free_port, poll

APP = Path(__file__).with_name("gradio_app.py")


def gradio_available() -> bool:
    """Both the server library and the Python client import."""
    return all(importlib.util.find_spec(m) is not None for m in ("gradio", "gradio_client"))


def require_gradio() -> None:
    """Skip the test when Gradio is missing; fail it when CI requires end-to-end tests."""
    if gradio_available():
        return
    msg = "gradio and gradio_client not installed (pip install -e '.[gradio-test]')"
    if REQUIRE_E2E:
        pytest.fail(msg + " and GATEKEEPER_REQUIRE_E2E=1")
    pytest.skip(msg)


def start_gradio_app(
    tmp_path: Path, *, seconds: float = 1.0, root_path: str | None = None
) -> tuple[Proc, str]:
    """Run the test app on a free port; returns (proc, ``http://127.0.0.1:P``)."""
    require_gradio()
    port = free_port()
    out_dir = tmp_path / f"gradio-out-{port}"
    args = ["--port", str(port), "--seconds", str(seconds), "--out-dir", str(out_dir)]
    if root_path is not None:
        args += ["--root-path", root_path]
    p = Proc(
        args,
        tmp_path / f"gradio-app-{port}.log",
        ready=r"gradio-app listening on http://",
        timeout=60.0,  # importing gradio takes several seconds on a busy 2-core box
        program=[sys.executable, str(APP)],
    )
    return p, f"http://127.0.0.1:{port}"


async def get_json(url: str) -> Any:
    """GET ``url``: a 200's JSON (the Gradio e2e modules' one reader of app and admin JSON)."""
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200, url
        return await r.json()


async def app_idle(app: str, admin: str) -> None:
    """Nothing running in the app or in gatekeeper; the app's counters zeroed."""

    async def quiet() -> bool:
        stats = await get_json(app + "/_app/stats")
        return bool(stats["active"] == 0 and (await get_json(admin + "/status"))["in_flight"] == 0)

    await poll(quiet, timeout=30)
    async with aiohttp.ClientSession() as s, s.post(app + "/_app/reset") as r:
        assert r.status == 200


def song(lyric: str, description: str = "pop", prompt_audio: Any = None) -> tuple[Any, ...]:
    """``generate_song``'s arguments as gradio_client takes them (lyric, description,
    prompt_audio, genre; the ``gr.State`` is the app's, not the client's)."""
    return (lyric, description, prompt_audio, "Pop")


def join_data(lyric: str, description: str = "pop") -> list[Any]:
    """The ``data`` of a raw ``queue/join`` of ``generate_song``: its five inputs, the
    prompt none and the ``gr.State`` null (the app holds it per session)."""
    return [lyric, description, None, "Pop", None]


# A song that runs until the test ends it with :func:`finish` (tests/gradio_app.py's
# description "seconds=N"): a minute, so one progress step (0.1 s) shows in /status.
HELD = "seconds=60"


async def finish(app: str, running: int = 1) -> None:
    """End the app's ``running`` song(s) now, once they run (each answers with its audio)."""

    ended = 0

    async def ended_all() -> bool:  # a song between two of its steps is ended at its next
        nonlocal ended
        if (await get_json(app + "/_app/stats"))["active"] >= running - ended:
            async with aiohttp.ClientSession() as s, s.post(app + "/_app/finish") as r:
                assert r.status == 200, await r.text()
                ended += (await r.json())["finished"]
        assert ended <= running, ended
        return ended == running

    await poll(ended_all, timeout=30)


def gradio_client(url: str) -> Any:
    """A quiet gradio_client.Client of the app behind ``url``."""
    from gradio_client import Client

    return Client(url + "/", verbose=False)


def close_clients(clients: list[Any], *, wait: bool = False) -> None:
    """Close gradio_clients together and empty ``clients``. Each ``close()`` waits up to a
    second for its heartbeat thread (blocked reading until the app's next heartbeat), so
    each runs in a daemon thread of its own; ``wait``: until they are done. Without it the
    heartbeat threads end when their stream next speaks or closes (gatekeeper ends idle
    Gradio streams when it stops; an app alone waits for them: wait there)."""
    threads = [threading.Thread(target=c.close, daemon=True) for c in clients]
    for t in threads:
        t.start()
    if wait:
        for t in threads:
            t.join()
    clients.clear()
