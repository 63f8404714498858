"""The proxy handler: adapt an aiohttp request, carry out its ``plan``.

The path of one request (see docs/architecture.md):

1. refuse anything that would make us an open proxy (CONNECT, absolute-form);
2. ``plan.plan`` decides from plain facts: the status document, the jobs API,
   a refusal (block, 413, a rejection with Retry-After; answered from prebuilt
   bodies, with no I/O), pass, a Gradio route, a queue route, or admit;
3. the outcomes a feature serves (the status document, the jobs API, a queue
   route, a Gradio route) go to the handler the app registered for them
   (``Features``); the proxy imports no feature;
4. ``admit`` (``admit.Admit``): the body is spooled first (within the
   process's ``SpoolBudget``, ``limits.max_spooled_bytes``: 503 ``spool_full``),
   then the gate is asked again and the slot's ``Lease`` taken in the same
   synchronous step; ``100 Continue`` is sent only when a body is about to be
   read (``expect``), so a refusal from the plan never invites one;
5. ``relay.Relay`` streams the request to the pool's session and the answer
   back, chunk by chunk, never whole;
6. the lease is released exactly once, on every path, by its holder
   (``core.lease``); the access-log line is written once, by whoever ends last:
   this handler, the ``finish`` task, or the Gradio event;
7. a refusal (decision ``rejected``, whichever route refused) is answered at
   once, or later under a retry storm (``core.pacing``, ``limits.refusal_pacing``):
   it holds nothing but its connection meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from gatekeeper.config import Config
from gatekeeper.core.errors import BadRequest, HttpError, MethodNotAllowed
from gatekeeper.core.headers import REQUEST_ID, request_id
from gatekeeper.core.pacing import RefusalPacer
from gatekeeper.core.plan import Forward, Refuse, ServeJobs, ServeStatus, plan
from gatekeeper.core.vocab import Outcome
from gatekeeper.lifecycle.runtime import Runtime
from gatekeeper.observability.status import entries_limit
from gatekeeper.proxy.admit import Admit
from gatekeeper.proxy.connections import Connections
from gatekeeper.proxy.context import RequestContext
from gatekeeper.proxy.ports import ProxyPorts
from gatekeeper.proxy.record import RecordLog, RequestRecord, answered
from gatekeeper.proxy.relay import Relay
from gatekeeper.proxy.respond import Responder
from gatekeeper.proxy.responses import json_error
from gatekeeper.proxy.spool import SpoolBudget, SpoolFull

__all__ = [
    "SPOOL_BUDGET",
    "Features",
    "JobsHandler",
    "ProxyHandler",
    "RouteHandler",
    "check_target",
]

# The proxy app's spool budget (``limits.max_spooled_bytes``), for whoever reads its use.
SPOOL_BUDGET = web.AppKey("gatekeeper.spool_budget", SpoolBudget)


def check_target(request: web.BaseRequest) -> None:
    """Refuse anything that would make gatekeeper fetch from somewhere other than its upstream."""
    if request.method == "CONNECT":
        raise MethodNotAllowed("CONNECT is not supported: gatekeeper is not a forward proxy")
    target = request.raw_path  # the target as sent
    # Origin-form only (RFC 9112 §3.2.1), plus asterisk-form for OPTIONS. An absolute-form
    # target must never make us fetch another host.
    if not (target.startswith("/") or (request.method == "OPTIONS" and target == "*")):
        raise BadRequest(
            "request target must be a path (origin-form); gatekeeper only forwards "
            "to its configured upstream"
        )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# A route a feature serves (queue, Gradio), given the request once its route is known.
RouteHandler = Callable[[RequestContext], Awaitable[web.StreamResponse]]


class JobsHandler(Protocol):
    """The async-job endpoints under ``jobs_path``; ``rest`` is the path after it."""

    async def __call__(
        self, request: web.BaseRequest, config: Config, rest: str, request_id: str
    ) -> web.StreamResponse: ...


@dataclass(frozen=True, slots=True)
class Features:
    """The plan's outcomes that features serve, as the app registers them.

    ``status``: the status document listing at most N waiting jobs (None: 404).
    ``jobs``: None, the jobs API is not enabled (404). ``queue``: None, a queue route
    is admitted like an admit route. ``gradio``: None, a gradio route's requests all pass.
    ``batch``: None, a batch route's request is admitted whole like an admit route
    (issue #20 §3: never passed).
    """

    status: Callable[[int | None], Mapping[str, Any]] | None = None
    jobs: JobsHandler | None = None
    queue: RouteHandler | None = None
    gradio: RouteHandler | None = None
    batch: RouteHandler | None = None


def spool_limit(cfg: Config) -> int:
    """The spool budget in effect: ``limits.max_spooled_bytes``, never less than
    ``max_body_bytes`` (the largest accepted body always fits when no other is spooled)."""
    return max(cfg.limits.max_spooled_bytes, cfg.limits.max_body_bytes)


class ProxyHandler:
    def __init__(
        self,
        ports: ProxyPorts,
        on_record: Callable[[RequestRecord], None] | None = None,
        conns: Connections | None = None,
    ):
        self.ports = ports
        self.conns = conns
        self.log_record = RecordLog(ports.clock, on_record)
        # Shared with the features' routes (``register``): one way to count and refuse.
        self.respond = Responder(ports.counters, ports.gate)
        # The bytes every spool holds (limits.max_spooled_bytes): one budget for the
        # process, shared with the features' routes that spool (queue, Gradio).
        self.budget = SpoolBudget(lambda: spool_limit(ports.rules.runtime.config))
        self.admit = Admit(ports, self.respond, self.log_record, self.budget)
        self.features = Features()
        # One schedule of refusals for the process (limits.refusal_pacing); on_paced
        # counts each refusal answered later (gatekeeper_refusals_paced_total).
        self.pacer = RefusalPacer()
        self.on_paced: Callable[[], None] = lambda: None

    def register(self, features: Features) -> None:
        self.features = features

    @web.middleware
    async def refuse_foreign_targets(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        """Runs before aiohttp's router, which would answer 404 to CONNECT's authority-form.

        Also the start and end of a request for the connection table (``connections``):
        from here on no head deadline applies to this connection."""
        conns = self.conns
        if conns is None:
            return await self._checked(request, handler)
        conns.begin(request.protocol)
        try:
            return await self._checked(request, handler)
        finally:
            conns.end(request.protocol)

    async def _checked(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            check_target(request)
        except HttpError as exc:
            ports = self.ports
            rid = request_id(request.headers)
            rec = RequestRecord(
                rid, request.remote, request.method, request.path, started=ports.clock()
            )
            resp = self.respond.error(ports.rules.runtime.config, exc, rec)
            self.log_record(rec)
            return resp
        return await handler(request)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        ports = self.ports
        # Counted under the current reload epoch *before* taking the snapshot, so a reload
        # retires old pools only once no request that may hold them is open (reload.py).
        epoch = ports.epochs.enter()
        rt = ports.rules.runtime  # one snapshot of the rules for the whole request
        rid = request_id(request.headers)
        rec = RequestRecord(
            rid, request.remote, request.method, request.path, started=ports.clock()
        )
        rec.epoch = epoch
        try:
            try:
                resp = await self._handle(request, rt, rec)
            except HttpError as exc:
                resp = self.respond.error(rt.config, exc, rec)
            answered(rec, resp)  # the line tells what the client got
        finally:
            ports.epochs.leave(epoch)
            rec.handler_done = True
            if rec.deferred:
                pass  # a Gradio event's line: logged when the event ends (gradio.events)
            elif rec.job is None or rec.job.done():
                self.log_record(rec)  # else the finish job, still running, logs it when it ends
        if rec.decision == Outcome.REJECTED and not resp.prepared:
            await self._pace(rt.config)
        return resp

    async def _pace(self, cfg: Config) -> None:
        """A refusal's turn under a retry storm (``core.pacing``): none while draining (a
        stop must not wait for refusals) or while the connection table is half full."""
        conns = self.conns
        crowded = self.ports.gate.draining or (conns is not None and 2 * conns.open > conns.cap)
        rule = cfg.limits.refusal_pacing
        delay = self.pacer.delay(rule, self.ports.clock(), crowded=crowded)
        if delay > 0.0:
            self.on_paced()
            await asyncio.sleep(delay)

    # ------------------------------------------------------------------ carrying out the plan

    async def _handle(
        self, request: web.BaseRequest, rt: Runtime, rec: RequestRecord
    ) -> web.StreamResponse:
        ports, cfg, features = self.ports, rt.config, self.features
        decided = plan(
            request.method,
            request.path,
            request.content_length,
            cfg,
            rt.router,
            ports.gate,
            ports.clock(),
        )
        if isinstance(decided, ServeStatus):
            return self._status(request, rec)
        if isinstance(decided, ServeJobs):
            return await self._jobs(request, cfg, decided.rest, rec)
        route = decided.route
        rec.route, rec.action = route.name, route.action
        ctx = RequestContext(request, rt, route, rec)
        if isinstance(decided, Refuse):
            return self.respond.refuse(ctx, decided)
        assert isinstance(decided, Forward)
        try:
            if decided.gradio and features.gradio is not None:
                return await features.gradio(ctx)
            if not decided.gated:
                self.respond.count(ctx, Outcome.PASSED)
                pool = rt.pass_pool(ports.gate.engine_up)
                return await Relay(ports, ctx, pool).run()
            if decided.queued and features.queue is not None:
                return await features.queue(ctx)
            if decided.batch and features.batch is not None:
                return await features.batch(ctx)
            return await self.admit(ctx)
        except SpoolFull:  # raised before any answer began: the spool already gave back
            return self.respond.spool_full(ctx)

    # ------------------------------------------------------------------ gatekeeper's endpoints

    def _status(self, request: web.BaseRequest, rec: RequestRecord) -> web.Response:
        rec.route, rec.action, rec.decision = "status", "status", "status"
        status = self.features.status
        limit: int | None = None
        bad: str | None = None
        try:
            limit = entries_limit(request.query)
        except ValueError as exc:
            bad = str(exc)
        if status is None:
            resp = json_error(
                404, "not_found", "no status document here", request_id=rec.request_id
            )
        elif bad is not None:
            resp = json_error(400, "bad_request", bad, request_id=rec.request_id)
        else:
            resp = web.json_response(status(limit))
            resp.headers["Cache-Control"] = "no-store"
            resp.headers[REQUEST_ID] = rec.request_id
        rec.status = resp.status
        return resp

    async def _jobs(
        self, request: web.BaseRequest, cfg: Config, rest: str, rec: RequestRecord
    ) -> web.StreamResponse:
        rec.route, rec.action, rec.decision = "jobs", "jobs", "jobs"
        jobs = self.features.jobs
        if jobs is None:
            resp: web.StreamResponse = json_error(
                404, "not_found", "async jobs are not enabled", request_id=rec.request_id
            )
        else:
            resp = await jobs(request, cfg, rest, rec.request_id)
        rec.status = resp.status
        return resp
