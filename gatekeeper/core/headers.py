"""Header rewriting for a transparent proxy (pure: multidicts in, multidicts out).

RFC 9110 §7.6.1: a proxy removes the hop-by-hop fields — ``Connection``, every
field ``Connection`` names, and the well-known connection-specific fields —
and forwards everything else unchanged, repeated fields included.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)

REQUEST_ID = "X-Request-ID"
# A client's X-Request-ID is kept only if it looks like an id: it goes into every log
# line and upstream, so 8,000 characters or control bytes must not (issue #8).
REQUEST_ID_MAX = 128
_REQUEST_ID_OK = re.compile(rf"[A-Za-z0-9._~:/+=@-]{{1,{REQUEST_ID_MAX}}}\Z")

Headers = CIMultiDict[str] | CIMultiDictProxy[str]


def _connection_tokens(headers: Headers) -> set[str]:
    tokens: set[str] = set()
    for value in headers.getall("Connection", []):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


GATEKEEPER_REASON = "X-Gatekeeper-Reason"


def end_to_end(headers: Headers, *, drop: Iterable[str] = ()) -> CIMultiDict[str]:
    """A copy without hop-by-hop fields (and without ``drop``), order and repeats kept."""
    remove = HOP_BY_HOP
    if "Connection" in headers or drop:
        remove = remove | _connection_tokens(headers) | {d.lower() for d in drop}
    return CIMultiDict([(k, v) for k, v in headers.items() if k.lower() not in remove])


def upstream_request_headers(
    incoming: Headers, *, client_ip: str | None, scheme: str, request_id: str
) -> CIMultiDict[str]:
    """The headers the engine sees: the frontend's, minus hop-by-hop, plus X-Forwarded-*.

    ``Host`` is kept as the frontend sent it (the engine may build URLs from it);
    ``X-Forwarded-For`` is appended to, never replaced (RFC 7239 semantics of the
    de-facto header); ``X-Forwarded-Proto``/``-Host`` describe our listener.
    """
    out = end_to_end(incoming)
    prior = ", ".join(out.getall("X-Forwarded-For", []))
    if client_ip:
        out["X-Forwarded-For"] = f"{prior}, {client_ip}" if prior else client_ip
    out["X-Forwarded-Proto"] = scheme
    host = incoming.get("Host")
    if host:
        out["X-Forwarded-Host"] = host
    out[REQUEST_ID] = request_id
    return out


def downstream_response_headers(upstream: Headers) -> CIMultiDict[str]:
    """The headers the frontend sees: the engine's, minus hop-by-hop.

    ``Content-Length`` is kept when the engine sent one (the body is relayed
    byte-exact); without it aiohttp frames the body with chunked encoding
    itself, so the two are never sent together.

    ``X-Gatekeeper-Reason`` is gatekeeper's own word: an engine's copy is dropped, so
    that a 503 carrying it is always gatekeeper's refusal before anything reached the
    engine, which HAProxy's per-box guard retries on another box (issue #11 §2;
    deploy/haproxy/haproxy.cfg). An engine must not be able to make its own 503 look
    safe to retry.
    """
    if GATEKEEPER_REASON in upstream:
        return end_to_end(upstream, drop=(GATEKEEPER_REASON,))
    return end_to_end(upstream)


def request_id(incoming: Headers) -> str:
    """The client's ``X-Request-ID`` if it is a plausible id, else a fresh one.

    Valid: 1-128 characters of letters, digits and ``._~:/+=@-`` (UUIDs, hex, base64,
    W3C trace ids). Anything else is replaced, never truncated: a truncated id would
    silently correlate with the wrong request downstream.
    """
    given = incoming.get(REQUEST_ID)
    if given is not None and _REQUEST_ID_OK.match(given):
        return given
    return new_request_id()


# A fresh id: 16 random hex digits fixed per process, then a 16-digit counter. Unique
# across processes and restarts like uuid4().hex (same length), but without a getrandom
# syscall per request: uuid4 was 14 % of the CPU of a rejection (py-spy, bench/).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"
