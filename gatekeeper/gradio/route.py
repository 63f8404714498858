"""A request on a ``gradio`` route: the Gradio queue protocol, admitted per generation.

``wire.classify`` says what the request is:

- ``queue/join`` (and ``POST /call/<api>``) of a **gated** function: the body
  (small JSON) is spooled and parsed, the gate is asked, and with a lease the
  join is forwarded; Gradio's answer (``{"event_id": ...}``) hands the lease to
  ``GradioEvents``. No slot: the refusal is told in the session's stream (a
  session with nothing running), else a 503 with JSON ``detail`` and
  ``Retry-After`` (what Gradio's clients show: docs/gradio.md). A join of any other function,
  and every other request (the page, ``/config``, uploads, files), passes.
- ``queue/data`` (the session's SSE stream), ``heartbeat/<session>`` and
  ``call/<api>/<event_id>``: relayed unbuffered, uncompressed, with an observer
  that parses the frames as they pass and ends events on ``process_completed``
  (``complete``/``error``); if the client leaves while its session has a
  running event, the stream is read on gatekeeper's own connection until the
  event ends, so the slot tracks the engine, not the tab.
- ``/run/<api>`` and ``/api/<api>`` (direct calls, outside Gradio's queue) of a
  gated function: refused 403 (``direct_calls: block``, the default) or admitted
  like an ``admit`` route (``direct_calls: admit``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

import aiohttp
from aiohttp import web

from gatekeeper.config import Config
from gatekeeper.core.admission import Rejection
from gatekeeper.core.errors import HttpError, UpstreamProtocolError, UpstreamTimeout
from gatekeeper.core.headers import (
    REQUEST_ID,
    downstream_response_headers,
    upstream_request_headers,
)
from gatekeeper.core.lease import Lease
from gatekeeper.core.plan import Refuse, rejected
from gatekeeper.core.vocab import AdmitReason, Outcome
from gatekeeper.gradio.events import GradioEvents
from gatekeeper.gradio.held import MAX_JOIN_ANSWER, read_bounded
from gatekeeper.gradio.joinbody import read_join, take_join_body
from gatekeeper.gradio.names import ApiNames
from gatekeeper.gradio.queueing import GradioQueue, WaitingRoomPort
from gatekeeper.gradio.splice import PREFIX
from gatekeeper.gradio.streams import Heartbeat, SessionStream
from gatekeeper.gradio.wire import (
    Gating,
    GradioPath,
    Join,
    Kind,
    classify,
    event_id_of,
)
from gatekeeper.proxy.admit import Admit
from gatekeeper.proxy.context import RequestContext
from gatekeeper.proxy.ports import ProxyPorts
from gatekeeper.proxy.relay import Relay
from gatekeeper.proxy.respond import Responder
from gatekeeper.proxy.spool import Spool
from gatekeeper.upstream import ClientGone

log = logging.getLogger("gatekeeper.gradio")
DRAINING = AdmitReason.DRAINING  # a join that finds gatekeeper draining does not wait


class GradioRoute:
    def __init__(
        self,
        ports: ProxyPorts,
        respond: Responder,
        admit: Admit,
        events: GradioEvents,
        room: WaitingRoomPort | None = None,
    ):
        self.ports = ports
        self.respond = respond
        self.admit = admit  # a direct call, when ``direct_calls: admit``
        self.events = events
        # Joins that wait their turn, and the session streams gatekeeper writes (issue #19).
        self.queue = GradioQueue(ports, respond, events, room)
        self.names = ApiNames()
        self._streams: dict[asyncio.Task[object], str] = {}  # handler task -> session

    async def handle(self, ctx: RequestContext) -> web.StreamResponse:
        request = ctx.request
        gp = classify(request.method, request.path)
        if gp.kind in (Kind.JOIN, Kind.CALL, Kind.DIRECT):
            return await self._decide(ctx, gp)
        if gp.kind == Kind.CANCEL:
            return await self._cancel(ctx)
        if gp.kind == Kind.DATA:
            session = request.query.get("session_hash")
            if session:  # written from the session's pipe, so any gated event can join it
                pipe = self.queue.stream_for(ctx, session)
                return await self._registered(self.queue.serve(ctx, pipe), session)
        elif gp.kind == Kind.HEARTBEAT and gp.session_hash:
            observer = Heartbeat(self.events, gp.session_hash)
            return await self._stream(ctx, observer, gp.session_hash)
        elif (
            gp.kind == Kind.CALL_STREAM
            and gp.event_id
            and (gp.event_id.startswith(PREFIX) or self.queue.call_pipe(gp.event_id) is not None)
        ):
            held = self.queue.call_pipe(gp.event_id)  # a gated /call: gatekeeper reads it
            if held is None:
                raise HttpError(
                    f"no waiting or running call {gp.event_id} here: it ended (its result "
                    "was read) or never existed",
                    status=404,
                    reason="not_found",
                )
            return await self._registered(self.queue.serve_call(ctx, held), gp.event_id)
        elif gp.kind == Kind.CALL_STREAM and gp.event_id:
            # A /call's session is its event id (gradio: no session_hash given).
            call = SessionStream(self.events, gp.event_id, call_event_id=gp.event_id)
            return await self._stream(ctx, call, gp.event_id)
        self.respond.count(ctx, Outcome.PASSED)
        return await Relay(self.ports, ctx, ctx.runtime.passthrough).run()

    async def _stream(
        self, ctx: RequestContext, observer: SessionStream | Heartbeat, session: str
    ) -> web.StreamResponse:
        """A session's stream, relayed with its observer; known to ``close_idle_streams``."""
        self.respond.count(ctx, Outcome.PASSED)
        relay = Relay(self.ports, ctx, ctx.runtime.passthrough, observer=observer)
        return await self._registered(relay.run(), session)

    async def _registered(
        self, serving: Awaitable[web.StreamResponse], session: str
    ) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._streams[task] = session
        try:
            return await serving
        finally:
            if task is not None:
                self._streams.pop(task, None)

    def close_idle_streams(self) -> int:
        """At stop: end the session streams that report no running generation.

        Gradio's heartbeat and queue/data streams never end by themselves; left open, each
        would hold the stop for aiohttp's shutdown timeout twice (it waits for the handler,
        cancels only the request body, then waits again). A stream whose session still has
        a running event is left to the drain and the close grace."""
        idle = [
            t
            for t, s in self._streams.items()
            if not self.events.pending(s) and not self.queue.sessions_busy(s)
        ]
        for task in idle:
            task.cancel()
        return len(idle)

    async def _body(self, request: web.BaseRequest, cfg: Config) -> Spool | None:
        return await take_join_body(request, cfg, self.admit.budget)

    async def _which(
        self, ctx: RequestContext, gp: GradioPath, spool: Spool | None
    ) -> tuple[Join, str | None, bool]:
        """The join's fn_index/session, the function's api name, and whether it is gated.
        Raises BadRequest for a body that is not a Gradio join."""
        route = ctx.route
        join = read_join(ctx.request, gp, spool)
        gating = Gating(route.fn_index, route.api_name)
        api = gp.api_name
        needs_name = route.api_name is not None and not (
            route.fn_index is not None and join.fn_index in route.fn_index
        )
        if api is None and needs_name:
            api = await self.names.lookup(ctx.config.upstream.url, gp.root, join.fn_index)
        return join, api, gating.gated(join.fn_index, api)

    async def _decide(self, ctx: RequestContext, gp: GradioPath) -> web.StreamResponse:
        """A join, a /call or a direct call: take its (small) body, find its function;
        not gated: pass it on; gated: join (slot to the event) or direct call."""
        try:
            spool = await self._body(ctx.request, ctx.config)
        except ClientGone:
            return self.respond.client_left(ctx, "sending the request body")
        try:
            join, api, gated = await self._which(ctx, gp, spool)
        except BaseException:
            if spool is not None:
                spool.close()
            raise
        if not gated:
            self.respond.count(ctx, Outcome.PASSED)
            out = await Relay(self.ports, ctx, ctx.runtime.passthrough, spool=spool).run()
            if gp.kind == Kind.JOIN and out.status == 200:
                self.queue.passed(join.session_hash)
            return out
        if gp.kind == Kind.DIRECT:
            return await self._direct(ctx, gp, spool, api)
        return await self._join(ctx, gp, spool, join, api)

    async def _join(
        self,
        ctx: RequestContext,
        gp: GradioPath,
        spool: Spool | None,
        join: Join,
        api: str | None,
    ) -> web.StreamResponse:
        ports, request, cfg, route, rec = self.ports, ctx.request, ctx.config, ctx.route, ctx.rec
        body = spool.memory() if spool is not None else b"{}"
        calling = gp.kind == Kind.CALL
        may_wait = (gp.kind == Kind.JOIN or calling) and self.queue.can_hold(
            None if calling else join, body
        )
        now = ports.clock()
        result: Lease | Rejection | None
        if may_wait and self.queue.others_wait():  # behind those who wait, whatever is free
            result = ports.gate.check(now)
        else:
            result = ports.gate.try_admit(route.name, now)
        waits = result is None or (isinstance(result, Rejection) and result.reason != DRAINING)
        if may_wait and body is not None and waits:  # issue #19: it waits its turn
            if spool is not None:
                spool.close()
            if calling:
                return self.queue.hold_call(ctx, api, body)
            return self.queue.hold(ctx, join, api, body)
        if not isinstance(result, Lease):
            assert result is not None  # None (a free slot) waits
            if spool is not None:
                spool.close()
            session = join.session_hash if gp.kind == Kind.JOIN else None
            if session is not None:
                return self._refuse_in_stream(ctx, rejected(route, result, cfg), session)
            return self._refuse(ctx, rejected(route, result, cfg), api)
        lease = result
        rec.engine = lease.engine
        try:
            with lease:  # released on leaving, unless the event took it over
                self.respond.count(ctx, Outcome.ADMITTED)
                headers = upstream_request_headers(
                    request.headers,
                    client_ip=request.remote,
                    scheme=request.scheme,
                    request_id=rec.request_id,
                )
                headers["Accept-Encoding"] = "identity"  # the answer is read for its event_id
                if spool is not None:
                    headers["Content-Length"] = str(spool.size)
                rec.queue_seconds = ports.clock() - rec.started
                exchange = await ctx.runtime.passthrough.send(
                    request.method,
                    request.raw_path,
                    headers,
                    spool.chunks() if spool is not None else None,
                    max_body_bytes=cfg.limits.max_body_bytes,
                    client_body_timeout=cfg.limits.client_body_timeout,
                )
                upstream = exchange.response
                done = False
                try:
                    body = await read_bounded(upstream, MAX_JOIN_ANSWER)
                    done = True
                except TimeoutError as exc:
                    raise UpstreamTimeout(f"the Gradio app's join answer stalled: {exc}") from exc
                except aiohttp.ClientError as exc:
                    raise UpstreamProtocolError(
                        f"the Gradio app's join answer broke: {exc}"
                    ) from exc
                finally:
                    exchange.close(reuse=done)
                rec.upstream_status = upstream.status
                rec.bytes_in = spool.size if spool is not None else 0
                event_id = event_id_of(body) if 200 <= upstream.status < 300 else None
                if event_id is not None:
                    # Which outputs are the result (read once per app from its /config).
                    results = await self.names.results(cfg.upstream.url, gp.root, join.fn_index)
                    # From here the event holds the lease; the session's stream ends it.
                    self.events.add(
                        event_id=event_id,
                        session=join.session_hash
                        if gp.kind == Kind.JOIN and join.session_hash
                        else event_id,
                        route=route.name,
                        api_name=api,
                        lease=lease,
                        rec=rec,
                        timeout=cfg.upstream.timeouts.read,
                    )
                    rec.deferred = True
                    self.events.expect_results(event_id, results)
                    if gp.kind == Kind.JOIN and join.session_hash:
                        # gatekeeper reads the session's stream itself from now (pipe.py)
                        self.queue.pipe_for(ctx, join.session_hash).forwarded()
                    elif gp.kind == Kind.CALL:
                        # ... and the call's stream (callpipe.py), read by the client or not
                        self.queue.call_for(ctx, event_id).read_app(event_id)
                else:
                    log.info(
                        "gradio join not accepted by the app (status %d): slot released; "
                        "request_id=%s",
                        upstream.status,
                        rec.request_id,
                    )
                out = web.Response(status=upstream.status, reason=upstream.reason, body=body)
                out.headers.extend(downstream_response_headers(upstream.headers))
                out.headers.popall("Content-Length", None)
                out.headers[REQUEST_ID] = rec.request_id
                rec.bytes_out = len(body)
                rec.status = upstream.status
                return out
        finally:
            if spool is not None:
                spool.close()

    async def _cancel(self, ctx: RequestContext) -> web.StreamResponse:
        """``/cancel``: of a waiting event of ours, answered here; of one of ours the app
        runs, sent on naming the app's id; anything else, sent on as it came."""
        try:
            spool = await self._body(ctx.request, ctx.config)
        except ClientGone:
            return self.respond.client_left(ctx, "sending the request body")
        self.respond.count(ctx, Outcome.PASSED)
        out = self.queue.cancel(ctx, spool)
        if isinstance(out, web.Response):
            return out
        return await Relay(self.ports, ctx, ctx.runtime.passthrough, spool=out).run()

    async def _direct(
        self, ctx: RequestContext, gp: GradioPath, spool: Spool | None, api: str | None
    ) -> web.StreamResponse:
        if ctx.route.direct_calls == "block":
            if spool is not None:
                spool.close()
            detail = (
                f"Direct calls of {api or 'this function'} bypass the app's queue and are "
                "disabled here; use the app's queue (the web page, gradio_client, or "
                f"POST {gp.root}/gradio_api/call/{api or '<api_name>'}). "
                "/ 此接口会绕过排队，已停用；请通过页面或队列接口提交。"
            )
            refusal = Refuse(ctx.route, 403, "blocked", Outcome.BLOCKED, detail=detail)
            return self.respond.refuse(ctx, refusal)
        return await self.admit.spooled(ctx, spool)

    def _refuse_in_stream(self, ctx: RequestContext, refusal: Refuse, session: str) -> web.Response:
        """No slot, told the way Gradio's clients show an error *with its text*: the join
        is answered with an event id of gatekeeper's own, and the session's queue/data
        stream (open, or opened next) says that event failed with the refusal's detail
        (gradio_client: AppError(detail); the page: an error toast). A 503 to the join
        would be shown as Gradio's own "queue is full" text instead."""
        resp = self.respond.refuse(ctx, refusal)  # counted, logged, the detail rendered
        log.info(
            "gradio join refused (%s), told in the session's stream: route=%s request_id=%s",
            refusal.reason,
            refusal.route.name,
            ctx.rec.request_id,
        )
        return self.queue.tell_refusal(ctx, session, resp, refusal.reason)

    def _refuse(self, ctx: RequestContext, refusal: Refuse, api: str | None) -> web.Response:
        """No slot for a gated join: 503 + detail + Retry-After (Gradio's clients show
        an error for a refused join; see docs/gradio.md for what each shows)."""
        log.info(
            "gradio join refused (%s): route=%s api=%s request_id=%s",
            refusal.reason,
            refusal.route.name,
            api or "-",
            ctx.rec.request_id,
        )
        return self.respond.refuse(ctx, refusal)
