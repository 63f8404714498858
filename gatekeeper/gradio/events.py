"""The gated Gradio events in flight: each holds one admission lease.

A join for a gated function takes a lease (``gradio.route``); once Gradio
answers with an ``event_id`` the lease is handed to ``GradioEvents.add``
(``Lease.hand_over``) and from then on is released by ``end``, whichever comes
first (``core.lease`` makes the release count once):

- the event's ``process_completed`` (or ``close_stream`` / ``unexpected_error``
  for its session, or the ``/call`` stream's ``complete``/``error``) seen in a
  stream relayed through gatekeeper;
- the session's stream ending with the event still open (the engine cut it);
- ``upstream.timeouts.read`` after the join with nothing heard (a client that
  never read its result): logged, counted as an upstream timeout;
- gatekeeper stopping (``close``).

While a session has open events, ``idle(session)`` is an unset Event: a stream
whose client left keeps reading on gatekeeper's own connection until it is
set, so that the slot tracks the engine, not the tab.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from gatekeeper.core.admission import Gate
from gatekeeper.core.lease import Lease
from gatekeeper.core.vocab import ErrorKind
from gatekeeper.gradio.frames import Progress
from gatekeeper.observability.metrics import Metrics
from gatekeeper.proxy.record import RequestRecord

log = logging.getLogger("gatekeeper.gradio")


@dataclass
class Pending:
    event_id: str
    session: str
    route: str
    api_name: str | None
    lease: Lease
    rec: RequestRecord  # the join's record; logged again as the generation's line
    joined: float
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    # Positions of the function's result outputs (``frames.result_outputs``); None: unknown.
    results: tuple[int, ...] | None = None


class GradioEvents:
    def __init__(
        self,
        gate: Gate,
        metrics: Metrics,
        clock: Callable[[], float],
        count_upstream_error: Callable[[str, ErrorKind], None],
        on_record: Callable[[RequestRecord], None] | None = None,
    ):
        self._gate = gate
        self._metrics = metrics
        self._clock = clock
        self._count_error = count_upstream_error
        self._events: dict[str, Pending] = {}
        self._sessions: dict[str, set[str]] = {}
        self._idle: dict[str, asyncio.Event] = {}
        self.on_record = on_record  # the access log (app wiring)

    def __len__(self) -> int:
        return len(self._events)

    def add(
        self,
        *,
        event_id: str,
        session: str,
        route: str,
        api_name: str | None,
        lease: Lease,
        rec: RequestRecord,
        timeout: float,
    ) -> None:
        """Take over ``lease`` for ``event_id`` (of ``session``; a /call has none: its
        event id stands in). A duplicate id ends the older one first."""
        if event_id in self._events:
            self.end(event_id, "replaced", success=False)
        p = Pending(event_id, session, route, api_name, lease, rec, self._clock())
        loop = asyncio.get_running_loop()
        p.timer = loop.call_later(timeout, self._expired, event_id, timeout)
        self._events[event_id] = p
        self._sessions.setdefault(session, set()).add(event_id)
        self.idle(session).clear()
        lease.hand_over("gradio-event")  # last: until here the join still releases it

    def known(self, event_id: str) -> bool:
        """``event_id`` (the app's) is a gated event in flight."""
        return event_id in self._events

    def expect_results(self, event_id: str, positions: tuple[int, ...] | None) -> None:
        """Which outputs of the event's completion are its result (``gradio.frames``)."""
        p = self._events.get(event_id)
        if p is not None:
            p.results = positions

    def results(self, event_id: str) -> tuple[int, ...] | None:
        p = self._events.get(event_id)
        return None if p is None else p.results

    def progress(self, event_id: str, progress: Progress) -> None:
        """The engine's progress report for a running event: on its lease, which the
        status document and the progress gauge read."""
        p = self._events.get(event_id)
        if p is not None:
            p.lease.progress = progress.fraction
            p.lease.progress_description = progress.description

    def pending(self, session: str) -> bool:
        return bool(self._sessions.get(session))

    def idle(self, session: str) -> asyncio.Event:
        ev = self._idle.get(session)
        if ev is None:
            ev = asyncio.Event()
            if self.pending(session):
                self._idle[session] = ev  # set (and dropped) when its last event ends
            else:
                ev.set()  # kept nowhere: one entry per idle session would never go
        return ev

    def end(self, event_id: str, why: str, *, success: bool) -> bool:
        """Release the event's lease; False if it is not (or no longer) ours."""
        p = self._events.pop(event_id, None)
        if p is None:
            return False
        if p.timer is not None:
            p.timer.cancel()
        ids = self._sessions.get(p.session)
        if ids is not None:
            ids.discard(event_id)
            if not ids:
                del self._sessions[p.session]
                ev = self._idle.pop(p.session, None)
                if ev is not None:
                    ev.set()
        released = p.lease.release()
        elapsed = self._clock() - p.joined
        if released and success:
            self._gate.estimator.observe(elapsed)
        code = "200" if success else "error"
        self._metrics.upstream_duration.labels(p.route, code).observe(elapsed)
        log.info(
            "gradio event %s… ended (%s) after %.1fs: route=%s api=%s",
            event_id[:8],
            why,
            elapsed,
            p.route,
            p.api_name or "-",
        )
        # The join's access-log line was held back (rec.deferred): it is the generation's
        # line, with the whole job's duration, not the join's milliseconds.
        rec = p.rec
        rec.upstream_seconds = elapsed
        if not success:
            rec.reason = why
        if not rec.logged:
            rec.logged = True
            rec.total_seconds = self._clock() - rec.started
            if self.on_record is not None:
                self.on_record(rec)
        return True

    def end_session(self, session: str, why: str, *, success: bool) -> int:
        """End every open event of ``session``; returns how many were ended."""
        ids = list(self._sessions.get(session, ()))
        return sum(self.end(eid, why, success=success) for eid in ids)

    def close(self) -> None:
        """gatekeeper stops: every lease still held is released."""
        for eid in list(self._events):
            self.end(eid, "shutdown", success=False)

    def _expired(self, event_id: str, timeout: float) -> None:
        p = self._events.get(event_id)
        if p is None:
            return
        p.timer = None
        log.warning(
            "gradio event %s… heard nothing for %gs (upstream.timeouts.read): releasing its "
            "slot; route=%s session=%s…",
            event_id[:8],
            timeout,
            p.route,
            p.session[:8],
        )
        self._count_error(p.route, ErrorKind.TIMEOUT)
        self.end(event_id, "timeout", success=False)
