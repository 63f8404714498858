"""What gatekeeper logs when it starts, in process: its startup lines come first, then
what the background loops find (an overload already there, an engine that is down)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from pathlib import Path

import pytest
from support import eventually

from gatekeeper.app.process import Gatekeeper
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
        f"listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\njobs: {{dir: '{tmp_path}'}}\n"
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


async def test_probe_reports_a_down_engine_after_the_startup_lines(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """The probe starts once the listeners are bound: 'upstream ... is DOWN' follows the
    startup config lines and the 'listener bound' lines."""
    with socket.socket() as s:  # a port nothing listens on: the probe is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = load_config(
        f"listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\njobs: {{dir: '{tmp_path}'}}\n"
        f"upstream: {{url: 'http://127.0.0.1:{port}'}}\n"
    )
    caplog.set_level(logging.INFO, logger="gatekeeper")
    gk = Gatekeeper(cfg)
    try:
        await gk.start()
        assert await eventually(lambda: any("is DOWN" in m for m in _messages(caplog)))
    finally:
        await gk.stop()
    messages = _messages(caplog)
    down = _index(messages, f"upstream http://127.0.0.1:{port} is DOWN")
    assert _index(messages, "config: ") < down
    assert _index(messages, "admin listener bound to") < down


async def test_no_probe_runs_when_binding_fails(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A gatekeeper whose admin port is taken raises from start with no probe task
    started, so it never reports on the engine."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = load_config(
            f"listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:{port}\njobs: {{dir: '{tmp_path}'}}\n"
        )
        caplog.set_level(logging.INFO, logger="gatekeeper")
        gk = Gatekeeper(cfg)
        try:
            with pytest.raises(OSError):
                await gk.start()
            assert [t for t in asyncio.all_tasks() if t.get_name() == "gatekeeper-probe"] == []
        finally:
            await gk.stop()
    assert not [r for r in caplog.records if r.name == "gatekeeper.probe"]


async def test_startup_log_says_which_signals_are_live(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One 'signals:' line after the config lines: each signal live (and from where) or
    absent (and why)."""
    readings = tmp_path / "res.json"
    readings.write_text(json.dumps({"cpu_percent": 5, "memory_percent": 10, "cpu_pressure": 1}))
    cfg = load_config(
        f"listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\njobs: {{dir: '{tmp_path}'}}\n"
        f"admission:\n  resources: {{source: file, file: {readings}}}\n"
    )
    caplog.set_level(logging.INFO, logger="gatekeeper")
    gk = Gatekeeper(cfg)
    try:
        await gk.start()
    finally:
        await gk.stop()
    messages = _messages(caplog)
    line = messages[_index(messages, "signals: ")]
    assert line == (
        "signals: cgroup absent: not read with source: file; "
        f"cpu file {readings}; memory file {readings}; psi file {readings}; "
        f"gpu absent: not in file {readings}"
    )
    assert _index(messages, "config: ") < _index(messages, "signals: ")
    assert _index(messages, "signals: ") < _index(messages, "admin listener bound to")
