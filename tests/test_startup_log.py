"""What gatekeeper logs when it starts, in process: its startup lines come first, then
what the background loops find (an overload already there, an engine that is down)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from support import eventually

from gatekeeper.app import Gatekeeper
from gatekeeper.config import load_config


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def _index(messages: list[str], fragment: str) -> int:
    return next(i for i, m in enumerate(messages) if fragment in m)


async def test_overload_present_at_start_is_logged_after_the_startup_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """CPU over its threshold from the first sample: a WARNING says so, after the
    'listener bound' lines (the first sample itself is taken silently before binding)."""
    readings = tmp_path / "res.json"
    readings.write_text(json.dumps({"cpu_percent": 95, "memory_percent": 10}))
    cfg = load_config(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n"
        "admission:\n  sample_interval: 50ms\n"
        f"  resources: {{source: file, file: {readings}}}\n"
    )
    caplog.set_level(logging.INFO, logger="gatekeeper")
    gk = Gatekeeper(cfg)
    try:
        await gk.start()
        assert gk.state is not None and gk.state.gate.resources.cpu_overloaded

        def warned() -> bool:
            return any("overloaded=True" in m for m in _messages(caplog))

        assert await eventually(warned)
    finally:
        await gk.stop()
    messages = _messages(caplog)
    overload = _index(messages, "cpu 95.0% overloaded=True")
    assert caplog.records[overload].levelname == "WARNING"
    assert _index(messages, "admin listener bound to") < overload
    assert sum("overloaded=True" in m for m in messages) == 1
