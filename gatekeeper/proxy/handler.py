"""The proxy handler: adapt an aiohttp request, carry out its ``plan``, own its slot.

The path of one request (see docs/architecture.md):

1. refuse anything that would make us an open proxy (CONNECT, absolute-form);
2. ``plan.plan`` decides from plain facts: status document, refusal (block,
   413, a rejection with Retry-After; answered from prebuilt bodies, with no
   I/O), pass, or admit;
3. ``admit``: the body is spooled first (``spool``: a slow upload never holds
   the slot), then the gate is asked again and the ``Ticket`` taken in the
   same synchronous step;
4. ``relay.Relay`` streams the request to the pool's session and the answer
   back, chunk by chunk, never whole;
5. the ticket is released exactly once, on every path: by this handler in
   ``cancel`` mode, by the finish job's done-callback in ``finish`` mode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from gatekeeper.config import Config, Route
from gatekeeper.core.admission import Rejection, Ticket
from gatekeeper.core.errors import BadRequest, HttpError, MethodNotAllowed, UpstreamError
from gatekeeper.core.headers import REQUEST_ID, request_id
from gatekeeper.core.plan import Forward, Refuse, ServeJobs, ServeStatus, plan, rejected
from gatekeeper.core.vocab import Outcome
from gatekeeper.gradio.route import GradioRoute
from gatekeeper.jobs.api import JobsApi
from gatekeeper.jobs.model import Refused
from gatekeeper.jobs.route import QueueRoute
from gatekeeper.lifecycle.runtime import Runtime
from gatekeeper.observability.status import status_document
from gatekeeper.proxy.connections import Connections
from gatekeeper.proxy.record import RequestRecord
from gatekeeper.proxy.relay import Relay, client_left, log
from gatekeeper.proxy.responses import Answers, json_answer, json_error
from gatekeeper.proxy.spool import Spool, take_body
from gatekeeper.state import AppState
from gatekeeper.upstream import ClientGone

__all__ = ["ProxyHandler", "RequestRecord", "check_target"]


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


class ProxyHandler:
    def __init__(
        self,
        state: AppState,
        on_record: Callable[[RequestRecord], None] | None = None,
        conns: Connections | None = None,
    ):
        self.state = state
        self.on_record = on_record
        self.conns = conns
        self.answers = Answers()
        self.queue = QueueRoute(self)
        self.gradio = GradioRoute(self)

    @web.middleware
    async def refuse_foreign_targets(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        """Runs before aiohttp's router, which would answer 404 to CONNECT's authority-form.

        Also the start and end of a request for the connection table (``edge``): from
        here on no head deadline applies to this connection."""
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
            rid = request_id(request.headers)
            rec = RequestRecord(
                rid, request.remote, request.method, request.path, started=self.state.clock()
            )
            resp = self._error(self.state.config, exc, rec)
            self._log(rec)
            return resp
        return await handler(request)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        st = self.state
        # Counted under the current reload epoch *before* taking the snapshot, so a reload
        # retires old pools only once no request that may hold them is open (reload.py).
        epoch = st.usage.enter()
        rt = st.runtime  # one snapshot of the rules for the whole request
        rid = request_id(request.headers)
        rec = RequestRecord(rid, request.remote, request.method, request.path, started=st.clock())
        rec.epoch = epoch
        try:
            return await self._handle(request, rt, rec)
        except HttpError as exc:
            return self._error(rt.config, exc, rec)
        finally:
            st.usage.leave(epoch)
            rec.handler_done = True
            if rec.deferred:
                pass  # a Gradio event's line: logged when the event ends (gradioevents)
            elif rec.job is None or rec.job.done():
                self._log(rec)  # else the finish job, still running, logs it when it ends

    def _log(self, rec: RequestRecord) -> None:
        if rec.logged:
            return
        rec.logged = True
        rec.total_seconds = self.state.clock() - rec.started
        if self.on_record is not None:
            self.on_record(rec)

    # ------------------------------------------------------------------ carrying out the plan

    async def _handle(
        self, request: web.BaseRequest, rt: Runtime, rec: RequestRecord
    ) -> web.StreamResponse:
        st, cfg = self.state, rt.config
        decided = plan(
            request.method,
            request.path,
            request.content_length,
            cfg,
            rt.router,
            st.gate,
            st.clock(),
        )
        if isinstance(decided, ServeStatus):
            return self._status(rec)
        if isinstance(decided, ServeJobs):
            return await self._jobs(request, cfg, decided.rest, rec)
        route = decided.route
        rec.route, rec.action = route.name, route.action
        if isinstance(decided, Refuse):
            return self._refuse(cfg, decided, rec)
        assert isinstance(decided, Forward)
        if decided.gradio:
            return await self.gradio.handle(request, rt, route, rec)
        if not decided.gated:
            self._count(route, Outcome.PASSED, rec)
            pool = rt.pass_pool(st.gate.engine_up)
            return await Relay(st, request, cfg, route, pool, rec).run()
        if decided.queued and st.jobs is not None:
            return await self.queue.handle(request, cfg, route, rec)
        return await self._admit(request, rt, route, rec)

    async def _admit(
        self, request: web.BaseRequest, rt: Runtime, route: Route, rec: RequestRecord
    ) -> web.StreamResponse:
        st, cfg = self.state, rt.config
        # Take the whole body *before* the ticket (spool.py): a slow upload never holds
        # the slot, and the engine only starts work whose input is complete.
        spool: Spool | None = None
        if request.body_exists:
            try:
                spool = await take_body(
                    request.content.iter_any(),
                    max_bytes=cfg.limits.max_body_bytes,
                    idle_timeout=cfg.limits.client_body_timeout,
                    deadline=cfg.limits.client_body_deadline,
                    memory_limit=cfg.limits.spool_memory_bytes,
                )
            except ClientGone:
                return client_left(st, route, rec, "sending the request body")
        return await self.admit_spooled(request, rt, route, rec, spool)

    async def admit_spooled(
        self,
        request: web.BaseRequest,
        rt: Runtime,
        route: Route,
        rec: RequestRecord,
        spool: Spool | None,
    ) -> web.StreamResponse:
        """Admit a request whose body is taken (``spool``, closed on every path)."""
        st, cfg = self.state, rt.config
        result = st.gate.try_admit(route.name, st.clock())
        if isinstance(result, Rejection):  # the slot went to someone else meanwhile
            if spool is not None:
                spool.close()
            return self._refuse(cfg, rejected(route, result, cfg), rec)
        ticket = result
        # From here on the ticket has exactly one owner: the ``finally`` below (cancel mode,
        # or a failure before the job exists), else the finish job's callback. The relay
        # closes the spool when it ends; the ticket's owner closes it again (idempotent) in
        # case the relay never ran.
        job: asyncio.Task[web.StreamResponse] | None = None
        try:
            self._count(route, Outcome.ADMITTED, rec)
            rec.engine = ticket.engine
            # The gate picks from the live rules; this request's runtime is the one of its
            # arrival, and a reload while its body was spooled may have added the engine
            # picked (or renamed the one engine). The live runtime then has its pool, and
            # a pool of the newest runtime is never retired under a request.
            pool = (rt if ticket.engine in rt.engines else st.runtime).gated_for(ticket.engine)
            relay = Relay(st, request, cfg, route, pool, rec, ticket=ticket, spool=spool)
            if cfg.admission.on_client_disconnect == "cancel":
                return await relay.run()
            # ``finish``: the exchange runs in its own task, which owns the ticket. Nothing
            # that happens to this handler task (the client leaving, a server configured to
            # cancel handlers, shutdown) can free the slot while the engine still computes.
            # The job holds the rules' epoch too, so a reload never closes its pool under it.
            job = asyncio.create_task(relay.run())
        finally:
            if job is None:
                ticket.release()
                if spool is not None:
                    spool.close()
        st.usage.join(rec.epoch)
        rec.job = job
        job.add_done_callback(self._job_done(ticket, rec, spool))
        return await asyncio.shield(job)

    def _job_done(
        self, ticket: Ticket, rec: RequestRecord, spool: Spool | None
    ) -> Callable[[asyncio.Task[web.StreamResponse]], None]:
        """The end of a ``finish`` exchange: free its slot and its epoch, exactly once (and
        the spool, should the job have been cancelled before it ever ran)."""

        def done(job: asyncio.Task[web.StreamResponse]) -> None:
            ticket.release()
            if spool is not None:
                spool.close()
            self.state.usage.leave(rec.epoch)
            if not job.cancelled():
                job.exception()  # retrieved: the handler may be gone and never await it
            if rec.handler_done:
                self._log(rec)

        return done

    # ------------------------------------------------------------------ gatekeeper's answers

    def _status(self, rec: RequestRecord) -> web.Response:
        rec.route, rec.action, rec.decision, rec.status = "status", "status", "status", 200
        resp = web.json_response(status_document(self.state))
        resp.headers["Cache-Control"] = "no-store"
        resp.headers[REQUEST_ID] = rec.request_id
        return resp

    def _count(self, route: Route, outcome: Outcome, rec: RequestRecord) -> None:
        rec.decision = outcome
        self.state.count(route.name, outcome)

    count = _count  # for queueroute, gradioroute

    async def _jobs(
        self, request: web.BaseRequest, cfg: Config, rest: str, rec: RequestRecord
    ) -> web.StreamResponse:
        rec.route, rec.action, rec.decision = "jobs", "jobs", "jobs"
        jobs = self.state.jobs
        if jobs is None:
            resp: web.StreamResponse = json_error(
                404, "not_found", "async jobs are not enabled", request_id=rec.request_id
            )
        else:
            api = JobsApi(jobs, cfg.jobs_path or "", self.state.clock)
            resp = await api.handle(request, rest, rec.request_id)
        rec.status = resp.status
        return resp

    def refuse_queue(
        self, cfg: Config, route: Route, refused: Refused, rec: RequestRecord
    ) -> web.Response:
        """The waiting room said no (client_limit 429, queue_full 503): counted, explained."""
        st = self.state
        self._count(route, Outcome.REJECTED, rec)
        st.count_rejection(route.name, refused.reason)
        rec.reason = refused.reason
        body = self.answers.body(
            cfg,
            refused.reason,
            refused.retry_after,
            None,
            retry_after=refused.retry_after,
            route=route.name,
            **refused.fields,
        )
        resp = json_answer(
            refused.status,
            refused.reason,
            body,
            retry_after=refused.retry_after,
            request_id=rec.request_id,
        )
        rec.status = resp.status
        return resp

    def _refuse(self, cfg: Config, refusal: Refuse, rec: RequestRecord) -> web.Response:
        """A refusal from the plan: counted, answered from a prebuilt body."""
        st, route = self.state, refusal.route
        self._count(route, refusal.outcome, rec)
        st.count_rejection(route.name, refusal.reason)
        rec.reason = refusal.reason
        if refusal.detail is not None or refusal.reason == "blocked":
            body = self.answers.body(
                cfg, refusal.reason, refusal.retry_after, refusal.detail, route=route.name
            )
        else:  # a rejection by the gate: its message may quote the live numbers
            gate, res = st.gate, st.gate.resources
            body = self.answers.body(
                cfg,
                refusal.reason,
                refusal.retry_after,
                None,
                retry_after=refusal.retry_after,
                in_flight=gate.in_flight,
                max_in_flight=gate.limits.max_in_flight,
                **res.message_fields(),  # cpu_percent, memory_percent, cpu_pressure ...
                route=route.name,
            )
        resp = json_answer(
            refusal.status,
            refusal.reason,
            body,
            retry_after=refusal.retry_after,
            request_id=rec.request_id,
            close=refusal.close,
        )
        rec.status = resp.status
        return resp

    refuse = _refuse  # for gradioroute

    def _error(self, cfg: Config, exc: HttpError, rec: RequestRecord) -> web.Response:
        route = rec.route if rec.route != "-" else "default"
        rec.reason = exc.reason
        if isinstance(exc, UpstreamError):
            self.state.count_upstream_error(route, exc.kind)
            log.warning(
                "upstream error: request_id=%s route=%s kind=%s status=%d: %s",
                rec.request_id,
                route,
                exc.kind,
                exc.status,
                exc.detail,
            )
            detail = cfg.message(exc.reason, route=route)
        else:
            if rec.decision == "-":  # refused before any admission decision was counted
                rec.decision = Outcome.REJECTED
                self.state.count(route, Outcome.REJECTED)
            self.state.count_rejection(route, exc.reason)
            detail = exc.detail
        resp = json_error(exc.status, exc.reason, detail, request_id=rec.request_id)
        if exc.status in (408, 413):
            # The rest of the body is unwanted: close after the answer (with a 1 s
            # lingering read, app.LINGER_SECONDS) instead of reading it for keep-alive.
            resp.force_close()
        rec.status = resp.status
        return resp
