"""A gated Gradio join waiting in gatekeeper's waiting room (issue #19).

The join was answered at once with gatekeeper's event id (``splice.PREFIX``);
the event waits as a guest of the waiting room (``jobs.guests``: the Protocol
this class satisfies; the app wires the two). Its life::

    waiting ──start(lease)──▶ forwarding ──the app's id──▶ bound (GradioEvents holds the lease)
       │                          └──the app refused, broke──▶ ended (failure; lease released)
       └──left (max_wait, drain), cancel, tab closed──▶ ended (failure or cancel; no lease)

When its turn comes the join is sent to the app as the client sent it (its
body byte for byte, its headers with the forwarded ones, so the file URLs the
app builds still point at the proxy). From the app's answer on, the event is an
ordinary gated event (``GradioEvents``: the lease, the estimator, the access
log line) whose frames the session's pipe rewrites to gatekeeper's id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import aiohttp

from gatekeeper.core.errors import UpstreamError, UpstreamProtocolError
from gatekeeper.core.lease import Lease
from gatekeeper.gradio.events import GradioEvents
from gatekeeper.gradio.wire import event_id_of
from gatekeeper.proxy.ports import LiveRules
from gatekeeper.proxy.record import RequestRecord

log = logging.getLogger("gatekeeper.gradio")

# Gradio answers a join with {"event_id": "..."}: anything longer is not that answer.
MAX_JOIN_ANSWER = 64 * 1024


async def read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    out = bytearray()
    async for chunk in resp.content.iter_any():
        out += chunk
        if len(out) > limit:
            raise UpstreamProtocolError(
                f"the Gradio app answered a queue join with more than {limit} bytes"
            )
    return bytes(out)


class EventPipe(Protocol):
    """Where a held event is told (``pipe.SessionPipe``: a queue/join's session stream;
    ``callpipe.CallPipe``: a /call's own stream), in that stream's own terms."""

    forwarding: int

    def failure(self, event_id: str, detail: str) -> bytes: ...

    def cancelled(self, event_id: str) -> bytes: ...

    def event_session(self, app_id: str) -> str: ...

    def unbound(self, ours: str, raw: bytes) -> None: ...

    def forward_failed(self, ours: str, raw: bytes) -> None: ...

    def bound(self, ours: str, app: str) -> None: ...

    def forwarded(self) -> None: ...


class Seats(Protocol):
    """The waiting room's side a held event asks (``jobs.guests.GuestOps``)."""

    def unseat(self, guest_id: str) -> bool: ...


class HeldEvent:
    """One waiting join (a ``jobs.guests.Guest``)."""

    def __init__(
        self,
        *,
        event_id: str,
        client: str,
        route: str,
        session: str,
        api_name: str | None,
        raw_path: str,
        headers: dict[str, str],
        body: bytes,
        rec: RequestRecord,
        pipe: EventPipe,
        events: GradioEvents,
        rules: LiveRules,
        seats: Seats,
        clock: Callable[[], float],
    ):
        self.id = event_id
        self.client = client
        self.route = route
        self.session = session
        self.api_name = api_name
        self.raw_path = raw_path
        self.headers = headers
        self.body = body
        self.rec = rec
        self.pipe = pipe
        self.events = events
        self.rules = rules
        self.seats = seats
        self.clock = clock
        self.state = "waiting"
        self.task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ the room's side

    def start(self, lease: Lease) -> None:
        """Its turn: the join goes to the app; the forwarding task holds the lease
        until ``GradioEvents`` takes it over (or releases it when it ends without)."""
        self.state = "forwarding"
        self.pipe.forwarding += 1
        lease.hand_over("gradio-forward")
        task = asyncio.create_task(self._forward(lease), name=f"gradio-join-{self.id[11:19]}")

        def done(t: asyncio.Task[None]) -> None:
            if self.state == "forwarding":  # ended without the app's event id
                why = "cancelled" if t.cancelled() else "the join could not be forwarded"
                self._fail(f"gatekeeper: {why}")
            if self.state != "bound":
                lease.release()

        task.add_done_callback(done)
        self.task = task

    def left(self, reason: str, detail: str) -> None:
        """It left the room without a slot (``max_wait``, drain): told in its stream."""
        self.state = "ended"
        self.pipe.unbound(self.id, self.pipe.failure(self.id, detail))
        self._log(reason)

    # ------------------------------------------------------------------ the client's side

    def cancel(self) -> bool:
        """The client's ``/cancel`` while it waits: it leaves, told as Gradio tells it."""
        if self.state != "waiting" or not self.seats.unseat(self.id):
            return False
        self.state = "ended"
        self.pipe.unbound(self.id, self.pipe.cancelled(self.id))
        self._log("cancelled")
        return True

    def client_gone(self) -> bool:
        """Its tab closed while it waited: it leaves the queue (nothing to tell)."""
        if self.state != "waiting" or not self.seats.unseat(self.id):
            return False
        self.state = "ended"
        self.rec.client_gone = True
        self._log("client_gone")
        return True

    # ------------------------------------------------------------------ forwarding

    async def _forward(self, lease: Lease) -> None:
        rt = self.rules.runtime
        cfg = rt.config
        status, answer = 0, b""
        try:
            exchange = await rt.passthrough.send(
                "POST",
                self.raw_path,
                self.headers,
                _once(self.body),
                max_body_bytes=cfg.limits.max_body_bytes,
                client_body_timeout=cfg.limits.client_body_timeout,
            )
            done = False
            try:
                answer = await read_bounded(exchange.response, MAX_JOIN_ANSWER)
                status, done = exchange.response.status, True
            finally:
                exchange.close(reuse=done)
        except (UpstreamError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("gradio join %s… could not be forwarded: %r", self.id[:19], exc)
            self._fail(f"gatekeeper could not reach the app: {exc}")
            return
        app_id = event_id_of(answer) if 200 <= status < 300 else None
        if app_id is None:
            log.warning("gradio join %s… not accepted by the app (%d)", self.id[:19], status)
            self._fail(f"the app did not accept the job (HTTP {status})")
            return
        self.rec.engine = lease.engine
        self.rec.upstream_status = status
        self.events.add(
            event_id=app_id,
            session=self.pipe.event_session(app_id),
            route=self.route,
            api_name=self.api_name,
            lease=lease,
            rec=self.rec,
            timeout=cfg.upstream.timeouts.read,
        )
        self.state = "bound"
        self.pipe.bound(self.id, app_id)
        self.pipe.forwarded()
        log.info("gradio event %s… started as the app's %s…", self.id[:19], app_id[:8])

    def _fail(self, detail: str) -> None:
        self.state = "ended"
        self.pipe.forward_failed(self.id, self.pipe.failure(self.id, detail))
        self._log("upstream_error")

    def _log(self, reason: str) -> None:
        """The join's access-log line (held back at the join) for an event that never
        ran: ``GradioEvents`` writes it for the ones that did."""
        rec = self.rec
        rec.reason = reason
        if not rec.logged:
            rec.logged = True
            rec.total_seconds = self.clock() - rec.started
            on_record = self.events.on_record
            if on_record is not None:
                on_record(rec)


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body
