"""``limits``: what one client may cost the edge (bodies, pauses, heads, connections).

These bound a *client*, not the engine: a slow or hostile client may cost a
connection, a file descriptor and a spool file for a bounded time, but never
the generation slot (the body of an admit route is taken before admission,
see ``gatekeeper.spool``).
"""

from __future__ import annotations

from dataclasses import dataclass

from gatekeeper.config.reader import Section


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 100 * 1024 * 1024
    # Max gap between two chunks of a request body from the client (nginx's
    # client_body_timeout).
    client_body_timeout: float = 60.0
    # Max time for a whole request body of an admit route (a client sending one byte
    # just under every client_body_timeout would otherwise take as long as it likes).
    client_body_deadline: float = 600.0
    # Max time one write of the response to the client may take (nginx's send_timeout):
    # a client that stops reading must not hold the slot after the engine is done.
    client_send_timeout: float = 60.0
    # Max time from a connection's first byte (or its opening) to a complete request
    # head (nginx's client_header_timeout): slowloris clients are closed.
    header_timeout: float = 10.0
    # Client connections open at once on the public listener; over it the oldest one
    # still waiting for its request head is closed (never one with a request running).
    max_client_connections: int = 4096
    # An admit route's body is spooled before admission: in memory up to this many
    # bytes, in a temporary file beyond (never whole in memory).
    spool_memory_bytes: int = 1024 * 1024


def read_limits(sec: Section) -> Limits:
    d = Limits()
    lim = Limits(
        max_body_bytes=sec.integer("max_body_bytes", d.max_body_bytes, minimum=0),
        client_body_timeout=sec.duration("client_body_timeout", d.client_body_timeout),
        client_body_deadline=sec.duration("client_body_deadline", d.client_body_deadline),
        client_send_timeout=sec.duration("client_send_timeout", d.client_send_timeout),
        header_timeout=sec.duration("header_timeout", d.header_timeout),
        max_client_connections=sec.integer(
            "max_client_connections", d.max_client_connections, minimum=1
        ),
        spool_memory_bytes=sec.integer("spool_memory_bytes", d.spool_memory_bytes, minimum=0),
    )
    if lim.client_body_deadline < lim.client_body_timeout:
        sec.problem(
            "client_body_deadline",
            sec.node_of("client_body_deadline"),
            f"must be >= client_body_timeout ({lim.client_body_timeout:g}s)",
            lim.client_body_deadline,
        )
    sec.close()
    return lim
