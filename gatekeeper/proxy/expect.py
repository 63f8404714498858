"""``Expect: 100-continue``: the client is invited to send its body only when it is wanted.

aiohttp answers ``100 Continue`` as soon as a request is routed, before any
handler runs (the route's ``expect_handler``), so a client refused from its
head (busy, ``client_limit``, ``queue_full``, ``spool_full``, a block route, a
413) had already been told to send its 100 MiB. The proxy's route uses
``defer_continue`` instead: nothing is sent at routing; whoever first reads the
body calls ``send_continue`` just before (``spool.take_body``'s ``before_read``,
``relay.Relay`` for a streamed body). A request answered without reading gets
its final answer instead of ``100 Continue`` (RFC 9110 §10.1.1 allows it).
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11

_SENT = web.RequestKey("gatekeeper.continue_sent", bool)


def _expects_continue(request: web.BaseRequest) -> bool:
    return (
        request.version == HttpVersion11
        and request.headers.get(hdrs.EXPECT, "").lower() == "100-continue"
    )


async def defer_continue(request: web.Request) -> web.StreamResponse | None:
    """The route's expect handler: an unknown expectation is 417 (as aiohttp's own
    handler answers); ``100-continue`` waits for ``send_continue``."""
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version == HttpVersion11 and expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}")
    return None


async def send_continue(request: web.BaseRequest) -> None:
    """``100 Continue``, once, if the client asked for it and nothing was answered yet.
    A client already gone is noticed by the body read that follows."""
    if not _expects_continue(request) or request.get(_SENT):
        return
    request[_SENT] = True
    writer = request.writer
    if writer is None or writer.output_size:  # an answer has begun: too late to invite
        return
    try:
        await writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
    except ConnectionError:
        return
    writer.output_size = 0  # the interim answer is not part of the response's size


def body_unread(request: web.BaseRequest) -> bool:
    """The request has a body and none of it was asked for: answering now, the
    connection closes after the answer (a lingering read discards what still comes)."""
    return request.body_exists and not request.get(_SENT) and not request.content.is_eof()
