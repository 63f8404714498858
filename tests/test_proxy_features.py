"""The proxy handler on its own: built from small ports (no application state), it
dispatches each outcome of the plan to the feature the app registered for it, and
answers the outcomes no feature was registered for itself."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from gatekeeper.config import Config, load_config
from gatekeeper.core.admission import Gate, Rejection
from gatekeeper.core.estimator import DurationEstimator
from gatekeeper.core.vocab import ErrorKind, Outcome
from gatekeeper.lifecycle.epochs import RuntimeUsage
from gatekeeper.lifecycle.runtime import Runtime, admission_limits
from gatekeeper.proxy.context import RequestContext
from gatekeeper.proxy.handler import Features, ProxyHandler
from gatekeeper.proxy.ports import ProxyPorts
from gatekeeper.proxy.record import RequestRecord

ClientFactory = Callable[..., Awaitable[TestClient]]

RULES = {
    "listen": "127.0.0.1:0",
    "admin_listen": "127.0.0.1:1",
    "upstream": {"url": "http://127.0.0.1:9"},
    "jobs_path": "/jobs",
    "status_path": "/status",
    "routes": [
        {"name": "generate", "match": {"path": "/generate"}, "action": "queue"},
        {"name": "app", "match": {"path": "/app/**"}, "action": "gradio"},
        {"name": "admin", "match": {"path": "/admin/**"}, "action": "block", "status": 403},
    ],
}


@dataclass
class FakeCounters:
    requests: list[tuple[str, str]] = field(default_factory=list)
    rejections: list[tuple[str, str]] = field(default_factory=list)

    def request(self, route: str, outcome: Outcome) -> None:
        self.requests.append((route, outcome))

    def rejection(self, route: str, reason: str) -> None:
        self.rejections.append((route, reason))

    def upstream_error(self, route: str, kind: ErrorKind) -> None:
        pass


@dataclass
class Rules:
    runtime: Runtime


class Rig:
    def __init__(self, config: Config) -> None:
        self.counters = FakeCounters()
        self.records: list[RequestRecord] = []
        self.seen: list[tuple[str, str]] = []  # (feature, route)
        self.ports = ProxyPorts(
            rules=Rules(Runtime.build(config)),
            gate=Gate(admission_limits(config), DurationEstimator(60.0)),
            clock=lambda: 0.0,
            counters=self.counters,
            epochs=RuntimeUsage(),
            engine_refused=lambda engine, gone: None,
            upstream_timed=lambda route, code, seconds: None,
        )
        self.handler = ProxyHandler(self.ports, on_record=self.records.append)

    def route_handler(self, name: str) -> Callable[[RequestContext], Awaitable[web.Response]]:
        async def serve(ctx: RequestContext) -> web.Response:
            self.seen.append((name, ctx.route.name))
            ctx.rec.status = 200
            return web.Response(text=name)

        return serve

    async def jobs(
        self, request: web.BaseRequest, config: Config, rest: str, request_id: str
    ) -> web.Response:
        self.seen.append(("jobs", rest))
        return web.Response(text="jobs")

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.handler.refuse_foreign_targets])
        app.router.add_route("*", "/{tail:.*}", self.handler.__call__)
        return app


@pytest.fixture
async def rig() -> Rig:
    return Rig(load_config(yaml.safe_dump(RULES)))


@pytest.mark.parametrize(
    ("method", "path", "feature", "detail"),
    [
        ("POST", "/generate", "queue", "generate"),
        ("GET", "/app/gradio_api/queue/data", "gradio", "app"),
        ("GET", "/jobs/abc", "jobs", "/abc"),
    ],
)
async def test_each_outcome_goes_to_the_registered_feature(
    rig: Rig,
    aiohttp_client: ClientFactory,
    method: str,
    path: str,
    feature: str,
    detail: str,
) -> None:
    """A queue route, a gradio route and the jobs API are served by the handlers the app
    registered, with the request's route; the access-log line is written once."""
    rig.handler.register(
        Features(
            status=lambda limit: {"ok": True},
            jobs=rig.jobs,
            queue=rig.route_handler("queue"),
            gradio=rig.route_handler("gradio"),
        )
    )
    client = await aiohttp_client(rig.app())
    async with client.request(method, path) as resp:
        assert resp.status == 200
        assert await resp.text() == feature
    assert rig.seen == [(feature, detail)]
    assert len(rig.records) == 1


async def test_status_document_comes_from_the_registered_callable(
    rig: Rig, aiohttp_client: ClientFactory
) -> None:
    """The public status path answers what the registered callable returns, uncached."""
    rig.handler.register(Features(status=lambda limit: {"hello": "status", "limit": limit}))
    client = await aiohttp_client(rig.app())
    async with client.get("/status") as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"
        assert await resp.json() == {"hello": "status", "limit": 100}  # STATUS_ENTRIES
    async with client.get("/status?limit=all") as resp:
        assert await resp.json() == {"hello": "status", "limit": None}
    assert rig.records[0].decision == "status"


async def test_without_features_the_proxy_answers_itself(
    rig: Rig, aiohttp_client: ClientFactory
) -> None:
    """No jobs feature: the jobs path is 404; a block route is refused and counted by the
    shared responder, whatever feature is registered."""
    client = await aiohttp_client(rig.app())
    async with client.get("/jobs/abc") as resp:
        assert resp.status == 404
        assert resp.headers["X-Gatekeeper-Reason"] == "not_found"
    async with client.get("/admin/x") as resp:
        assert resp.status == 403
        assert resp.headers["X-Gatekeeper-Reason"] == "blocked"
    assert rig.counters.requests == [("admin", Outcome.BLOCKED)]
    assert rig.counters.rejections == [("admin", "blocked")]
    assert [r.decision for r in rig.records] == ["jobs", Outcome.BLOCKED]


async def test_a_queue_route_without_the_waiting_room_is_admitted(
    rig: Rig, aiohttp_client: ClientFactory
) -> None:
    """No queue feature registered: a queue route takes the admit path. With every slot
    taken it is refused busy after its body was read (the waiting room would have kept
    it), and the slot's lease is neither taken nor released twice."""
    gate = rig.ports.gate
    while not isinstance(gate.try_admit("other", 0.0), Rejection):
        pass
    taken = gate.in_flight
    client = await aiohttp_client(rig.app())
    async with client.post("/generate", data=b"{}") as resp:
        assert resp.status == 503
        assert resp.headers["X-Gatekeeper-Reason"] == "busy"
    assert rig.counters.requests == [("generate", Outcome.REJECTED)]
    assert (gate.in_flight, gate.repeat_releases) == (taken, 0)
