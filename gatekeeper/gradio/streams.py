"""The observers of the Gradio streams relayed through gatekeeper (``relay.StreamObserver``).

A session's ``queue/data`` stream (and a ``/call`` stream) reports when its
events end: ``SessionStream`` parses the frames as they pass and ends the
events (their leases) in ``GradioEvents``. Both it and the ``heartbeat``
stream's observer keep the stream read, after the client left, while the
session still has a running event (``wanted``), so the slot tracks the engine.
"""

from __future__ import annotations

import asyncio
import logging

from gatekeeper.gradio.events import GradioEvents
from gatekeeper.gradio.frames import carries_result, decode, progress_of
from gatekeeper.gradio.wire import SSEParser, ending

log = logging.getLogger("gatekeeper.gradio")


class SessionStream:
    """The observer of a ``queue/data`` stream: ends the session's events as their
    ``process_completed`` passes; the stream's end ends what is left of them."""

    def __init__(self, events: GradioEvents, session: str, call_event_id: str | None = None):
        self.events = events
        self.session = session
        self.call_event_id = call_event_id
        self.parser = SSEParser()

    def feed(self, chunk: bytes) -> None:
        events = self.events
        for ev in self.parser.feed(chunk):
            end = ending(ev, self.call_event_id)
            if end is None:
                if self.call_event_id is None and '"progress"' in ev.data:
                    doc = decode(ev.data)
                    report = progress_of(doc)
                    if report is not None and doc is not None:
                        events.progress(str(doc.get("event_id")), report)
                continue
            if end.event_id is not None:
                success, why = end.success, end.why
                # A completion with none of the function's result outputs (no audio) is
                # a failed generation (gradio.frames).
                completed = success and why == "process_completed"
                if completed and not carries_result(decode(ev.data), events.results(end.event_id)):
                    success, why = False, "no_result"
                events.end(end.event_id, why, success=success)
            else:
                self.events.end_session(self.session, end.why, success=end.success)

    def done(self, clean: bool) -> None:
        why = "stream_ended" if clean else "stream_cut"
        n = self.events.end_session(self.session, why, success=False)
        if n:
            log.warning(
                "gradio stream for session %s… ended (%s) with %d event(s) still open: "
                "their slot is released",
                self.session[:8],
                why,
                n,
            )

    def wanted(self) -> asyncio.Event | None:
        return self.events.idle(self.session)


class Heartbeat:
    """The observer of a ``heartbeat/<session>`` stream: kept open while the session
    has a running event (Gradio treats a session whose heartbeat closed as gone)."""

    def __init__(self, events: GradioEvents, session: str):
        self.events = events
        self.session = session

    def feed(self, chunk: bytes) -> None:
        pass

    def done(self, clean: bool) -> None:
        pass

    def wanted(self) -> asyncio.Event | None:
        return self.events.idle(self.session)
