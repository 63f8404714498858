"""Reading a Gradio join's body: taken (small JSON, spooled), decoded, parsed.

A join is the one body gatekeeper reads (its ``fn_index`` and ``session_hash``
decide admission); it is read from a decoded copy, and the app gets the bytes as
they came (issue #18 §4).
"""

from __future__ import annotations

from aiohttp import web

from gatekeeper.config import Config
from gatekeeper.core.errors import BadRequest
from gatekeeper.gradio.wire import GradioPath, Join, UnreadableCoding, decoded_body, parse_join
from gatekeeper.proxy.expect import send_continue
from gatekeeper.proxy.spool import Spool, SpoolBudget, take_body

# A join body is parsed only when it is at most this big (Gradio sends file paths, not
# files; a bigger one is still forwarded, and decided as "fn unknown": gated).
MAX_JOIN_BODY = 256 * 1024


async def take_join_body(
    request: web.BaseRequest, cfg: Config, budget: SpoolBudget
) -> Spool | None:
    """The request's body, spooled (in memory when it is a join's size); None: no body."""
    if not request.body_exists:
        return None
    return await take_body(
        request.content.iter_any(),
        max_bytes=cfg.limits.max_body_bytes,
        idle_timeout=cfg.limits.client_body_timeout,
        deadline=cfg.limits.client_body_deadline,
        memory_limit=max(cfg.limits.spool_memory_bytes, MAX_JOIN_BODY),
        budget=budget,  # the process's limits.max_spooled_bytes
        declared=request.content_length,
        before_read=lambda: send_continue(request),
    )


def read_join(request: web.BaseRequest, gp: GradioPath, spool: Spool | None) -> Join:
    """The join's fn_index and session (both None for a body too big to look at).
    Raises BadRequest (400; 415 for a coding gatekeeper does not read) otherwise."""
    body = spool.memory() if spool is not None else b"{}"
    if body is not None and len(body) <= MAX_JOIN_BODY:
        try:
            body = decoded_body(body, request.headers.getall("Content-Encoding", []), MAX_JOIN_BODY)
        except UnreadableCoding as exc:  # 415: RFC 9110 §15.5.16
            raise BadRequest(
                f"Gradio {gp.kind} body: {exc}", status=415, reason="bad_gradio_request"
            ) from exc
        except ValueError as exc:
            raise BadRequest(f"Gradio {gp.kind} body: {exc}", reason="bad_gradio_request") from exc
    if body is None or len(body) > MAX_JOIN_BODY:
        return Join(None, None)  # too big to look at: the function is unknown
    parsed = parse_join(body)
    if isinstance(parsed, str):
        raise BadRequest(f"Gradio {gp.kind} body: {parsed}", reason="bad_gradio_request")
    return parsed
