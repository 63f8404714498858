"""Gatekeeper.drain, in process: it waits on the gate's idle event, logs and times out."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gatekeeper.app.process import Gatekeeper
from gatekeeper.app.wiring import create_state
from gatekeeper.config import load_config
from gatekeeper.core.lease import Lease


async def _settle(n: int = 20) -> None:
    """Let ready tasks run without letting the clock advance."""
    for _ in range(n):
        await asyncio.sleep(0)


async def _gatekeeper(rules: str) -> Gatekeeper:
    cfg = load_config(rules)
    gk = Gatekeeper(cfg)
    gk.state = await create_state(cfg)
    return gk


async def test_drain_returns_as_soon_as_the_last_generation_ends() -> None:
    """The drain wakes on the release itself, not on a poll tick: no clock time passes."""
    gk = await _gatekeeper("shutdown: {drain_timeout: 60s, drain_log_interval: 60s, linger: 0s}")
    assert gk.state is not None
    try:
        ticket = gk.state.gate.try_admit("generate", gk.state.clock())
        assert isinstance(ticket, Lease)
        drain = asyncio.create_task(gk.drain())
        await _settle()
        assert not drain.done()
        assert gk.state.gate.draining is True
        ticket.release()
        await _settle()
        assert drain.done() and drain.result() is True
    finally:
        await gk.state.runtime.close()


async def test_drain_logs_while_waiting_and_gives_up_at_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A generation outliving drain_timeout: progress lines every drain_log_interval,
    then a warning and False."""
    gk = await _gatekeeper(
        "shutdown: {drain_timeout: 300ms, drain_log_interval: 100ms, linger: 0s}"
    )
    assert gk.state is not None
    try:
        assert isinstance(gk.state.gate.try_admit("generate", gk.state.clock()), Lease)
        with caplog.at_level(logging.INFO, logger="gatekeeper"):
            assert await asyncio.wait_for(gk.drain(), timeout=5.0) is False
        waiting = [r for r in caplog.records if "draining: waiting for 1" in r.getMessage()]
        assert len(waiting) >= 2
        assert any("drain timeout (0.3s) reached" in r.getMessage() for r in caplog.records)
    finally:
        await gk.state.runtime.close()
