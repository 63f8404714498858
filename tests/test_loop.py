"""The event loop choice: uvloop when installed (the default), asyncio on request."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import aiohttp
import pytest
from support import start_engine, start_gatekeeper

from gatekeeper.lifecycle.eventloop import LoopUnavailable, loop_factory, run


def test_asyncio_is_the_stdlib_loop() -> None:
    """--loop asyncio never imports uvloop."""
    assert loop_factory("asyncio") == ("asyncio", None)


def test_auto_uses_uvloop_when_installed() -> None:
    """auto picks uvloop if it imports (the test extra installs it)."""
    pytest.importorskip("uvloop")
    name, factory = loop_factory("auto")
    assert name == "uvloop" and factory is not None


def test_without_uvloop_auto_falls_back_and_explicit_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No uvloop: auto runs on asyncio; --loop uvloop is a clear error naming the extra."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # makes `import uvloop` fail
    assert loop_factory("auto") == ("asyncio", None)
    with pytest.raises(LoopUnavailable, match=r"gatekeeper\[speed\]"):
        loop_factory("uvloop")


def test_run_returns_the_coroutine_result() -> None:
    """run() is asyncio.run on the chosen loop."""

    async def answer() -> int:
        return 42

    assert run(answer(), "asyncio") == 42


@pytest.mark.slow  # real processes
@pytest.mark.parametrize("loop", ["asyncio", "auto"])
async def test_gatekeeper_serves_on_either_loop(tmp_path: Path, loop: str) -> None:
    """The real process proxies a generation on the stdlib loop and on the default one."""
    engine, engine_url = start_engine(tmp_path, seconds=0.1)
    gk, url, _ = start_gatekeeper(tmp_path, "", engine_url, "--loop", loop)
    try:
        expected = "asyncio" if loop == "asyncio" else "uvloop"
        assert f"event loop: {expected}" in gk.output()
        async with (
            aiohttp.ClientSession() as http,
            http.post(url + "/generate", json={"lyrics": "la"}) as r,
        ):
            assert r.status == 200 and (await r.read())[:4] == b"RIFF"
    finally:
        assert gk.stop() == 0
        engine.stop()


def test_tune_gc_raises_the_gen0_threshold() -> None:
    """gatekeeper run collects cycles every 50,000 allocations, not every 700."""
    from gatekeeper.lifecycle.eventloop import GC_THRESHOLDS, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS and GC_THRESHOLDS[0] == 50_000
    finally:
        gc.set_threshold(*before)
