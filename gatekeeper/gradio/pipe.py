"""One session's queue/data stream, written by gatekeeper (issue #19; rules: ``splice``).

Gradio keeps one ``queue/data`` stream per session and every event of the
session reports on it. gatekeeper owns that stream from the moment the client
opens it or a gated event of the session exists (admitted at once or waiting in
gatekeeper's waiting room), so a gated event can always join it (``pipes``):

- **the reader** (``_read``): gatekeeper's own connection to the app's
  ``queue/data`` for the session, opened when the client opened its stream or a
  join was forwarded, and read
  until the app ends it, whether or not a client is listening (so a join whose
  client never opened the stream, or whose tab closed, frees its slot when the
  app finishes, not at ``upstream.timeouts.read``). It cuts the app's bytes into
  whole frames, ends the gated events they report (``GradioEvents``), rewrites
  the app's event ids to gatekeeper's (``splice.rewrite``) and queues the frames;
- **the outbox**: whole frames in order, the app's and gatekeeper's own
  (``estimation`` of a waiting event, its failure, ``close_stream``);
- **the writer** (``serve``): the client's ``queue/data`` request, written from
  the outbox. A client that leaves takes its waiting events out of the queue
  (``on_client_gone``); the app's events go on (the slot follows the engine).

Only one upstream reader per session exists at a time: Gradio hands each message
to whichever reader asks first, so a second one would steal frames.

Frames for an event id nobody knows yet are parked while a join is being
forwarded: the app may report the new event on an open stream before its
answer to the join (the event id) has arrived.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp

from gatekeeper.core.errors import UpstreamError
from gatekeeper.gradio.events import GradioEvents
from gatekeeper.gradio.outbox import Outbox
from gatekeeper.gradio.splice import (
    CLOSE_STREAM,
    Framer,
    IdMap,
    cancelled,
    data_of,
    failure,
    forward_close,
    rewrite,
)
from gatekeeper.gradio.streams import SessionStream
from gatekeeper.gradio.wire import frame, parse_message
from gatekeeper.upstream import Exchange

log = logging.getLogger("gatekeeper.gradio")

_DROPPABLE = frozenset({"progress", "heartbeat"})
_HEARTBEAT = frame({"msg": "heartbeat", "event_id": None})

Opener = Callable[[], Awaitable[Exchange]]


class SessionPipe(Outbox):
    heartbeat = _HEARTBEAT

    def __init__(
        self,
        session: str,
        events: GradioEvents,
        open_upstream: Opener,
        send_timeout: Callable[[], float],
        on_idle: Callable[[SessionPipe], None],
    ):
        super().__init__(send_timeout)
        self.session = session
        self.events = events
        self.ids = IdMap()
        # The app's frames are read as on a relayed stream (``streams.SessionStream``): the
        # endings of gated events; its end (``done``) is this pipe's own (``_read``).
        self.observer = SessionStream(events, session)
        self.open_upstream = open_upstream  # the app's queue/data for this session
        self._on_idle = on_idle
        # gatekeeper's events of this session the app has not answered yet (waiting, or
        # their join being forwarded): id -> its leaving when the client goes (True: it left).
        self.held: dict[str, Callable[[], bool]] = {}
        self.forwarding = 0
        # The reason of a refusal told in this stream, for the log line of the client's
        # queue/data request that carries it (what the client got: a 200 and frames).
        self.told: str | None = None
        self._reader: asyncio.Task[None] | None = None
        self._seq = 0  # joins forwarded to the app (the reader reopens for new ones)
        self._parked: list[bytes] = []
        self._framer = Framer()
        self._close_mark: int | None = None  # _seq when the app said close_stream
        self.closed = False  # close_stream is queued: the client's stream ends after it

    # ------------------------------------------------------------------ the outbox

    def busy(self) -> bool:
        """Anything left to tell or to hear for this session."""
        return bool(self.held) or self.events.pending(self.session) or self.reading

    def finished(self) -> bool:
        """Its stream said all it had to say: a later stream of the session is not its."""
        return self.closed and not self._out and not self.busy() and self._writer is None

    @property
    def reading(self) -> bool:
        return self._reader is not None and not self._reader.done()

    def maybe_close(self) -> None:
        """close_stream once nothing is left on either side (``splice`` module text)."""
        if self.closed or self.busy():
            return
        self.closed = True
        if self.cut:
            self._wake.set()  # the app broke its stream: the client's is aborted, not closed
        else:
            self.put(CLOSE_STREAM, last=True)
        if self._writer is None:
            self._on_idle(self)

    # ------------------------------------------------------------------ gatekeeper's events

    def failure(self, event_id: str, detail: str) -> bytes:
        return failure(event_id, detail)

    def cancelled(self, event_id: str) -> bytes:
        return cancelled(event_id)

    def event_session(self, app_id: str) -> str:
        """The session the app's event belongs to in ``GradioEvents``."""
        return self.session

    def forwarded(self) -> None:
        """A join of this session went to the app: its frames come on the app's stream."""
        self._seq += 1
        self.closed = self.cut = False
        if not self.reading:
            self._reader = asyncio.create_task(self._read(), name=f"gradio-{self.session[:8]}")

    def bound(self, ours: str, app: str) -> None:
        """The app answered the forwarded join of ``ours`` with its id ``app``."""
        self.held.pop(ours, None)
        self.ids.bind(ours, app)
        self.forwarding -= 1
        self._unpark()

    def unbound(self, ours: str, raw: bytes) -> None:
        """``ours`` ends without reaching the app (left, cancelled, refused): ``raw`` said."""
        self.held.pop(ours, None)
        self.put(raw)
        self._unpark()
        self.maybe_close()

    def forward_failed(self, ours: str, raw: bytes) -> None:
        self.forwarding -= 1
        self.unbound(ours, raw)

    # ------------------------------------------------------------------ the reader

    async def _read(self) -> None:
        try:
            while True:
                mark = await self._read_once()
                if mark is None:
                    return  # cut: its events ended stream_cut
                if mark == self._seq and not self.events.pending(self.session):
                    return  # closed, and nothing forwarded since: all was told
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("gradio session %s…: reading the app's stream failed", self.session[:8])
        finally:
            self._reader = None
            n = self.events.end_session(self.session, "stream_cut", success=False)
            if n:
                self.cut = True
                self._wake.set()
                log.warning(
                    "gradio stream for session %s… ended with %d event(s) still open: "
                    "their slot is released",
                    self.session[:8],
                    n,
                )
            self.maybe_close()
            if self._writer is None and not self.busy():
                self._on_idle(self)

    async def _read_once(self) -> int | None:
        """Read the app's stream to its end: the ``_seq`` when it said close_stream, or
        None if it ended without (cut, refused): no reopening then."""
        try:
            exchange = await self.open_upstream()
        except UpstreamError as exc:
            log.warning("gradio session %s…: the app's stream: %s", self.session[:8], exc)
            return None
        upstream, done, self._close_mark = exchange.response, False, None
        try:
            if upstream.status != 200:
                log.warning(
                    "gradio session %s…: the app answered its stream with %d",
                    self.session[:8],
                    upstream.status,
                )
                return None
            self._framer = Framer()
            async for chunk in upstream.content.iter_any():
                for raw in self._framer.feed(chunk):
                    self._frame(raw)
            rest = self._framer.rest()
            if rest:
                self.put(rest)
            done = True
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("gradio session %s…: the app's stream broke: %r", self.session[:8], exc)
        finally:
            exchange.close(reuse=done)
        return self._close_mark

    def _frame(self, raw: bytes, *, replay: bool = False) -> None:
        data = data_of(raw)
        m = parse_message(data) if data is not None else None
        if m is None or data is None:
            self.put(raw)
            return
        eid = m.event_id
        if (
            not replay
            and self.forwarding > 0
            and eid is not None
            and self.ids.to_ours(eid) is None
            and not self.events.known(eid)
        ):
            self._parked.append(raw)  # perhaps the event a join is being forwarded for
            return
        if m.msg == "close_stream":
            # Gradio closes a session's stream when it has no event of the session left:
            # an event still open here reached the app after it decided so (the join of
            # a waiting event, forwarded as the last one ended). It is not ended: the
            # reader opens the stream again, where the app reports it.
            self._close_mark = self._seq
            held = len(self.held) + self.events.pending(self.session)
            if forward_close(held) and not self._parked:
                self.closed = True
                self.put(raw, last=True)
            return
        out = rewrite(raw, self.ids)[0]  # before an ending forgets the mapping
        # What the frame ends (or reports) is read as on a relayed stream, in the app's ids.
        self.observer.feed(raw)
        if eid is not None and not self.events.known(eid):
            ours = self.ids.to_ours(eid)
            if ours is not None:
                self.ids.forget(ours)
        self.put(out, droppable=m.msg in _DROPPABLE)

    def _unpark(self) -> None:
        if self.forwarding > 0 or not self._parked:
            return
        parked, self._parked = self._parked, []
        for raw in parked:
            self._frame(raw, replay=True)

    # ------------------------------------------------------------------ the writer

    def writer_done(self, gone: bool) -> None:
        if gone:
            self.on_client_gone()
        elif not self.busy() and self.closed:
            self._on_idle(self)

    def on_client_gone(self) -> None:
        """The tab closed: its waiting events leave the queue; the app's gated events go
        on (the slot follows the engine). With none of those left, the app's stream is
        closed as the client's was, so Gradio drops the session's events (those of
        functions nobody gates) as it does when a tab closes."""
        for ours, leave in list(self.held.items()):
            if leave():
                self.held.pop(ours, None)
        reader = self._reader
        quiet = not self.held and self.forwarding == 0 and not self.events.pending(self.session)
        if quiet:
            # Nothing is owed to anyone: the stream is over (no close_stream queued for a
            # client that is gone), and a later stream of the session starts a new pipe.
            self._out.clear()
            self.closed = True
            if reader is not None and not reader.done():
                reader.cancel()
        if not self.busy():
            self._on_idle(self)

    async def close(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
