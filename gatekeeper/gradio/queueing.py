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
from urllib.parse import quote

from aiohttp import web

from gatekeeper.core.clientkey import client_key
from gatekeeper.core.headers import REQUEST_ID, upstream_request_headers
from gatekeeper.core.vocab import Outcome
from gatekeeper.gradio.events import GradioEvents
from gatekeeper.gradio.held import HeldEvent
from gatekeeper.gradio.joinbody import MAX_JOIN_BODY
from gatekeeper.gradio.pipe import SessionPipe
from gatekeeper.gradio.splice import PREFIX, Estimate, estimation, failure
from gatekeeper.gradio.wire import Join
from gatekeeper.proxy.context import RequestContext
from gatekeeper.proxy.ports import ProxyPorts
from gatekeeper.proxy.respond import Responder
from gatekeeper.proxy.spool import Spool
from gatekeeper.upstream import Exchange

log = logging.getLogger("gatekeeper.gradio")

# How long a pipe nobody reads is kept once idle (its last frames, for a client late to
# open its stream), and how often a waiting event's place is looked at with no change.
IDLE_PIPE_SECONDS = 60.0
ESTIMATE_SECONDS = 1.0
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


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


def data_path(join_raw_path: str, session: str) -> str:
    """The session's queue/data target beside a join's (``…/queue/join`` -> ``…/queue/data``)."""
    base = join_raw_path.split("?", 1)[0].rstrip("/")
    return base[: -len("join")] + "data?session_hash=" + quote(session, safe="")


class GradioQueue:
    def __init__(
        self,
        ports: ProxyPorts,
        respond: Responder,
        events: GradioEvents,
        room: WaitingRoomPort | None,
    ):
        self.ports = ports
        self.respond = respond
        self.events = events
        self.room = room
        self.pipes: dict[str, SessionPipe] = {}
        self.held: dict[str, HeldEvent] = {}  # waiting (or being forwarded), by our id
        self._estimating: dict[str, asyncio.Task[None]] = {}

    # ------------------------------------------------------------------ pipes

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

    def pipe_for(self, ctx: RequestContext, session: str) -> SessionPipe:
        """The session's pipe, made on its first gated event (its stream: ``pipe``)."""
        pipe = self.pipe(session)
        if pipe is not None:
            return pipe
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
        path = data_path(request.raw_path, session)

        async def open_upstream() -> Exchange:
            rt = self.ports.rules.runtime
            return await rt.passthrough.send(
                "GET", path, headers, None, max_body_bytes=rt.config.limits.max_body_bytes
            )

        pipe = SessionPipe(
            session,
            self.events,
            open_upstream,
            send_timeout=lambda: self.ports.rules.runtime.config.limits.client_send_timeout,
            on_idle=self._idle,
        )
        self.pipes[session] = pipe
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
        headers = dict(SSE_HEADERS)
        headers[REQUEST_ID] = rec.request_id
        out, sent, gone = await pipe.serve(ctx.request, headers)
        rec.status, rec.bytes_out, rec.client_gone = 200, sent, gone
        return out

    # ------------------------------------------------------------------ waiting

    def can_hold(self, ctx: RequestContext, join: Join, body: bytes | None) -> bool:
        """A join that may wait here: a waiting room, a session, a body in memory, and no
        stream of the session already relayed as it came (it could not be spliced)."""
        session = join.session_hash
        return (
            self.room is not None
            and session is not None
            and body is not None
            and (session in self.pipes or not self.events.streaming(session))
        )

    def others_wait(self) -> bool:
        """Someone waits already: a new join queues behind them, whatever the gate says."""
        return self.room is not None and self.room.depth() > 0

    def hold(self, ctx: RequestContext, join: Join, api: str | None, body: bytes) -> web.Response:
        """Seat the join in the waiting room; answered at once with gatekeeper's id."""
        assert self.room is not None and join.session_hash is not None  # can_hold said so
        request, rec, session = ctx.request, ctx.rec, join.session_hash
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
        ours = PREFIX + secrets.token_hex(16)
        pipe = self.pipe_for(ctx, session)
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
        pipe.held[ours] = held.client_gone
        self.held[ours] = held
        refusal = self.room.seat(held)  # may start it at once (a slot freed meanwhile)
        if refusal is not None:
            pipe.held.pop(ours, None)
            self.held.pop(ours, None)
            return self._refused(ctx, pipe, refusal)
        self.respond.count(ctx, Outcome.QUEUED)
        rec.deferred = True  # the line is written when the event ends
        rec.status, rec.bytes_in = 200, len(body)
        log.info(
            "gradio join waits its turn as %s…: route=%s request_id=%s",
            ours[:19],
            ctx.route.name,
            rec.request_id,
        )
        if session not in self._estimating:
            self._estimating[session] = asyncio.create_task(
                self._estimates(pipe), name=f"gradio-eta-{session[:8]}"
            )
        return web.json_response({"event_id": ours}, headers={REQUEST_ID: rec.request_id})

    def _refused(self, ctx: RequestContext, pipe: SessionPipe, refusal: Refusal) -> web.Response:
        """``client_limit`` / ``queue_full``: the join's answer names an event of ours that
        the session's stream reports failed with the refusal's text (an error toast;
        gradio_client's AppError), as for a refusal by the gate (``route``)."""
        resp = self.respond.refuse_waiting(
            ctx, refusal.status, refusal.reason, refusal.retry_after, refusal.fields
        )
        detail = json.loads(resp.body)["detail"]  # type: ignore[arg-type]
        ours = PREFIX + secrets.token_hex(16)
        pipe.put(failure(ours, detail))
        pipe.told = refusal.reason
        pipe.maybe_close()
        headers = {k: v for k, v in resp.headers.items() if k.lower() != "content-type"}
        log.info(
            "gradio join refused by the waiting room (%s): route=%s request_id=%s",
            refusal.reason,
            ctx.route.name,
            ctx.rec.request_id,
        )
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
        pipe = self.pipes.get(session) if isinstance(session, str) else None
        app = pipe.ids.to_app(eid) if pipe is not None else None
        if app is None:
            return web.json_response({"success": True}), None  # over already: as Gradio says
        doc["event_id"] = app
        return None, json.dumps(doc, separators=(",", ":")).encode()

    # ------------------------------------------------------------------ stop

    def sessions_busy(self, session: str) -> bool:
        pipe = self.pipes.get(session)
        return pipe is not None and pipe.busy()

    async def close(self) -> None:
        """gatekeeper stops: the readers of the app's streams end (their events' slots
        are released by ``GradioEvents.close``), as do the estimation loops."""
        tasks = list(self._estimating.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for pipe in list(self.pipes.values()):
            await pipe.close()
        self.pipes.clear()
