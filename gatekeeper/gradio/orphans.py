"""Reading a session's ``queue/data`` stream when no client does: the slot follows the engine.

Gradio runs a joined event whether or not anybody reads its session's stream:
a browser tab closed between its join and its ``queue/data`` request (under
load that window is long: the app starts the job before the browser has even
seen the event id), or a client that joins and goes, leaves a gated event that
no relayed stream will ever report the end of. Its lease was then held until
``upstream.timeouts.read`` (900 s by default) although the app finished in
seconds, and a stop's drain waited for it (issue #19; the CI flake of
``test_tab_closed_mid_job_holds_the_slot_until_the_app_finishes``).

So every gated join of a session is watched: ``GRACE_SECONDS`` after it (and
after a client's stream of the session closes), if the session still has an
open event and no stream of it is open through gatekeeper, gatekeeper opens
the session's stream itself and feeds it to the same ``SessionStream``
observer until the session has no event left (or the stream ends).

Invariant: once opened, that stream is never closed while the session has an
open event. Gradio treats a closed ``queue/data`` request as a client that left
and drops the running job's messages (``Queue.clean_events`` sets the job's
``alive`` to False), so its ``process_completed`` would never be sent to
anybody. (The relay keeps the same rule: ``Relay._send`` does not cancel an
observed stream's request when its client leaves before the answer's head.)

A client that opens its stream while gatekeeper reads it gets the frames from
then on only (Gradio hands each message to one reader); the grace makes that
rare: a browser opens its stream ~50 ms after the join's answer.
``/call/<api>`` events are not watched here (their stream names the event).
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import quote

import aiohttp

from gatekeeper.core.errors import UpstreamError
from gatekeeper.core.headers import upstream_request_headers
from gatekeeper.gradio.events import GradioEvents
from gatekeeper.gradio.streams import SessionStream
from gatekeeper.proxy.context import RequestContext
from gatekeeper.upstream import UpstreamPool

log = logging.getLogger("gatekeeper.gradio")

# How long after a join (or a client's stream closing) a session with an open event and
# no open stream waits for its client before gatekeeper reads the stream itself.
GRACE_SECONDS = 2.0


def data_target(target: str, session: str) -> str:
    """The session's ``queue/data`` target, from the target of a ``queue/join`` or of a
    ``queue/data`` request of the same app.

    >>> data_target("/song/gradio_api/queue/join?", "ab c")
    '/song/gradio_api/queue/data?session_hash=ab%20c'
    """
    path = target.split("?", 1)[0].rstrip("/")
    if path.endswith("/join") or path.endswith("/data"):
        path = path.rsplit("/", 1)[0]
    return f"{path}/data?session_hash={quote(session, safe='')}"


class OrphanReader:
    """Reads the streams of sessions whose clients do not (see the module text)."""

    def __init__(self, events: GradioEvents, grace: float = GRACE_SECONDS):
        self.events = events
        self.grace = grace
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._timers: set[asyncio.TimerHandle] = set()

    def watch(self, ctx: RequestContext, session: str) -> None:
        """After the grace, read ``session``'s stream if it has an open event and nobody
        reads it. ``ctx``: a join or a ``queue/data`` request of the session (its headers
        go along: the cookies of an app with a login, Host for the file URLs)."""
        if not self.events.pending(session):
            return
        request = ctx.request
        headers = upstream_request_headers(
            request.headers,
            client_ip=request.remote,
            scheme=request.scheme,
            request_id=ctx.rec.request_id,
        )
        for name in ("Content-Length", "Content-Type", "Content-Encoding", "Expect"):
            headers.pop(name, None)
        target = data_target(request.raw_path, session)
        self._schedule(session, ctx.runtime.passthrough, target, dict(headers))

    def _schedule(
        self, session: str, pool: UpstreamPool, target: str, headers: dict[str, str]
    ) -> None:
        loop = asyncio.get_running_loop()

        def check() -> None:
            self._timers.discard(handle)
            self._check(session, pool, target, headers)

        handle = loop.call_later(self.grace, check)
        self._timers.add(handle)

    def _check(
        self, session: str, pool: UpstreamPool, target: str, headers: dict[str, str]
    ) -> None:
        ev = self.events
        if not ev.pending(session) or ev.streaming(session) or session in self._readers:
            return
        log.info(
            "gradio session %s… has a running event and no client reading its stream: "
            "gatekeeper reads it until the event ends",
            session[:8],
        )
        task = asyncio.get_running_loop().create_task(self._read(session, pool, target, headers))
        self._readers[session] = task
        task.add_done_callback(lambda _t: self._readers.pop(session, None))

    async def _read(
        self, session: str, pool: UpstreamPool, target: str, headers: dict[str, str]
    ) -> None:
        ev = self.events
        observer = SessionStream(ev, session)
        idle = ev.idle(session)
        clean = False
        ev.stream_opened(session)
        try:
            try:
                exchange = await pool.send(
                    "GET",
                    target,
                    {**headers, "Accept-Encoding": "identity"},
                    None,
                    max_body_bytes=0,
                )
            except UpstreamError as exc:
                log.warning(
                    "gradio session %s…: its stream could not be opened: %s", session[:8], exc
                )
                return
            try:
                clean = await _read_until(exchange.response, observer, idle)
            finally:
                exchange.close(reuse=clean)
        finally:
            ev.stream_closed(session)
            observer.done(clean)

    def close(self) -> int:
        """At stop (after the drain): the readers still running are cancelled."""
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        tasks = list(self._readers.values())
        for task in tasks:
            task.cancel()
        return len(tasks)


async def _read_until(
    upstream: aiohttp.ClientResponse, observer: SessionStream, idle: asyncio.Event
) -> bool:
    """Feed the stream to ``observer`` until ``idle`` is set or it ends; True: it ended."""
    if upstream.status != 200:
        log.warning(
            "gradio session %s…: its stream answered %d", observer.session[:8], upstream.status
        )
        return False

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
        return False
    exc = reader.exception()
    if exc is not None:
        if isinstance(exc, aiohttp.ClientError | TimeoutError):
            log.warning("gradio session %s…: its stream broke: %r", observer.session[:8], exc)
            return False
        raise exc
    return True
