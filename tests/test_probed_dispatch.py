"""Nothing is dispatched to an engine before a probe has seen it up (issue #18 §5).

A queued job (new or restored at a start) goes only to an engine whose probe
verdict is "up"; "not yet probed" holds the waiting room until the first answer,
and that answer starts the next job in the same step. An admit request keeps
taking an engine not yet probed (a fresh gatekeeper must not refuse its first
request). The pure rule (``engines.available``) and the gate, then the waiting
room in process (no probe runs here: the test gives the verdicts). The restart
with the engine down is ``test_restore_e2e.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from echo_engine import EchoEngine
from support import ProductionLikeServer, eventually, settle

from gatekeeper.app.state import AppState
from gatekeeper.app.wiring import build_proxy_app, create_state
from gatekeeper.config import DEFAULT_ENGINE, load_config
from gatekeeper.core.admission import Gate, GateLimits, Rejection
from gatekeeper.core.asyncutil import cancel_and_wait
from gatekeeper.core.engines import EngineSlots, available, no_engine_reason, pick_engine
from gatekeeper.core.estimator import DurationEstimator
from gatekeeper.core.lease import Lease
from gatekeeper.lifecycle.probe import first_verdicts, probe_loop

A, B = EngineSlots("a", 1), EngineSlots("b", 1)


@pytest.mark.parametrize(
    ("verdict", "admit", "queued"),
    [(True, True, True), (None, True, False), (False, False, False)],
)
def test_available(verdict: bool | None, admit: bool, queued: bool) -> None:
    assert available(verdict) is admit
    assert available(verdict, probed_only=True) is queued


@pytest.mark.parametrize(
    ("up", "picked", "reason"),
    [
        ({}, None, "engine_down"),  # no probe answered yet: a queued job waits
        ({"a": None, "b": True}, "b", None),
        ({"a": True}, "a", None),
        ({"a": False, "b": None}, None, "engine_down"),
    ],
)
def test_pick_engine_for_a_queued_job(
    up: dict[str, bool | None], picked: str | None, reason: str | None
) -> None:
    assert pick_engine((A, B), {}, up, probed_only=True) == picked
    if reason is not None:
        assert no_engine_reason((A, B), {}, up, probed_only=True) == reason


def test_no_engine_reason_is_busy_when_a_probed_engine_is_full() -> None:
    assert no_engine_reason((A, B), {"a": 1}, {"a": True}, probed_only=True) == "busy"


def test_gate_before_the_first_probe() -> None:
    """Before any probe answer: an admit request gets a lease, a queued job does not;
    after the probe's "up", a queued job does too."""
    gate = Gate(GateLimits(2, 30, engines=(A, B), down_retry_after=3), DurationEstimator(60.0))
    assert gate.check(0.0, probed_only=True) == Rejection("engine_down", 3)
    assert gate.try_admit("gen", 0.0, probed_only=True) == Rejection("engine_down", 3)
    admitted = gate.try_admit("gen", 0.0)
    assert isinstance(admitted, Lease) and admitted.engine == "a"
    gate.engine_up["b"] = True
    queued = gate.try_admit("gen", 0.0, probed_only=True)
    assert isinstance(queued, Lease) and queued.engine == "b"
    assert gate.in_flight == 2


# --------------------------------------------------------------------------- in process

RULES: dict[str, Any] = {
    "listen": "127.0.0.1:0",
    "admin_listen": "127.0.0.1:1",
    "jobs_path": "/jobs",
    "admission": {"max_in_flight": 1, "expected_seconds": 1},
    "routes": [
        {"name": "song", "match": {"path": "/admit/**"}, "action": "admit"},
        {"name": "queued", "match": {"path": "/queue/**"}, "action": "queue"},
    ],
}


@dataclass
class Rig:
    engine: EchoEngine
    state: AppState
    base: str
    http: aiohttp.ClientSession


@pytest.fixture
async def rig(aiohttp_server: Any) -> AsyncIterator[Rig]:
    engine = EchoEngine()
    upstream = await aiohttp_server(engine.app())
    doc = {**RULES, "upstream": {"url": str(upstream.make_url("")).rstrip("/")}}
    st = await create_state(load_config(yaml.safe_dump(doc)))
    server = ProductionLikeServer(build_proxy_app(st, monitor=False, probe=False))
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        try:
            yield Rig(engine, st, str(server.make_url("")).rstrip("/"), http)
        finally:
            await server.close()


async def test_a_queued_job_waits_for_the_first_probe_answer(rig: Rig) -> None:
    """Submitted before any probe answer, the job stays queued whatever dispatches;
    the first "up" starts it in the same step, without waiting for the queue's tick."""
    jobs = rig.state.jobs
    assert jobs is not None
    headers = {"Prefer": "respond-async"}
    async with rig.http.post(rig.base + "/queue/x", data=b"song", headers=headers) as r:
        assert r.status == 202
        job_id = (await r.json())["id"]
    jobs.dispatch()  # what the tick does
    await settle()
    job = jobs.find(job_id)
    assert job is not None and job.state == "queued" and rig.engine.seen == []

    rig.state.set_engine_up(DEFAULT_ENGINE, True)
    job = jobs.find(job_id)
    assert job is not None and job.state == "running"
    assert await eventually(lambda: (j := jobs.find(job_id)) is not None and j.state == "done")
    assert [s.body for s in rig.engine.posts("/queue/")] == [b"song"]


async def test_an_admit_request_is_served_before_the_first_probe(rig: Rig) -> None:
    """Unchanged for admit routes: no probe answer yet is not "down"."""
    async with rig.http.post(rig.base + "/admit/x", data=b"song") as r:
        assert r.status == 200
    assert [s.body for s in rig.engine.posts("/admit/")] == [b"song"]


async def test_the_probe_loop_takes_the_first_verdicts_as_its_first_round(
    aiohttp_server: Any,
) -> None:
    """The verdicts probed before the listeners opened are the loop's first round: it
    publishes them and probes again only after ``probe.interval`` (before: it probed at
    once, so an engine that died in between was marked down by a second probe instead
    of by the first generation sent there, a race a test lost under load)."""
    probes: list[str] = []

    async def probe(request: web.Request) -> web.Response:
        probes.append(request.path)
        return web.Response(text="up")

    engine = web.Application()
    engine.router.add_get("/", probe)
    upstream = await aiohttp_server(engine)
    url = str(upstream.make_url("")).rstrip("/")
    doc = {**RULES, "upstream": {"url": url, "probe": {"interval": 30}}}
    cfg = load_config(yaml.safe_dump(doc))
    published: list[tuple[str, bool]] = []
    first = await first_verdicts(cfg, lambda name, up: published.append((name, up)))
    assert first[DEFAULT_ENGINE].up and published == [(DEFAULT_ENGINE, True)] and probes == ["/"]
    loop = asyncio.create_task(
        probe_loop(lambda: cfg, lambda name, up: published.append((name, up)), None, first)
    )
    try:
        assert await eventually(lambda: len(published) == 2)
        await asyncio.sleep(0.2)
        assert published == [(DEFAULT_ENGINE, True)] * 2
        assert probes == ["/"]  # published, not probed again
    finally:
        await cancel_and_wait([loop])
