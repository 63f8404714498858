"""Relaying one forwarded request: the body up, the answer down, chunk by chunk.

A ``Relay`` owns one exchange with the engine. It streams the request body
(from the client, or from the spool an admit route's body was taken into),
returns once the response head arrives, then relays the body as it comes
(SSE unbuffered, bytes never decoded) and releases the upstream connection
exactly once in ``finally``.

Client disconnects: aiohttp does not cancel handlers, so a client that left
is noticed either when writing to it fails, or, while waiting minutes for the
engine's response head, by a cheap timer that polls the transport
(``_ClientWatch``). What happens then is ``admission.on_client_disconnect``:
``finish`` keeps reading the engine's response to its end and holds the slot
(the engine is still computing; admitting another song would put two on the
box), ``cancel`` closes the upstream connection and frees the slot at once.
The slot's lease is not the relay's: the relay reads it (is this a generation,
on which engine) and its holder releases it (``core.lease``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Protocol

import aiohttp
from aiohttp import web

from gatekeeper.core.errors import UpstreamError
from gatekeeper.core.headers import (
    REQUEST_ID,
    downstream_response_headers,
    upstream_request_headers,
)
from gatekeeper.core.lease import Lease
from gatekeeper.core.vocab import ErrorKind
from gatekeeper.proxy.context import RequestContext
from gatekeeper.proxy.expect import send_continue
from gatekeeper.proxy.ports import ProxyPorts
from gatekeeper.proxy.respond import client_left
from gatekeeper.proxy.spool import Spool
from gatekeeper.proxy.streams import is_event_stream
from gatekeeper.upstream import DROPPED, ClientGone, Exchange, UpstreamPool

log = logging.getLogger("gatekeeper.proxy")

# How often a request waiting for the engine checks whether its client is still there.
DISCONNECT_POLL_SECONDS = 0.5

# Room for a response head that aiohttp sends together with the first body bytes.
_HEAD_ALLOWANCE = 16 * 1024


# Errors raised by aiohttp when writing to a client that has gone.
_CLIENT_WRITE_ERRORS = (ConnectionError, aiohttp.ClientConnectionResetError)


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


class StreamObserver(Protocol):
    """Watches a relayed answer's bytes as they pass (a Gradio stream, ``gradio.route``).

    ``feed`` sees every chunk, before it is written to the client; ``done`` is told
    how the answer ended (``clean``: read to its end). While ``wanted()`` is an unset
    Event after the client left, the relay keeps reading the answer for nobody (the
    engine is still computing a generation this stream will report the end of)."""

    def feed(self, chunk: bytes) -> None: ...

    def done(self, clean: bool) -> None: ...

    def wanted(self) -> asyncio.Event | None: ...


class Relay:
    """One exchange with the engine for one client request."""

    def __init__(
        self,
        ports: ProxyPorts,
        ctx: RequestContext,
        pool: UpstreamPool,
        *,
        lease: Lease | None = None,
        spool: Spool | None = None,
        observer: StreamObserver | None = None,
        identity: bool = False,
    ):
        config = ctx.config
        self.ports = ports
        self.request = ctx.request
        self.config = config
        self.route = ctx.route
        self.pool = pool
        self.rec = ctx.rec
        self.lease = lease  # a generation's: its engine, and the estimator is fed
        self.spool = spool
        # With ``finish`` the engine's answer is awaited even if the client left.
        self.finish = lease is not None and config.admission.on_client_disconnect == "finish"
        self.send_timeout = config.limits.client_send_timeout
        self.drained = False  # the engine's answer was read to its end for a gone client
        self.sent_at = 0.0
        self.observer = observer
        # Ask for an uncompressed answer (an observed stream is parsed as it passes).
        self.identity = identity or observer is not None

    async def run(self) -> web.StreamResponse:
        """Send, relay, release; the spool (if any) is closed at the end, whatever happens."""
        try:
            exchange = await self._send()
            if isinstance(exchange, web.StreamResponse):
                return exchange  # the client left before the engine answered
            return await self._relay(exchange)
        finally:
            if self.spool is not None:
                self.spool.close()

    async def _send(self) -> Exchange | web.StreamResponse:
        ports, cfg, request, rec = self.ports, self.config, self.request, self.rec
        headers = upstream_request_headers(
            request.headers,
            client_ip=request.remote,
            scheme=request.scheme,
            request_id=rec.request_id,
        )
        if self.identity:
            headers["Accept-Encoding"] = "identity"
        body: AsyncIterator[bytes] | None
        if self.spool is not None:
            body = self.spool.chunks()
            headers["Content-Length"] = str(self.spool.size)  # was chunked, or the same
        else:
            body = None
            if request.body_exists:
                await send_continue(request)  # the body is wanted now (proxy.expect)
                body = request.content.iter_any()
        self.sent_at = ports.clock()
        rec.queue_seconds = self.sent_at - rec.started
        # Without ``finish`` a vanished client cancels the wait (and the upstream request).
        # Not an observed stream's: closing it could lose the end of a generation it
        # reports (Gradio drops a running job's messages when its session's stream
        # closes); its head comes at once and ``_relay`` then reads it for nobody.
        observed = self.observer is not None
        watch = (
            None if self.finish or observed else _ClientWatch(request, asyncio.get_running_loop())
        )
        if watch is not None:
            watch.start()
        try:
            return await self.pool.send(
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
            return client_left(
                ports.counters, self.route.name, rec, "waiting for the upstream response"
            )
        except ClientGone:
            return client_left(ports.counters, self.route.name, rec, "sending the request body")
        except UpstreamError as exc:
            if self.lease is not None:  # a generation: its engine may be down
                ports.engine_refused(self.lease.engine, exc.engine_gone)
            raise
        finally:
            if watch is not None:
                watch.stop()

    async def _relay(self, exchange: Exchange) -> web.StreamResponse:
        ports, rec, request = self.ports, self.rec, self.request
        upstream = exchange.response
        rec.upstream_status = upstream.status
        rec.upstream_head_seconds = ports.clock() - self.sent_at
        upstream_done = False  # the engine's body was read to its end
        send_timeout = self.send_timeout
        # An engine's own event stream on a pass route may never end: a stop cancels it.
        stream = self.lease is None and self.observer is None
        held = ports.streams.enter() if stream and is_event_stream(upstream.headers) else None
        try:
            out = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            out.headers.extend(downstream_response_headers(upstream.headers))
            out.headers[REQUEST_ID] = rec.request_id
            # A client that stops reading (a suspended tab, a hostile peer) must not hold the
            # slot: every write to it must complete within limits.client_send_timeout.
            loop = asyncio.get_running_loop()
            stalled = asyncio.timeout(None)
            may_wait = self._write_may_wait
            try:
                async with stalled:
                    if may_wait(_HEAD_ALLOWANCE):
                        stalled.reschedule(loop.time() + send_timeout)
                    await out.prepare(request)
                    stalled.reschedule(None)
                    observer = self.observer
                    async for chunk in upstream.content.iter_any():
                        rec.bytes_out += len(chunk)
                        if observer is not None:
                            observer.feed(chunk)
                        if may_wait(len(chunk) + _HEAD_ALLOWANCE):
                            stalled.reschedule(loop.time() + send_timeout)
                            await out.write(chunk)
                            stalled.reschedule(None)
                        else:
                            await out.write(chunk)
                    upstream_done = True
                    if may_wait(_HEAD_ALLOWANCE):
                        stalled.reschedule(loop.time() + send_timeout)
                    await out.write_eof()
                rec.status = upstream.status
            except (*_CLIENT_WRITE_ERRORS, TimeoutError) as exc:
                if isinstance(exc, TimeoutError) and not stalled.expired():
                    self._upstream_broke(exc)  # the engine went silent
                else:
                    await self._client_left_mid_response(
                        upstream, self.finish and not upstream_done, stalled=stalled.expired()
                    )
                    upstream_done = upstream_done or self.drained
            except aiohttp.ClientError as exc:
                self._upstream_broke(exc)
            return out
        finally:
            ports.streams.leave(held)
            if self.observer is not None:
                self.observer.done(upstream_done)
            exchange.close(reuse=upstream_done)
            rec.bytes_in = exchange.body.sent  # counted, so chunked uploads are logged too
            elapsed = ports.clock() - self.sent_at
            rec.upstream_seconds = elapsed
            # A gradio route's generations are timed by ``gradio.events`` (join to
            # completion); its other requests (the page, files, streams) are not generations.
            timed = self.route.action != "gradio" or self.lease is not None
            if upstream_done and timed:
                ports.upstream_timed(self.route.name, str(upstream.status), elapsed)
                if self.lease is not None and 200 <= upstream.status < 300:
                    ports.gate.estimator.observe(elapsed)

    def _write_may_wait(self, size: int) -> bool:
        """Could writing ``size`` more bytes make us wait for the client to read?

        aiohttp's write only awaits once the transport's buffer is past its high-water
        mark (the transport then pauses the protocol); below it the write returns at once
        and needs no timer. Arming the send timeout for every write (5 timer reschedules
        per small response) was ~5 % of a passthrough request.
        """
        transport = self.request.transport
        if transport is None:
            return True  # gone: the write fails at once, with or without a timer
        high = transport.get_write_buffer_limits()[1]
        return transport.get_write_buffer_size() + size > high

    async def _client_left_mid_response(
        self, upstream: aiohttp.ClientResponse, finish: bool, *, stalled: bool
    ) -> None:
        rec, route = self.rec, self.route
        rec.client_gone = True
        self.ports.counters.upstream_error(route.name, ErrorKind.CLIENT_DISCONNECT)
        if stalled:
            rec.reason = "client_stalled"
            log.info(
                "client read nothing for %gs (limits.client_send_timeout); dropping it: "
                "request_id=%s route=%s",
                self.send_timeout,
                rec.request_id,
                route.name,
            )
            if self.request.transport is not None:
                self.request.transport.abort()
        if finish:
            log.info(
                "client went away mid-response; finishing the generation: request_id=%s",
                rec.request_id,
            )
            self.drained = await self._discard_rest(upstream)
        elif self.observer is not None:
            wanted = self.observer.wanted()
            if wanted is not None and not wanted.is_set():
                log.info(
                    "client went away from a stream that reports a running generation; "
                    "reading it until the generation ends: request_id=%s route=%s",
                    rec.request_id,
                    route.name,
                )
                self.drained = await self._observe_rest(upstream, wanted)

    async def _observe_rest(self, upstream: aiohttp.ClientResponse, idle: asyncio.Event) -> bool:
        """Read a stream for nobody, feeding the observer, until ``idle`` is set (the
        generations it reports have ended) or the stream ends. True: read to its end."""
        observer = self.observer
        assert observer is not None

        async def read() -> bool:
            async for chunk in upstream.content.iter_any():
                observer.feed(chunk)
            return True

        reader = asyncio.ensure_future(read())
        waiter = asyncio.ensure_future(idle.wait())
        try:
            await asyncio.wait((reader, waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (reader, waiter):
                if not t.done():
                    t.cancel()
            await asyncio.gather(reader, waiter, return_exceptions=True)
        if reader.cancelled():
            return False  # idle: nothing left to hear; the connection is closed, not reused
        exc = reader.exception()
        if exc is not None:
            if isinstance(exc, aiohttp.ClientError | TimeoutError):
                self._upstream_broke(exc)
                return False
            raise exc
        return True

    async def _discard_rest(self, upstream: aiohttp.ClientResponse) -> bool:
        """Read the engine's answer to its end for nobody; the slot stays taken meanwhile."""
        try:
            async for _ in upstream.content.iter_any():
                pass
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._upstream_broke(exc)
            return False
        return True

    def _upstream_broke(self, exc: BaseException) -> None:
        """The response head is out, so no error status can be sent: abort the client
        connection rather than pass a truncated body off as complete."""
        rec, route = self.rec, self.route
        kind = ErrorKind.TIMEOUT if isinstance(exc, TimeoutError) else ErrorKind.PROTOCOL
        self.ports.counters.upstream_error(route.name, kind)
        if self.lease is not None and isinstance(exc, DROPPED):  # its engine may have died
            self.ports.engine_refused(self.lease.engine, True)
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
        if self.request.transport is not None:
            self.request.transport.abort()
