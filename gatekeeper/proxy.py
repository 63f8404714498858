"""The proxy handler: adapt an aiohttp request, ask admission, relay bytes both ways.

The path of one request (see docs/architecture.md):

1. refuse anything that would make us an open proxy (CONNECT, absolute-form);
2. match a route; ``block`` is answered here and never forwarded;
3. refuse a declared ``Content-Length`` over ``limits.max_body_bytes`` (413);
4. ``admit`` routes take a ``Ticket`` from the gate — or get the rejection
   with ``Retry-After`` at once, with no I/O at all;
5. stream the request body to the pool's upstream session and the response
   body back, chunk by chunk as it arrives (never read whole);
6. release the upstream connection and the ticket in ``finally`` blocks,
   exactly once, whatever happened.

Client disconnects: aiohttp does not cancel handlers, so we notice a client
that left either when writing to it fails, or — while waiting minutes for the
engine's response head — with a cheap timer that polls the transport. What
happens then is ``admission.on_client_disconnect``: ``finish`` keeps reading
the engine's response to its end and holds the slot (the engine is still
computing; admitting another song would put two on the box), ``cancel`` closes
the upstream connection and frees the slot at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from .admission import Rejection, Ticket
from .config import Config, Route
from .edge import Connections
from .errors import BadRequest, BodyTooLarge, HttpError, MethodNotAllowed, UpstreamError
from .headers import (
    REQUEST_ID,
    downstream_response_headers,
    request_id,
    upstream_request_headers,
)
from .spool import Spool, take_body
from .state import AppState, Runtime
from .status import status_document
from .upstream import ClientGone, Exchange, UpstreamPool

log = logging.getLogger("gatekeeper.proxy")

# How often a request waiting for the engine checks whether its client is still there.
DISCONNECT_POLL_SECONDS = 0.5

# Errors raised by aiohttp when writing to a client that has gone.
_CLIENT_WRITE_ERRORS = (ConnectionError, aiohttp.ClientConnectionResetError)


@dataclass
class RequestRecord:
    """What the access log says about one request (issue #5 §3)."""

    request_id: str
    client: str | None
    method: str
    path: str
    route: str = "-"
    action: str = "-"
    decision: str = "-"  # admitted|passed|rejected|blocked
    reason: str | None = None
    status: int | None = None  # what the client got
    upstream_status: int | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    started: float = 0.0
    queue_seconds: float = 0.0
    upstream_seconds: float | None = None
    total_seconds: float = 0.0
    client_gone: bool = False
    # Bookkeeping, not logged: the reload epoch held, the finish job, who logs the line.
    epoch: int = 0
    job: asyncio.Task[web.StreamResponse] | None = None
    handler_done: bool = False
    logged: bool = False
    drained: bool = False  # the engine's answer was read to its end for a gone client


def json_error(
    status: int,
    reason: str,
    detail: str,
    *,
    retry_after: int | None = None,
    request_id: str | None = None,
) -> web.Response:
    body: dict[str, Any] = {"detail": detail, "reason": reason}
    headers = {"X-Gatekeeper-Reason": reason}
    if retry_after is not None:
        body["retry_after"] = retry_after
        headers["Retry-After"] = str(retry_after)
    if request_id is not None:
        headers[REQUEST_ID] = request_id
    return web.Response(
        status=status,
        headers=headers,
        text=json.dumps(body, ensure_ascii=False),
        content_type="application/json",
    )


class _ClientWatch:
    """Polls the client's transport while we wait on the engine; cancels the handler if
    the client is gone. A timer, not a task: cheap enough for every request."""

    def __init__(self, request: web.BaseRequest, loop: asyncio.AbstractEventLoop):
        self._request = request
        self._loop = loop
        self._task = asyncio.current_task()
        self._handle: asyncio.TimerHandle | None = None
        self.fired = False

    def start(self) -> None:
        self._handle = self._loop.call_later(DISCONNECT_POLL_SECONDS, self._poll)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _poll(self) -> None:
        transport = self._request.transport
        if transport is None or transport.is_closing():
            self.fired = True
            self._handle = None
            if self._task is not None:
                self._task.cancel(msg="client disconnected")
            return
        self._handle = self._loop.call_later(DISCONNECT_POLL_SECONDS, self._poll)


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

    @web.middleware
    async def refuse_foreign_targets(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
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

    async def _checked(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
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
        cfg = rt.config
        now = st.clock()
        rid = request_id(request.headers)
        rec = RequestRecord(rid, request.remote, request.method, request.path, started=now)
        rec.epoch = epoch
        try:
            return await self._handle(request, rt, rec)
        except HttpError as exc:
            return self._error(cfg, exc, rec)
        finally:
            st.usage.leave(epoch)
            rec.handler_done = True
            if rec.job is None or rec.job.done():
                self._log(rec)  # else the finish job, still running, logs it when it ends

    def _log(self, rec: RequestRecord) -> None:
        if rec.logged:
            return
        rec.logged = True
        rec.total_seconds = self.state.clock() - rec.started
        if self.on_record is not None:
            self.on_record(rec)

    def _job_done(
        self, ticket: Ticket, rec: RequestRecord
    ) -> Callable[[asyncio.Task[web.StreamResponse]], None]:
        """The end of a ``finish`` exchange: free its slot and its epoch, exactly once."""

        def done(job: asyncio.Task[web.StreamResponse]) -> None:
            ticket.release()
            self.state.usage.leave(rec.epoch)
            if not job.cancelled():
                job.exception()  # retrieved: the handler may be gone and never await it
            if rec.handler_done:
                self._log(rec)

        return done

    # ------------------------------------------------------------------ decision

    async def _handle(
        self, request: web.BaseRequest, rt: Runtime, rec: RequestRecord
    ) -> web.StreamResponse:
        st, cfg = self.state, rt.config
        method = request.method  # the target was checked by refuse_foreign_targets
        # Issue #3 §2: the status JSON, same-origin for the frontend; never forwarded.
        # Other methods on that path are the upstream's business, like any path.
        if method in ("GET", "HEAD") and request.path == cfg.status_path:
            return self._status(rec)
        route = rt.router.match(method, request.path)
        rec.route, rec.action = route.name, route.action
        if route.action == "block":
            return self._blocked(cfg, route, rec)
        max_body = cfg.limits.max_body_bytes
        declared = request.content_length
        if declared is not None and declared > max_body:
            raise BodyTooLarge(
                f"request body of {declared} bytes exceeds limits.max_body_bytes ({max_body})"
            )
        if route.action == "pass":
            self._count(route, "passed", rec)
            return await self._forward(request, rt, route, rt.passthrough, None, rec)
        # Reject at once while nothing is read: a busy engine costs no upload.
        early = st.gate.check(st.clock())
        if early is not None:
            return self._rejected(cfg, route, early, rec)
        # Take the whole body *before* the ticket (spool.py): a slow upload never holds
        # the slot, and the engine only starts work whose input is complete.
        spool: Spool | None = None
        if request.body_exists:
            try:
                spool = await take_body(
                    request.content.iter_any(),
                    max_bytes=max_body,
                    idle_timeout=cfg.limits.client_body_timeout,
                    deadline=cfg.limits.client_body_deadline,
                    memory_limit=cfg.limits.spool_memory_bytes,
                )
            except ClientGone:
                return self._client_left(route, rec, "sending the request body")
        result = st.gate.try_admit(route.name, st.clock())
        if isinstance(result, Rejection):  # the slot went to someone else meanwhile
            if spool is not None:
                spool.close()
            return self._rejected(cfg, route, result, rec)
        ticket = result
        self._count(route, "admitted", rec)
        if cfg.admission.on_client_disconnect == "cancel":
            try:
                return await self._forward(request, rt, route, rt.gated, ticket, rec, spool)
            finally:
                ticket.release()
        # ``finish``: the exchange runs in its own task, which owns the ticket. Nothing that
        # happens to this handler task (the client leaving, a server configured to cancel
        # handlers, shutdown) can free the slot while the engine is still computing.
        # The job holds the rules' epoch too, so a reload never closes its pool under it.
        self.state.usage.join(rec.epoch)
        job = asyncio.create_task(self._forward(request, rt, route, rt.gated, ticket, rec, spool))
        rec.job = job
        job.add_done_callback(self._job_done(ticket, rec))
        return await asyncio.shield(job)

    def _status(self, rec: RequestRecord) -> web.Response:
        rec.route, rec.action, rec.decision, rec.status = "status", "status", "status", 200
        resp = web.json_response(status_document(self.state))
        resp.headers["Cache-Control"] = "no-store"
        resp.headers[REQUEST_ID] = rec.request_id
        return resp

    def _count(self, route: Route, outcome: str, rec: RequestRecord) -> None:
        rec.decision = outcome
        self.state.count(route.name, outcome)

    def _rejected(
        self, cfg: Config, route: Route, rej: Rejection, rec: RequestRecord
    ) -> web.Response:
        self._count(route, "rejected", rec)
        self.state.count_rejection(route.name, rej.reason)
        rec.reason = rej.reason
        res = self.state.gate.resources
        detail = cfg.message(
            rej.reason,
            retry_after=rej.retry_after,
            in_flight=self.state.gate.in_flight,
            max_in_flight=self.state.gate.limits.max_in_flight,
            cpu_percent=res.cpu_percent,
            memory_percent=res.memory_percent,
            route=route.name,
        )
        resp = json_error(
            cfg.admission.reject_status,
            rej.reason,
            detail,
            retry_after=rej.retry_after,
            request_id=rec.request_id,
        )
        rec.status = resp.status
        return resp

    def _blocked(self, cfg: Config, route: Route, rec: RequestRecord) -> web.Response:
        self._count(route, "blocked", rec)
        self.state.count_rejection(route.name, "blocked")
        rec.reason = "blocked"
        detail = route.detail or cfg.message("blocked", route=route.name)
        resp = json_error(route.status or 403, "blocked", detail, request_id=rec.request_id)
        rec.status = resp.status
        return resp

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
                rec.decision = "rejected"
                self.state.count(route, "rejected")
            self.state.count_rejection(route, exc.reason)
            detail = exc.detail
        resp = json_error(exc.status, exc.reason, detail, request_id=rec.request_id)
        if exc.status in (408, 413):
            # The rest of the body is unwanted: close after the answer (with a 1 s
            # lingering read, app.LINGER_SECONDS) instead of reading it for keep-alive.
            resp.force_close()
        rec.status = resp.status
        return resp

    # ------------------------------------------------------------------ relaying

    async def _forward(
        self,
        request: web.BaseRequest,
        rt: Runtime,
        route: Route,
        pool: UpstreamPool,
        ticket: Ticket | None,
        rec: RequestRecord,
        spool: Spool | None = None,
    ) -> web.StreamResponse:
        """Send the request upstream and relay the answer; the spool is closed at the end."""
        try:
            return await self._exchange(request, rt, route, pool, ticket, rec, spool)
        finally:
            if spool is not None:
                spool.close()

    async def _exchange(
        self,
        request: web.BaseRequest,
        rt: Runtime,
        route: Route,
        pool: UpstreamPool,
        ticket: Ticket | None,
        rec: RequestRecord,
        spool: Spool | None,
    ) -> web.StreamResponse:
        st, cfg = self.state, rt.config
        loop = asyncio.get_running_loop()
        finish = ticket is not None and cfg.admission.on_client_disconnect == "finish"
        headers = upstream_request_headers(
            request.headers,
            client_ip=request.remote,
            scheme=request.scheme,
            request_id=rec.request_id,
        )
        body: AsyncIterator[bytes] | None
        if spool is not None:
            body = spool.chunks()
            headers["Content-Length"] = str(spool.size)  # was chunked, or the same
        else:
            body = request.content.iter_any() if request.body_exists else None
        sent_at = st.clock()
        rec.queue_seconds = sent_at - rec.started
        # With ``finish`` the engine's answer is awaited even if the client left; otherwise
        # a vanished client cancels the wait (and the upstream request) promptly.
        watch = None if finish else _ClientWatch(request, loop)
        if watch is not None:
            watch.start()
        try:
            exchange = await pool.send(
                request.method,
                request.raw_path,
                headers,
                body,
                max_body_bytes=cfg.limits.max_body_bytes,
                client_body_timeout=cfg.limits.client_body_timeout,
            )
        except asyncio.CancelledError:
            if watch is None or not watch.fired:
                raise
            # Our own watch cancelled us: the client left while the engine worked.
            task = asyncio.current_task()
            if task is not None and task.uncancel() > 0:
                raise  # a real cancellation (shutdown) is also pending
            return self._client_left(route, rec, "waiting for the upstream response")
        except ClientGone:
            return self._client_left(route, rec, "sending the request body")
        finally:
            if watch is not None:
                watch.stop()
        return await self._relay(
            request, route, exchange, ticket, finish, sent_at, rec, cfg.limits.client_send_timeout
        )

    def _client_left(self, route: Route, rec: RequestRecord, when: str) -> web.StreamResponse:
        rec.client_gone = True
        rec.reason = "client_disconnect"
        self.state.count_upstream_error(route.name, "client_disconnect")
        log.info(
            "client went away while %s: request_id=%s route=%s", when, rec.request_id, route.name
        )
        # Nobody will read this; aiohttp drops it on the closed transport.
        return web.Response(status=499)

    async def _relay(
        self,
        request: web.BaseRequest,
        route: Route,
        exchange: Exchange,
        ticket: Ticket | None,
        finish: bool,
        sent_at: float,
        rec: RequestRecord,
        send_timeout: float,
    ) -> web.StreamResponse:
        st = self.state
        upstream = exchange.response
        rec.upstream_status = upstream.status
        upstream_done = False  # the engine's body was read to its end
        try:
            out = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            out.headers.extend(downstream_response_headers(upstream.headers))
            out.headers[REQUEST_ID] = rec.request_id
            # A client that stops reading (a suspended tab, a hostile peer) must not hold the
            # slot: every write to it must complete within limits.client_send_timeout.
            loop = asyncio.get_running_loop()
            stalled = asyncio.timeout(None)
            try:
                async with stalled:
                    stalled.reschedule(loop.time() + send_timeout)
                    await out.prepare(request)
                    stalled.reschedule(None)
                    async for chunk in upstream.content.iter_any():
                        rec.bytes_out += len(chunk)
                        stalled.reschedule(loop.time() + send_timeout)
                        await out.write(chunk)
                        stalled.reschedule(None)
                    upstream_done = True
                    stalled.reschedule(loop.time() + send_timeout)
                    await out.write_eof()
                rec.status = upstream.status
            except (*_CLIENT_WRITE_ERRORS, TimeoutError) as exc:
                if isinstance(exc, TimeoutError) and not stalled.expired():
                    self._upstream_broke(request, route, rec, exc)  # the engine went silent
                else:
                    await self._client_left_mid_response(
                        request,
                        upstream,
                        route,
                        rec,
                        finish and not upstream_done,
                        stalled=stalled.expired(),
                        send_timeout=send_timeout,
                    )
                    upstream_done = upstream_done or rec.drained
            except aiohttp.ClientError as exc:
                self._upstream_broke(request, route, rec, exc)
            return out
        finally:
            exchange.close(reuse=upstream_done)
            rec.bytes_in = exchange.body.sent  # counted, so chunked uploads are logged too
            elapsed = st.clock() - sent_at
            rec.upstream_seconds = elapsed
            if upstream_done:
                code = str(upstream.status)
                st.metrics.upstream_duration.labels(route.name, code).observe(elapsed)
                if ticket is not None and 200 <= upstream.status < 300:
                    st.gate.estimator.observe(elapsed)

    async def _client_left_mid_response(
        self,
        request: web.BaseRequest,
        upstream: aiohttp.ClientResponse,
        route: Route,
        rec: RequestRecord,
        finish: bool,
        *,
        stalled: bool,
        send_timeout: float,
    ) -> None:
        rec.client_gone = True
        self.state.count_upstream_error(route.name, "client_disconnect")
        if stalled:
            rec.reason = "client_stalled"
            log.info(
                "client read nothing for %gs (limits.client_send_timeout); dropping it: "
                "request_id=%s route=%s",
                send_timeout,
                rec.request_id,
                route.name,
            )
            if request.transport is not None:
                request.transport.abort()
        if finish:
            log.info(
                "client went away mid-response; finishing the generation: request_id=%s",
                rec.request_id,
            )
            rec.drained = await self._discard_rest(request, upstream, route, rec)

    async def _discard_rest(
        self,
        request: web.BaseRequest,
        upstream: aiohttp.ClientResponse,
        route: Route,
        rec: RequestRecord,
    ) -> bool:
        """Read the engine's answer to its end for nobody; the slot stays taken meanwhile."""
        try:
            async for _ in upstream.content.iter_any():
                pass
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._upstream_broke(request, route, rec, exc)
            return False
        return True

    def _upstream_broke(
        self, request: web.BaseRequest, route: Route, rec: RequestRecord, exc: BaseException
    ) -> None:
        """The response head is out, so no error status can be sent: abort the client
        connection rather than pass a truncated body off as complete."""
        kind = "timeout" if isinstance(exc, TimeoutError) else "protocol"
        self.state.count_upstream_error(route.name, kind)
        log.warning(
            "upstream failed mid-response, aborting client connection: "
            "request_id=%s route=%s kind=%s after %d bytes: %r",
            rec.request_id,
            route.name,
            kind,
            rec.bytes_out,
            exc,
        )
        rec.reason = f"upstream_{kind}_mid_body"
        if request.transport is not None:
            request.transport.abort()
