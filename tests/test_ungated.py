"""Requests that look like generations but pass ungated (issue #18 §7): the pure decision,
the counter and its rate-limited warning, `gatekeeper check`, and a real gatekeeper."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest
from support import Proc, metric, start_engine, start_gatekeeper

from gatekeeper.cli.status_view import status_report
from gatekeeper.config import load_config
from gatekeeper.observability.summary import config_warnings
from gatekeeper.observability.ungated import (
    LOG_INTERVAL,
    UngatedWatch,
    looks_like_generation,
    threshold,
)


@pytest.mark.parametrize(
    ("action", "method", "path", "head", "expected"),
    [
        ("pass", "POST", "/api/songs", 31.0, "slow_answer"),  # computed before answering
        ("pass", "GET", "/result/abc", 0.02, None),  # a download answers at once
        ("pass", "GET", "/progress/1/events", 0.01, None),  # a progress stream too
        ("pass", "POST", "/gradio_api/queue/join?x=1", 0.01, "gradio_join"),
        ("pass", "POST", "/queue/join", 0.01, "gradio_join"),  # Gradio 3.x/4.x
        ("pass", "POST", "/gradio_api/call/generate_song", 0.01, "gradio_join"),
        ("pass", "GET", "/gradio_api/queue/data", 0.01, None),  # the session stream
        ("pass", "POST", "/api/songs", None, None),  # the engine never answered
        ("queue", "POST", "/generate", 600.0, None),  # gated: fine
        ("admit", "POST", "/gradio_api/queue/join", 0.01, None),
        ("gradio", "POST", "/gradio_api/queue/join", 0.01, None),
        ("block", "POST", "/batch-generate", None, None),
    ],
)
def test_what_looks_like_an_ungated_generation(
    action: str, method: str, path: str, head: float | None, expected: str | None
) -> None:
    assert looks_like_generation(action, method, path, head, 30.0) == expected


def test_the_threshold_follows_the_expected_duration_within_bounds() -> None:
    assert threshold(600.0) == 30.0  # a real engine: half a minute before the head
    assert threshold(60.0) == 15.0  # the demo's simulator
    assert threshold(0.5) == 1.0


def test_one_warning_then_one_per_interval_with_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A box sending every song ungated gets a few lines a day, not one per request."""
    watch = UngatedWatch()
    caplog.set_level(logging.WARNING, logger="gatekeeper.ungated")

    def slow(now: float) -> str | None:
        return watch.observe(
            route="default",
            action="pass",
            method="POST",
            path="/api/songs?x=1",
            head_seconds=40.0,
            limit=30.0,
            now=now,
        )

    assert watch.status() is None
    assert slow(100.0) == "slow_answer"
    for t in range(101, 120):
        slow(float(t))
    assert (
        watch.observe(
            route="default",
            action="pass",
            method="GET",
            path="/x",
            head_seconds=0.1,
            limit=30.0,
            now=120.0,
        )
        is None
    )
    assert len(caplog.records) == 1
    assert "1 request(s) that look like generations passed ungated" in caplog.text
    assert "POST /api/songs" in caplog.text and "40.0s" in caplog.text
    slow(100.0 + LOG_INTERVAL)
    assert len(caplog.records) == 2
    assert "20 request(s)" in caplog.records[1].getMessage()
    assert watch.status() == {
        "count": 21,
        "by_route": {"default": 21},
        "last": {
            "route": "default",
            "method": "POST",
            "path": "/api/songs",
            "kind": "slow_answer",
            "head_seconds": 40.0,
        },
    }
    text = "\n".join(status_report({**_doc(), "ungated": watch.status()}))
    assert "WARNING     21 request(s) that look like generations passed ungated" in text


def _doc() -> dict[str, object]:
    from test_cli_status import BASE

    return dict(BASE)


def test_check_warns_when_no_route_gates_anything() -> None:
    only_pass = load_config("routes:\n  - {name: all, match: {path: /**}, action: pass}\n")
    assert any("no route gates a generation" in w for w in config_warnings(only_pass))
    assert not any("no route gates" in w for w in config_warnings(load_config("")))


RULES = """\
admission:
  expected_seconds: 600
log:
  ungated: {slow_answer: 1s}
routes:
  - {name: everything, match: {path: /**}, action: pass}
"""


def _ungated(kind: str) -> str:
    return f'gatekeeper_ungated_generations_total{{kind="{kind}",route="everything"}}'


async def test_a_slow_pass_answer_is_counted_and_warned_once(
    tmp_path: Path, procs: list[Proc]
) -> None:
    """A real gatekeeper whose routes gate nothing: an engine call that takes 1.5 s before
    its head (log.ungated.slow_answer 1 s; the derived threshold would be 30 s) and a
    Gradio join show in /status, in gatekeeper_ungated_generations_total (at 0 before) and
    one WARNING line."""
    engine, upstream = start_engine(tmp_path)
    procs.append(engine)
    gk, proxy, admin = start_gatekeeper(tmp_path, RULES, upstream)
    procs.append(gk)
    async with httpx.AsyncClient(timeout=30, trust_env=False) as c:
        assert (await c.get(proxy + "/_sim/sleep?seconds=0.01")).status_code == 200
        assert (await c.get(admin + "/status")).json()["ungated"] is None
        page = (await c.get(admin + "/metrics")).text
        for kind in ("slow_answer", "gradio_join"):
            assert metric(page, _ungated(kind)) == 0
        slow = [c.get(proxy + "/_sim/sleep?seconds=1.5") for _ in range(2)]  # side by side
        assert [r.status_code for r in await asyncio.gather(*slow)] == [200, 200]
        await c.post(proxy + "/gradio_api/queue/join", json={})
        doc = (await c.get(admin + "/status")).json()
        page = (await c.get(admin + "/metrics")).text
    assert metric(page, _ungated("slow_answer")) == 2
    assert metric(page, _ungated("gradio_join")) == 1
    assert "ungated_generations" in doc["warnings"]
    assert doc["ungated"]["count"] == 3
    assert doc["ungated"]["by_route"] == {"everything": 3}
    assert doc["ungated"]["last"]["kind"] == "gradio_join"
    out = gk.output()
    assert out.count("passed ungated") == 1, out
    assert "GET /_sim/sleep" in out and "no route gates a generation" in out
