"""Gated Gradio joins that wait their turn in gatekeeper's waiting room (issue #19).

``GradioRoute`` asks ``hold`` when a gated join finds no free slot (or others
already wait): the join becomes a ``held.HeldEvent``, seated in the waiting room
the queue routes use (``WaitingRoomPort``: ``jobs.service.JobService``, wired by
the app; ``jobs`` and ``gradio`` do not import each other) and answered at once
with gatekeeper's event id. The session's ``queue/data`` stream is then written
by gatekeeper (``pipe.SessionPipe``), with an ``estimation`` frame for each
waiting event whenever its place or ETA changes (``splice.Estimate``).

Also here: the pipes of the sessions (one per session with a gated event), the
client's ``/cancel`` of a waiting event (answered here) or of one the app runs
under gatekeeper's id (sent on with the app's id), and a refusal by the waiting
room told in the session's stream the way Gradio's clients show an error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from typing import Any, Protocol

from aiohttp import web

from gatekeeper.core.clientkey import client_key
from gatekeeper.core.headers import REQUEST_ID, upstream_request_headers
from gatekeeper.core.vocab import Outcome
from gatekeeper.gradio.callpipe import CallPipe
from gatekeeper.gradio.events import GradioEvents
from gatekeeper.gradio.held import HeldEvent
from gatekeeper.gradio.joinbody import MAX_JOIN_BODY
from gatekeeper.gradio.pipe import SessionPipe
from gatekeeper.gradio.pipes import Pipes
from gatekeeper.gradio.splice import PREFIX, Estimate, estimation, failure
from gatekeeper.gradio.wire import Join
from gatekeeper.proxy.context import RequestContext
from gatekeeper.proxy.ports import ProxyPorts
from gatekeeper.proxy.respond import Responder
from gatekeeper.proxy.spool import Spool

log = logging.getLogger("gatekeeper.gradio")

# How often a waiting event's place is looked at with no change.
ESTIMATE_SECONDS = 1.0


class Refusal(Protocol):
    """Why the waiting room will not seat a join (``jobs.model.Refused``)."""

    @property
    def reason(self) -> str: ...

    @property
    def status(self) -> int: ...

    @property
    def retry_after(self) -> int: ...

    @property
    def fields(self) -> dict[str, Any]: ...


class Place(Protocol):
    """Where a seated event waits (``jobs.guests.Place``)."""

    @property
    def position(self) -> int: ...

    @property
    def waiting(self) -> int: ...

    @property
    def done_in(self) -> float: ...


class WaitingRoomPort(Protocol):
    """The waiting room, as Gradio events use it (``jobs.guests.GuestOps``)."""

    def seat(self, guest: HeldEvent) -> Refusal | None: ...

    def unseat(self, guest_id: str) -> bool: ...

    def place(self, guest_id: str) -> Place | None: ...

    def any_change(self) -> asyncio.Event: ...

    def depth(self) -> int: ...


class GradioQueue(Pipes):
    def __init__(
        self,
        ports: ProxyPorts,
        respond: Responder,
        events: GradioEvents,
        room: WaitingRoomPort | None,
    ):
        super().__init__(ports, respond, events)
        self.room = room
        self.held: dict[str, HeldEvent] = {}  # waiting (or being forwarded), by our id
        self._estimating: dict[str, asyncio.Task[None]] = {}

    # ------------------------------------------------------------------ waiting

    def can_hold(self, join: Join | None, body: bytes | None) -> bool:
        """A join (with its session) or a /call (``join`` None) that may wait here: a
        waiting room and a body in memory. Every session's stream is written from its
        pipe (``pipes``), open or not yet, so a waiting event can always join it."""
        has_session = join is None or join.session_hash is not None
        return self.room is not None and body is not None and has_session

    def others_wait(self) -> bool:
        """Someone waits already: a new join queues behind them, whatever the gate says."""
        return self.room is not None and self.room.depth() > 0

    def hold(self, ctx: RequestContext, join: Join, api: str | None, body: bytes) -> web.Response:
        """Seat the join in the waiting room; answered at once with gatekeeper's id."""
        assert join.session_hash is not None  # can_hold said so
        session = join.session_hash
        pipe = self.pipe_for(ctx, session)
        seated = self._seat(ctx, api, body, session, pipe)
        if not isinstance(seated, HeldEvent):
            return self._refused(ctx, session, seated)
        if session not in self._estimating:
            self._estimating[session] = asyncio.create_task(
                self._estimates(pipe), name=f"gradio-eta-{session[:8]}"
            )
        return web.json_response({"event_id": seated.id}, headers={REQUEST_ID: ctx.rec.request_id})

    def hold_call(self, ctx: RequestContext, api: str | None, body: bytes) -> web.Response:
        """``POST {p}/call/<api>`` with no free slot: seated like a join, answered at once
        with gatekeeper's id; its ``GET`` stream is written from a ``CallPipe``. Refused
        by the waiting room: the plain JSON refusal (its stream has no other client
        than the caller, who reads the status and the ``detail``)."""
        ours = PREFIX + secrets.token_hex(16)
        pipe = self.call_for(ctx, ours)
        seated = self._seat(ctx, api, body, ours, pipe, ours)
        if not isinstance(seated, HeldEvent):
            del self.calls[ours]
            return self.respond.refuse_waiting(
                ctx, seated.status, seated.reason, seated.retry_after, seated.fields
            )
        return web.json_response({"event_id": ours}, headers={REQUEST_ID: ctx.rec.request_id})

    def _seat(
        self,
        ctx: RequestContext,
        api: str | None,
        body: bytes,
        session: str,
        pipe: SessionPipe | CallPipe,
        ours: str | None = None,
    ) -> HeldEvent | Refusal:
        """A held event for the request, seated in the waiting room (which may start it
        at once: a slot freed meanwhile), or the room's refusal."""
        assert self.room is not None  # can_hold said so
        request, rec = ctx.request, ctx.rec
        q = ctx.config.admission.queue
        forwarded_for = request.headers.getall("X-Forwarded-For", [])
        client = client_key(
            q.client_key, q.trusted_proxies, request.remote, request.headers, forwarded_for
        )
        headers = upstream_request_headers(
            request.headers,
            client_ip=request.remote,
            scheme=request.scheme,
            request_id=rec.request_id,
        )
        headers["Content-Length"] = str(len(body))
        headers["Accept-Encoding"] = "identity"  # the answer is read for its event_id
        self._ended()  # those that ran or left since the last look
        ours = ours or PREFIX + secrets.token_hex(16)
        held = HeldEvent(
            event_id=ours,
            client=client,
            route=ctx.route.name,
            session=session,
            api_name=api,
            raw_path=request.raw_path,
            headers=dict(headers),
            body=body,
            rec=rec,
            pipe=pipe,
            events=self.events,
            rules=self.ports.rules,
            seats=self.room,
            clock=self.ports.clock,
        )
        if isinstance(pipe, CallPipe):
            pipe.leave = held.client_gone
        else:
            pipe.held[ours] = held.client_gone
        self.held[ours] = held
        refusal = self.room.seat(held)  # may start it at once (a slot freed meanwhile)
        if refusal is not None:
            if isinstance(pipe, CallPipe):
                pipe.leave = None
            else:
                pipe.held.pop(ours, None)
            self.held.pop(ours, None)
            return refusal
        self.respond.count(ctx, Outcome.QUEUED)
        rec.deferred = True  # the line is written when the event ends
        rec.status, rec.bytes_in = 200, len(body)
        log.info(
            "gradio %s waits its turn as %s…: route=%s request_id=%s",
            "call" if isinstance(pipe, CallPipe) else "join",
            ours[:19],
            ctx.route.name,
            rec.request_id,
        )
        return held

    def _refused(self, ctx: RequestContext, session: str, refusal: Refusal) -> web.Response:
        """``client_limit`` / ``queue_full``: told in the session's stream, as for a
        refusal by the gate (``route``)."""
        resp = self.respond.refuse_waiting(
            ctx, refusal.status, refusal.reason, refusal.retry_after, refusal.fields
        )
        log.info(
            "gradio join refused by the waiting room (%s): route=%s request_id=%s",
            refusal.reason,
            ctx.route.name,
            ctx.rec.request_id,
        )
        return self.tell_refusal(ctx, session, resp, refusal.reason)

    def tell_refusal(
        self, ctx: RequestContext, session: str, resp: web.Response, reason: str
    ) -> web.Response:
        """The join's answer names an event of ours that the session's stream (written
        from its pipe, open or not yet) reports failed with the refusal's text (an error
        toast; gradio_client's AppError). ``resp``: the refusal as JSON, counted."""
        detail = json.loads(resp.body)["detail"]  # type: ignore[arg-type]
        ours = PREFIX + secrets.token_hex(16)
        pipe = self.pipe_for(ctx, session)
        pipe.put(failure(ours, detail))
        pipe.told = reason
        pipe.maybe_close()
        headers = {k: v for k, v in resp.headers.items() if k.lower() != "content-type"}
        return web.json_response({"event_id": ours}, headers=headers)

    async def _estimates(self, pipe: SessionPipe) -> None:
        """``estimation`` frames for the session's waiting events, sent again when their
        place or ETA changes, until none of them waits."""
        assert self.room is not None
        told: dict[str, Estimate] = {}
        try:
            while True:
                mine = [
                    h
                    for h in self.held.values()
                    if h.session == pipe.session and h.state == "waiting"
                ]
                for gone in self._ended():
                    told.pop(gone, None)
                if not mine:
                    return
                changed = self.room.any_change()
                now = self.ports.clock()
                for h in mine:
                    place = self.room.place(h.id)
                    if place is None:
                        continue
                    rank, size, eta = place.position - 1, place.waiting, place.done_in
                    prev = told.get(h.id)
                    if prev is None or prev.news(rank, size, eta, now):
                        pipe.put(estimation(h.id, rank, size, eta))
                        told[h.id] = Estimate(rank, size, eta, now)
                try:
                    async with asyncio.timeout(ESTIMATE_SECONDS):
                        await changed.wait()
                except TimeoutError:
                    pass
        finally:
            self._estimating.pop(pipe.session, None)

    def _ended(self) -> list[str]:
        """Forget the held events that no longer wait nor are being forwarded."""
        gone = [k for k, h in self.held.items() if h.state in ("bound", "ended")]
        for k in gone:
            del self.held[k]
        return gone

    # ------------------------------------------------------------------ /cancel

    def cancel(self, ctx: RequestContext, spool: Spool | None) -> web.Response | Spool | None:
        """A client's ``/cancel``: our answer, or the body to send on (the app's id in
        place of ours, or the body as it came)."""
        body = spool.memory() if spool is not None else None
        coded = ctx.request.headers.get("Content-Encoding", "identity") != "identity"
        if spool is None or body is None or coded or len(body) > MAX_JOIN_BODY:
            return spool
        ours, rewritten = self._cancel(body)
        if ours is None and rewritten is None:
            return spool
        spool.close()
        if ours is not None:
            ctx.rec.status = ours.status
            return ours
        assert rewritten is not None
        out = Spool(len(rewritten) + 1)
        out.write(rewritten)
        return out

    def _cancel(self, body: bytes) -> tuple[web.Response | None, bytes | None]:
        """A client's ``/cancel``: (our answer, None) for a waiting event of ours;
        (None, the body naming the app's id) for one of ours the app runs; (None, None):
        not ours, sent on as it came."""
        try:
            doc = json.loads(body)
        except ValueError:
            return None, None
        eid = doc.get("event_id") if isinstance(doc, dict) else None
        if not isinstance(eid, str) or not eid.startswith(PREFIX):
            return None, None
        held = self.held.get(eid)
        if held is not None and held.cancel():
            log.info("gradio event %s… cancelled by its client while it waited", eid[:19])
            return web.json_response({"success": True}), None
        session = doc.get("session_hash")
        call = self.calls.get(eid)
        if call is not None:  # a /call of ours the app runs: its session is the app's id
            app = call.app_id
            if app is not None and session in (None, eid):
                doc["session_hash"] = app
        else:
            pipe = self.pipes.get(session) if isinstance(session, str) else None
            app = pipe.ids.to_app(eid) if pipe is not None else None
        if app is None:
            return web.json_response({"success": True}), None  # over already: as Gradio says
        doc["event_id"] = app
        return None, json.dumps(doc, separators=(",", ":")).encode()

    # ------------------------------------------------------------------ stop

    async def close(self) -> None:
        """gatekeeper stops: the readers of the app's streams end (their events' slots
        are released by ``GradioEvents.close``), as do the estimation loops."""
        tasks = list(self._estimating.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.close_pipes()
