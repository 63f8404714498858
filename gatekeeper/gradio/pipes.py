"""The client streams gatekeeper writes itself, by key (issue #19).

- a session's ``queue/data`` stream: one ``pipe.SessionPipe`` per session, made
  when the client opens the stream (every session's stream on a ``gradio``
  route is written from a pipe, so a gated event can always join it: a stream
  relayed as it came could not be spliced) or when a gated event of the session
  first needs it (a join that waits, or one admitted at once);
- a waiting ``/call`` event's ``GET /call/<api>/<id>`` stream: one
  ``callpipe.CallPipe`` per event, by gatekeeper's id (``queueing.hold_call``).

A pipe with nothing left is forgotten ``IDLE_PIPE_SECONDS`` after it went quiet
(a client late to open its stream still gets what was said meanwhile).
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from aiohttp import web

from gatekeeper.core.headers import REQUEST_ID, upstream_request_headers
from gatekeeper.core.vocab import Outcome
from gatekeeper.gradio.callpipe import CallPipe
from gatekeeper.gradio.events import GradioEvents
from gatekeeper.gradio.pipe import SessionPipe
from gatekeeper.proxy.context import RequestContext
from gatekeeper.proxy.ports import ProxyPorts
from gatekeeper.proxy.respond import Responder
from gatekeeper.upstream import Exchange

# How long a pipe nobody reads is kept once idle (its last frames, for a client late to
# open its stream).
IDLE_PIPE_SECONDS = 60.0
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


def data_path(join_raw_path: str, session: str) -> str:
    """The session's queue/data target beside a join's (``…/queue/join`` -> ``…/queue/data``)."""
    base = join_raw_path.split("?", 1)[0].rstrip("/")
    return base[: -len("join")] + "data?session_hash=" + quote(session, safe="")


def stream_headers(ctx: RequestContext) -> dict[str, str]:
    """The headers of gatekeeper's own GET of an app's stream, from the client's request."""
    request = ctx.request
    headers = upstream_request_headers(
        request.headers,
        client_ip=request.remote,
        scheme=request.scheme,
        request_id=ctx.rec.request_id,
    )
    for name in ("Content-Length", "Content-Type", "Content-Encoding"):
        headers.popall(name, None)
    headers["Accept"] = "text/event-stream"
    headers["Accept-Encoding"] = "identity"  # parsed as it passes
    return dict(headers)


class Pipes:
    """Mixed into ``queueing.GradioQueue``: the pipes, made, served and forgotten."""

    def __init__(self, ports: ProxyPorts, respond: Responder, events: GradioEvents):
        self.ports = ports
        self.respond = respond
        self.events = events
        self.pipes: dict[str, SessionPipe] = {}
        self.calls: dict[str, CallPipe] = {}  # the streams of /call events held, by our id

    def _send_timeout(self) -> float:
        return self.ports.rules.runtime.config.limits.client_send_timeout

    async def _get(self, path: str, headers: dict[str, str]) -> Exchange:
        rt = self.ports.rules.runtime
        return await rt.passthrough.send(
            "GET", path, headers, None, max_body_bytes=rt.config.limits.max_body_bytes
        )

    # ------------------------------------------------------------------ sessions

    def pipe(self, session: str) -> SessionPipe | None:
        """The session's pipe, unless it has nothing left to write."""
        pipe = self.pipes.get(session)
        if pipe is not None and pipe.finished():
            del self.pipes[session]
            return None
        return pipe

    def passed(self, session: str | None) -> None:
        """A join of a function nobody gates went to the app: if gatekeeper writes the
        session's stream, the app's frames for it come through gatekeeper's reader."""
        pipe = self.pipe(session) if session is not None else None
        if pipe is not None:
            pipe.forwarded()

    def pipe_for(self, ctx: RequestContext, session: str, path: str | None = None) -> SessionPipe:
        """The session's pipe; made on its first need. ``path``: the app's queue/data
        target (the client's own request's), else the one beside the join's."""
        pipe = self.pipe(session)
        if pipe is not None:
            return pipe
        target = path if path is not None else data_path(ctx.request.raw_path, session)
        headers = stream_headers(ctx)
        pipe = SessionPipe(
            session,
            self.events,
            lambda: self._get(target, headers),
            send_timeout=self._send_timeout,
            on_idle=self._idle,
        )
        self.pipes[session] = pipe
        return pipe

    def stream_for(self, ctx: RequestContext, session: str) -> SessionPipe:
        """The client opens the session's queue/data stream: its pipe, reading the app's
        stream from now if the pipe is new (a pipe that exists already reads it when
        the app has something of the session: a join forwarded)."""
        pipe = self.pipe(session)
        if pipe is None:
            pipe = self.pipe_for(ctx, session, ctx.request.raw_path)
            pipe.forwarded()
        return pipe

    def _idle(self, pipe: SessionPipe) -> None:
        def drop() -> None:
            if self.pipes.get(pipe.session) is pipe and not pipe.busy() and not pipe.attached:
                del self.pipes[pipe.session]

        asyncio.get_running_loop().call_later(IDLE_PIPE_SECONDS, drop)

    async def serve(self, ctx: RequestContext, pipe: SessionPipe) -> web.StreamResponse:
        """The client's queue/data request of a session gatekeeper writes the stream of."""
        rec = ctx.rec
        if pipe.told is not None:  # it tells a refusal counted at the join: logged as such
            rec.decision, rec.reason, pipe.told = Outcome.REJECTED, pipe.told, None
        else:
            self.respond.count(ctx, Outcome.PASSED)
        return await self._serve(ctx, pipe)

    # ------------------------------------------------------------------ /call events

    def call_for(self, ctx: RequestContext, ours: str) -> CallPipe:
        """A new pipe for the /call event ``ours`` (its POST is ``ctx``'s request)."""
        base = ctx.request.raw_path.split("?", 1)[0].rstrip("/")
        headers = stream_headers(ctx)
        pipe = CallPipe(
            ours,
            self.events,
            lambda app_id: self._get(f"{base}/{quote(app_id, safe='')}", headers),
            send_timeout=self._send_timeout,
            on_idle=self._call_idle,
        )
        self.calls[ours] = pipe
        return pipe

    def call_pipe(self, ours: str) -> CallPipe | None:
        """The stream of the /call event ``ours``, unless all was told."""
        pipe = self.calls.get(ours)
        if pipe is not None and pipe.finished():
            del self.calls[ours]
            return None
        return pipe

    def _call_idle(self, pipe: CallPipe) -> None:
        def drop() -> None:
            if self.calls.get(pipe.ours) is pipe and not pipe.busy() and not pipe.attached:
                del self.calls[pipe.ours]

        asyncio.get_running_loop().call_later(IDLE_PIPE_SECONDS, drop)

    async def serve_call(self, ctx: RequestContext, pipe: CallPipe) -> web.StreamResponse:
        """The client's ``GET /call/<api>/<our id>``."""
        self.respond.count(ctx, Outcome.PASSED)
        return await self._serve(ctx, pipe)

    async def _serve(self, ctx: RequestContext, pipe: SessionPipe | CallPipe) -> web.StreamResponse:
        rec = ctx.rec
        headers = dict(SSE_HEADERS)
        headers[REQUEST_ID] = rec.request_id
        out, sent, gone = await pipe.serve(ctx.request, headers)
        rec.status, rec.bytes_out, rec.client_gone = 200, sent, gone
        return out

    # ------------------------------------------------------------------ stop

    def sessions_busy(self, key: str) -> bool:
        """A stream of ``key`` (a session, or a /call event of ours) is owed more than the
        app's events in ``GradioEvents`` say: gatekeeper's own events, waiting or being
        forwarded, or a call the app runs."""
        pipe = self.pipes.get(key)
        if pipe is not None and (pipe.held or pipe.forwarding > 0):
            return True
        call = self.calls.get(key)
        return call is not None and call.busy()

    async def close_pipes(self) -> None:
        """gatekeeper stops: the readers of the app's streams end (their events' slots
        are released by ``GradioEvents.close``)."""
        for pipe in list(self.pipes.values()):
            await pipe.close()
        for call in list(self.calls.values()):
            await call.close()
        self.pipes.clear()
        self.calls.clear()
