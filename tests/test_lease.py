"""The one owner of an admission slot: ``core.lease.Lease``, the rule "released exactly
once" enforced in one place, and every path (admit cancel/finish, queue job, Gradio
event) going through it. Pure tests first, then each path in-process."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from support import ADMIT_ROUTES, eventually

from gatekeeper.app.state import AppState
from gatekeeper.app.wiring import build_proxy_app, create_state
from gatekeeper.config import Config, load_config
from gatekeeper.core.admission import Gate, GateLimits
from gatekeeper.core.estimator import DurationEstimator
from gatekeeper.core.lease import Lease
from gatekeeper.enginesim import SimConfig, create_app
from gatekeeper.gradio.events import GradioEvents
from gatekeeper.observability.metrics import Metrics
from gatekeeper.proxy.record import RequestRecord

ServerFactory = Callable[..., Awaitable[TestServer]]
ClientFactory = Callable[..., Awaitable[TestClient]]


def _gate(slots: int = 2) -> Gate:
    return Gate(GateLimits(max_in_flight=slots, retry_after_default=30), DurationEstimator(60))


def _lease(gate: Gate, now: float = 0.0) -> Lease:
    lease = gate.try_admit("generate", now)
    assert isinstance(lease, Lease)
    return lease


# --------------------------------------------------------------------------- the rule


def test_second_release_is_a_counted_no_op() -> None:
    """The first release frees the slot; every later one frees nothing and is counted,
    on the lease and on the gate, so a path that releases twice shows in a test."""
    gate = _gate()
    lease, other = _lease(gate), _lease(gate)
    assert lease.release() is True
    assert (gate.in_flight, lease.repeats, gate.repeat_releases) == (1, 0, 0)
    assert lease.release() is False
    assert lease.release() is False
    assert (gate.in_flight, lease.repeats, gate.repeat_releases) == (1, 2, 2)
    assert gate.running() == [other]  # the other lease kept its slot: no double free


class _Boom(Exception):
    pass


@pytest.mark.parametrize(
    ("ending", "handed", "released"),
    [
        ("return", False, True),
        ("error", False, True),
        ("cancel", False, True),
        ("return", True, False),
        ("error", True, False),
        ("cancel", True, False),
    ],
)
async def test_with_block_releases_unless_handed_over(
    ending: str, handed: bool, released: bool
) -> None:
    """Leaving the taker's ``with`` block releases the lease however it is left (a
    return, an error, a cancellation), unless it was handed over first: then the new
    holder owns it and leaving releases nothing."""
    gate = _gate()
    lease = _lease(gate)

    async def body() -> None:
        with lease:
            if handed:
                lease.hand_over("gradio-event")
            if ending == "error":
                raise _Boom
            if ending == "cancel":
                raise asyncio.CancelledError

    if ending == "return":
        await body()
    else:
        with pytest.raises(_Boom if ending == "error" else asyncio.CancelledError):
            await body()
    assert lease.released is released
    assert gate.in_flight == (0 if released else 1)
    assert lease.holder == ("-" if released else "gradio-event")
    assert gate.repeat_releases == 0


@pytest.mark.parametrize("ending", ["result", "error", "cancelled"])
async def test_follow_releases_when_the_task_ends(ending: str) -> None:
    """A lease that follows a task is held while the task runs and released once when it
    ends, whatever the ending; a done-callback added before ``follow`` still sees the
    slot held."""
    gate = _gate()
    lease = _lease(gate)
    started = asyncio.Event()
    seen_in_flight: list[int] = []

    async def work() -> str:
        started.set()
        if ending == "error":
            raise _Boom
        if ending == "cancelled":
            await asyncio.sleep(3600)
        return "ok"

    task = asyncio.create_task(work())
    task.add_done_callback(lambda _: seen_in_flight.append(gate.in_flight))
    with lease:
        lease.follow(task, "queue-job")
    assert (lease.holder, gate.in_flight) == ("queue-job", 1)  # the with block let it be
    await started.wait()
    if ending == "cancelled":
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)
    assert seen_in_flight == [1]
    assert lease.released and gate.in_flight == 0 and gate.repeat_releases == 0


def test_an_unreleased_lease_stays_visible_with_its_holder() -> None:
    """A lease that no path releases is not lost: the gate lists it, oldest first, with
    the holder that should have released it and when it started."""
    gate = _gate(3)
    a, b = _lease(gate, 1.0), _lease(gate, 2.0)
    b.hand_over("finish-relay")
    a.release()
    held = gate.running()
    assert [(x.holder, x.started_at) for x in held] == [("finish-relay", 2.0)]


# --------------------------------------------------------------------------- every path


@pytest.fixture
async def engine(aiohttp_server: ServerFactory) -> TestServer:
    return await aiohttp_server(
        create_app(SimConfig(seconds=0.3, burn_cpu=False, memory_mb=0, progress_interval=0.1))
    )


def _rules(upstream: str, *, action: str, disconnect: str) -> Config:
    routes = yaml.safe_load(ADMIT_ROUTES)["routes"]
    if action == "queue":
        routes = [{"name": "generate", "match": {"path": "/generate/**"}, "action": "queue"}]
    doc: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:1",
        "upstream": {"url": upstream},
        "admission": {"on_client_disconnect": disconnect, "max_in_flight": 1},
        "routes": routes,
    }
    return load_config(yaml.safe_dump(doc))


@pytest.mark.parametrize(
    ("action", "disconnect", "holder"),
    [
        ("admit", "cancel", "taker"),
        ("admit", "finish", "finish-relay"),
        ("queue", "finish", "queue-job"),
    ],
)
async def test_each_path_holds_its_lease_and_releases_it_once(
    engine: TestServer,
    aiohttp_client: ClientFactory,
    action: str,
    disconnect: str,
    holder: str,
) -> None:
    """A generation on each path: while it runs, its lease is held by that path's owner;
    once answered, the slot is free and no release was repeated."""
    st: AppState = await create_state(
        _rules(str(engine.make_url("")).rstrip("/"), action=action, disconnect=disconnect)
    )
    st.set_upstream_up(True)  # the probe's word (none runs here): a queued job waits for it
    client = await aiohttp_client(build_proxy_app(st, monitor=False, probe=False))
    holders: list[str] = []

    async def watch() -> None:
        while True:
            holders.extend(lease.holder for lease in st.gate.running())
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    try:
        resp = await client.post("/generate", json={"lyrics": "la la", "description": "pop"})
        assert resp.status == 200
        await resp.read()
        assert await eventually(lambda: st.gate.in_flight == 0)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert holder in holders
    assert st.gate.repeat_releases == 0


async def test_gradio_event_holds_the_lease_until_it_ends() -> None:
    """A Gradio event takes the join's lease over; ending it releases the slot once, and
    ending it again (a duplicate completion) releases nothing more."""
    gate = _gate()
    events = GradioEvents(gate, Metrics(version="test"), lambda: 0.0, lambda *_: None)
    lease = _lease(gate)
    with lease:
        events.add(
            event_id="e1",
            session="s1",
            route="generate",
            api_name=None,
            lease=lease,
            rec=RequestRecord("rid", None, "POST", "/queue/join"),
            timeout=60.0,
        )
    assert (lease.holder, gate.in_flight) == ("gradio-event", 1)
    assert events.end("e1", "completed", success=True) is True
    assert events.end("e1", "completed", success=True) is False
    assert gate.in_flight == 0 and gate.repeat_releases == 0
