"""A client's SSE stream written by gatekeeper from an outbox of whole frames (issue #19).

Both streams gatekeeper writes itself, a session's ``queue/data``
(``pipe.SessionPipe``) and a waiting ``/call`` event's ``GET /call/<api>/<id>``
(``callpipe.CallPipe``), are written the same way: frames are queued whole
(the app's, cut at frame boundaries, and gatekeeper's own between them) and
``serve`` writes them in order to the client's request, with a heartbeat of the
stream's own kind when nothing was written for ``HEARTBEAT_SECONDS`` (Gradio's
interval), so that neither the client nor anything between gives up on a
stream that waits. One writer at a time: a newer request of the same stream
ends the older one (Gradio keeps one stream per session).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import aiohttp
from aiohttp import web

# Frames kept for a stream nobody reads: past this, droppable frames (progress ticks,
# heartbeats) are not kept.
MAX_DETACHED_FRAMES = 256
# How often an idle writer checks that its client is still there.
CLIENT_POLL_SECONDS = 0.5
# gatekeeper's own heartbeat on a stream with nothing else to say (Gradio: 15 s).
HEARTBEAT_SECONDS = 15.0


class Outbox:
    """Whole frames in order; ``serve`` writes them to the client's request."""

    heartbeat: bytes  # the stream's own heartbeat frame (its subclass says which)

    def __init__(self, send_timeout: Callable[[], float]):
        self._send_timeout = send_timeout
        self._out: deque[tuple[bytes, bool]] = deque()  # (frame, the stream's last)
        self._wake = asyncio.Event()
        self._writer: object | None = None
        self.cut = False  # the app broke its stream: the client's is aborted after the outbox

    def put(self, raw: bytes, *, droppable: bool = False, last: bool = False) -> None:
        """Queue a whole frame; ``last``: the client's stream ends after it."""
        if self._writer is None and droppable and len(self._out) >= MAX_DETACHED_FRAMES:
            return  # nobody reads: a progress tick or a heartbeat is not worth keeping
        self._out.append((raw, last))
        self._wake.set()

    @property
    def attached(self) -> bool:
        return self._writer is not None

    def writer_done(self, gone: bool) -> None:
        """The client's request ended (``gone``: the client left before the end)."""

    async def serve(
        self, request: web.BaseRequest, headers: dict[str, str]
    ) -> tuple[web.StreamResponse, int, bool]:
        """Write the outbox to ``request``'s client until its last frame (or a newer
        request of the stream replaces this one); returns (the response, bytes
        written, the client left)."""
        token = object()
        if self._writer is not None:
            self._wake.set()  # the older stream ends: one stream at a time
        self._writer = token
        out = web.StreamResponse(status=200, headers=headers)
        sent, gone = 0, False
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        try:
            await out.prepare(request)
            while self._writer is token:
                while self._out and self._writer is token:
                    raw, last = self._out.popleft()
                    async with asyncio.timeout(self._send_timeout()):
                        await out.write(raw)
                    sent += len(raw)
                    quiet_since = loop.time()
                    if last:
                        await out.write_eof()
                        return out, sent, False
                if self.cut and not self._out:
                    abort(request)
                    return out, sent, False
                transport = request.transport
                if transport is None or transport.is_closing():
                    gone = True
                    return out, sent, True
                if loop.time() - quiet_since >= HEARTBEAT_SECONDS:
                    self._out.append((self.heartbeat, False))
                    continue
                self._wake.clear()
                try:
                    async with asyncio.timeout(CLIENT_POLL_SECONDS):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            return out, sent, False
        except (ConnectionError, aiohttp.ClientConnectionResetError, TimeoutError):
            gone = True
            abort(request)
            return out, sent, True
        finally:
            if self._writer is token:
                self._writer = None
                self.writer_done(gone)


def abort(request: web.BaseRequest) -> None:
    if request.transport is not None:
        request.transport.abort()
