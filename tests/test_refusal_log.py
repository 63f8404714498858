"""A flood of refusals writes a few access lines and one summary a second (issue #18 §8).

In-process: the app built as ``gatekeeper run`` builds it, with the loop clock
replaced by a frozen one so that every refusal of the test falls in one second
whatever the machine's load; the aggregator's timer writes the summary once the
clock has moved past that second and no request comes any more."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from support import ADMIT_ROUTES, ProductionLikeServer, eventually
from support import rules as rules_text

from gatekeeper.app.wiring import build_proxy_app, create_state
from gatekeeper.config import load_config
from gatekeeper.observability.logs import TextFormatter

ClientFactory = Callable[..., Awaitable[TestClient]]
N = 60


class FrozenClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _access(caplog: pytest.LogCaptureFixture, message: str) -> list[dict[str, Any]]:
    return [
        getattr(r, "fields", {})
        for r in caplog.records
        if r.name == "gatekeeper.access" and r.getMessage() == message
    ]


async def test_a_flood_of_refusals_logs_the_first_few_and_one_summary(
    aiohttp_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """N refusals in one second: ``log.refusals.per_client`` (default 5) lines, then one
    ``refusals`` summary counting all N; the rejection counter and metric count N."""
    base = {"listen": "127.0.0.1:0", "upstream": {"url": "http://127.0.0.1:9"}}
    cfg = load_config(rules_text(base, yaml.safe_load(ADMIT_ROUTES)))  # shipped log.refusals
    assert cfg.log.refusals.per_client == 5
    clock = FrozenClock(1000.2)
    state = await create_state(cfg, clock=clock)
    app = build_proxy_app(state, monitor=False, probe=False, alerts=False)
    client = await aiohttp_client(ProductionLikeServer(app))
    with caplog.at_level(logging.INFO, logger="gatekeeper.access"):
        for _ in range(N):  # one connection, one after the other: one client, one reason
            async with client.post("/batch-generate", json={}) as r:
                assert r.status == 410
        lines = [f for f in _access(caplog, "request") if f["path"] == "/batch-generate"]
        assert len(lines) == 5
        assert {(f["decision"], f["reason"]) for f in lines} == {("blocked", "blocked")}
        assert _access(caplog, "refusals") == []  # the second is not over
        clock.now = 1001.05  # it is now; no more traffic: the timer writes the summary
        assert await eventually(lambda: bool(_access(caplog, "refusals")), timeout=5)
        await asyncio.sleep(0.05)
    (summary,) = _access(caplog, "refusals")
    assert summary == {
        "refused": N,
        "unlogged": N - 5,
        "clients": 1,
        "reasons": {"blocked": {"refused": N, "unlogged": N - 5, "clients": 1}},
    }
    assert len(_access(caplog, "request")) == 5  # at most the first few + 1 summary
    assert state.counters.rejections_by_reason == {"blocked": N}  # the metrics stay exact
    metric = state.metrics.rejections.labels("batch-generate", "blocked")
    assert metric._value.get() == N


def test_the_summary_line_in_text_names_each_reason() -> None:
    """``--log-format text``: the nested counts become dotted keys a person can grep."""
    record = logging.LogRecord("gatekeeper.access", logging.INFO, "", 0, "refusals", None, None)
    record.fields = {
        "refused": 9,
        "unlogged": 4,
        "clients": 2,
        "reasons": {"busy": {"refused": 9, "unlogged": 4, "clients": 2}},
    }
    line = TextFormatter().format(record)
    assert line.endswith(
        "gatekeeper.access refusals refused=9 unlogged=4 clients=2"
        " reasons.busy.refused=9 reasons.busy.unlogged=4 reasons.busy.clients=2"
    )
