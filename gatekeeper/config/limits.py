"""``limits``: what one client may cost the edge (bodies, pauses, heads, connections).

These bound a *client*, not the engine: a slow or hostile client may cost a
connection, a file descriptor and a spool file for a bounded time, but never
the generation slot (the body of an admit route is taken before admission,
see ``gatekeeper.proxy.spool``); all clients together may hold at most
``max_spooled_bytes`` of spooled bodies. ``refusal_pacing`` bounds what all
refused clients together may cost the box: past a rate, a refusal is answered
later (``gatekeeper.core.pacing``, issue #18 §8).
"""

from __future__ import annotations

from gatekeeper.config.build import section_check
from gatekeeper.config.declare import declared, duration, integer, number, section
from gatekeeper.config.reader import Context, Section


@declared
class RefusalPacing:
    rate: float = number(
        "Refusals a second answered at once (after burst); past it a refusal waits for its"
        " turn in a schedule of this many answers a second, at most max_delay, so a retry"
        " storm costs the box a bounded rate of refusals. 0: refusals are never paced.",
        default=500.0,
    )
    burst: int = integer(
        "Refusals answered at once above the rate before pacing begins.",
        minimum=0,
        default=500,
    )
    max_delay: float = duration(
        "Longest a refusal waits for its turn; one that would wait longer is answered after"
        " this long. Never paced while over half of max_client_connections are open.",
        default=2.0,
    )


@declared
class Limits:
    max_body_bytes: int = integer(
        "Largest request body accepted (larger: 413).", minimum=0, default=100 * 1024 * 1024
    )
    client_body_timeout: float = duration(
        "Max gap between two chunks of a request body from the client (nginx's"
        " client_body_timeout; over it: 408).",
        default=60.0,
    )
    client_body_deadline: float = duration(
        "Max time for the whole body of an admit route (a client sending one byte just under"
        " every client_body_timeout would otherwise take as long as it likes; over it: 408).",
        default=600.0,
    )
    client_send_timeout: float = duration(
        "Max time one write of the response to the client may take (nginx's send_timeout): a"
        " client that stops reading must not hold the slot after the engine is done.",
        default=60.0,
    )
    header_timeout: float = duration(
        "Max time from a connection's first byte (or its opening) to a complete request head"
        " (nginx's client_header_timeout): slowloris clients are closed.",
        default=10.0,
    )
    max_client_connections: int = integer(
        "Client connections open at once on the public listener; over it the oldest one still"
        " waiting for its request head is closed (never one with a request running).",
        minimum=1,
        default=4096,
    )
    spool_memory_bytes: int = integer(
        "An admit route's body is spooled before admission: in memory up to this many bytes,"
        " in a temporary file beyond (never whole in memory).",
        minimum=0,
        default=1024 * 1024,
    )
    max_spooled_bytes: int = integer(
        "Request body bytes held by spools at once, across every connection and route kind"
        " (admit, queue, Gradio joins). A declared Content-Length that does not fit in what is"
        " left is refused 503 spool_full before any of the body is read; a chunked body that"
        " grows past it is cut off with the same 503. Never less than max_body_bytes in effect"
        " (a smaller value counts as max_body_bytes): the largest accepted body always fits"
        " when no other is being received.",
        minimum=0,
        default=1024 * 1024 * 1024,
    )
    refusal_pacing: RefusalPacing = section(
        "A retry storm answered at a bounded rate: past rate refusals a second, a refusal"
        " is answered later (within max_delay), never faster than the box can afford.",
        factory=RefusalPacing,
    )


@section_check(Limits)
def _check(lim: Limits, sec: Section, ctx: Context) -> Limits:
    if lim.client_body_deadline < lim.client_body_timeout:
        sec.problem(
            "client_body_deadline",
            sec.node_of("client_body_deadline"),
            f"must be >= client_body_timeout ({lim.client_body_timeout:g}s)",
            lim.client_body_deadline,
        )
    return lim
