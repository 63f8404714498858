"""A waiting ``/call`` event's stream, written by gatekeeper (issue #19).

Gradio's REST flow is two requests: ``POST {p}/call/<api>`` answers
``{"event_id"}`` and ``GET {p}/call/<api>/<event_id>`` streams that event's
result as SSE with ``event:`` names. A call that finds no free slot waits in the
waiting room like a ``queue/join`` (``queueing.GradioQueue.hold_call``) and is
answered at once with gatekeeper's event id; its ``GET`` is written by
gatekeeper from a ``CallPipe``:

- while it waits: only heartbeats, ``event: heartbeat`` / ``data: null``, as
  Gradio writes them every 15 s. Gradio's ``/call`` stream has no position or
  ETA event (``routes.simple_predict_get`` emits only ``complete``, ``error``,
  ``generating`` and ``heartbeat``): the wait shows in ``/status``;
- when it leaves without running: one last frame, ``event: error`` with
  gatekeeper's detail (``max_wait``, drain; the data is what Gradio sends for a
  ``gr.Error``: ``{"error": ..., "visible": true, ...}``), or ``event:
  complete`` / ``data: null`` for a ``/cancel`` (what Gradio sends for a
  cancelled event);
- when its turn comes the call is forwarded and gatekeeper opens the app's
  ``GET …/call/<api>/<the app's id>`` itself (so the slot follows the app, read
  or not), and the app's frames follow the heartbeats whole (cut at frame
  boundaries). They carry no event id: nothing is rewritten. The event ends
  with the app's ``complete``/``error`` (``streams.SessionStream``), the stream
  with the app's.

A call admitted at once (a slot was free) gets a ``CallPipe`` too, under the app's
own id (``read_app``): gatekeeper reads its stream from the app's answer on, so a
call whose ``GET`` nobody opens frees its slot when the app finishes, as a session's
pipe does for a ``queue/join``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import aiohttp

from gatekeeper.core.errors import UpstreamError
from gatekeeper.gradio.events import GradioEvents
from gatekeeper.gradio.outbox import Outbox
from gatekeeper.gradio.splice import Framer, failure_output
from gatekeeper.gradio.streams import SessionStream
from gatekeeper.upstream import Exchange

log = logging.getLogger("gatekeeper.gradio")

CALL_HEARTBEAT = b"event: heartbeat\ndata: null\n\n"


def call_frame(event: str, data: object) -> bytes:
    """One frame of a ``/call`` stream, as Gradio writes it (``json.dumps`` style)."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class CallPipe(Outbox):
    heartbeat = CALL_HEARTBEAT

    def __init__(
        self,
        ours: str,
        events: GradioEvents,
        open_upstream: Callable[[str], Awaitable[Exchange]],
        send_timeout: Callable[[], float],
        on_idle: Callable[[CallPipe], None],
    ):
        super().__init__(send_timeout)
        self.ours = ours
        self.events = events
        self.open_upstream = open_upstream  # the app's call stream, given the app's id
        self._on_idle = on_idle
        self.forwarding = 0  # HeldEvent: its join is being forwarded
        self.app_id: str | None = None
        # While it waits: its leaving when the client goes (True: it left the queue).
        self.leave: Callable[[], bool] | None = None
        self.ended = False  # its last frame is queued
        self._reader: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ HeldEvent's side

    def failure(self, event_id: str, detail: str) -> bytes:
        return call_frame("error", failure_output(detail))

    def cancelled(self, event_id: str) -> bytes:
        return call_frame("complete", None)

    def event_session(self, app_id: str) -> str:
        """A call's session in ``GradioEvents``: its own id (Gradio: no session_hash)."""
        return app_id

    def unbound(self, ours: str, raw: bytes) -> None:
        """It ends without reaching the app: ``raw`` is the stream's last frame."""
        self.leave = None
        self._last(raw)

    def forward_failed(self, ours: str, raw: bytes) -> None:
        self.forwarding -= 1
        self.unbound(ours, raw)

    def bound(self, ours: str, app: str) -> None:
        """The app accepted the waiting call as ``app``: its stream is read from now."""
        self.forwarding -= 1
        self.leave = None
        self.read_app(app)

    def read_app(self, app: str) -> None:
        """Read the app's stream of its event ``app`` from now (a call admitted at once is
        its own pipe's id: the client reads it under the app's id, nothing waits)."""
        self.app_id = app
        self._reader = asyncio.create_task(self._read(app), name=f"gradio-call-{app[-8:]}")

    def forwarded(self) -> None:
        """(A session pipe opens the app's stream here; a call's opens in ``bound``.)"""

    # ------------------------------------------------------------------ state

    def busy(self) -> bool:
        """Anything left to hear or to tell."""
        return self.leave is not None or self.forwarding > 0 or self.reading or bool(self._out)

    @property
    def reading(self) -> bool:
        return self._reader is not None and not self._reader.done()

    def finished(self) -> bool:
        """All was told: a later GET of this id finds nothing."""
        return self.ended and not self._out and not self.reading and not self.attached

    def writer_done(self, gone: bool) -> None:
        leave = self.leave
        if gone and leave is not None and leave():
            self.leave = None
            self.ended = True  # nobody to tell: it left the queue
        if not self.busy():
            self._on_idle(self)

    def _last(self, raw: bytes) -> None:
        self.ended = True
        self.put(raw, last=True)
        if not self.attached:
            self._on_idle(self)

    # ------------------------------------------------------------------ the reader

    async def _read(self, app_id: str) -> None:
        observer = SessionStream(self.events, app_id, call_event_id=app_id)
        clean = False
        try:
            try:
                exchange = await self.open_upstream(app_id)
            except UpstreamError as exc:
                log.warning("gradio call %s…: the app's stream: %s", self.ours[:19], exc)
                self._last(self.failure(self.ours, f"gatekeeper could not reach the app: {exc}"))
                return
            upstream, done = exchange.response, False
            try:
                if upstream.status != 200:
                    detail = f"the app answered the call's stream with HTTP {upstream.status}"
                    self._last(self.failure(self.ours, detail))
                    return
                framer = Framer()
                async for chunk in upstream.content.iter_any():
                    observer.feed(chunk)
                    for raw in framer.feed(chunk):
                        self.put(raw, droppable=raw == CALL_HEARTBEAT)
                rest = framer.rest()
                if rest:
                    self.put(rest)
                done = clean = True
                self._last(b"")  # the app ended its stream: so does the client's
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("gradio call %s…: the app's stream broke: %r", self.ours[:19], exc)
            finally:
                exchange.close(reuse=done)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("gradio call %s…: reading the app's stream failed", self.ours[:19])
        finally:
            observer.done(clean)  # an event the stream left open ends (stream_cut)
            if not self.ended:
                self.ended = self.cut = True  # the app broke it: so is the client's
                self._wake.set()
            if not self.attached:
                self._on_idle(self)

    async def close(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
