"""Who is asking: the client key the waiting room is fair across (PURE).

``admission.queue.client_key`` says where it comes from:

- ``remote``: the peer address. When the peer is one of
  ``admission.queue.trusted_proxies`` (a load balancer, the frontend's own
  server), the address is taken from ``X-Forwarded-For`` instead: the rightmost
  entry that is not itself a trusted proxy (entries to its left could be
  written by anyone).
- ``header:<Name>``: that request header (e.g. ``X-User-Id`` set by the
  frontend after login). A request without it falls back to its address, so a
  missing header never lumps every anonymous user into one key.

Keys are prefixed by their kind (``ip:`` / ``hdr:``) so a header value can never
pose as somebody's address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

from gatekeeper.config import ClientKey

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# A header value longer than this is cut: it is a key, not a payload.
MAX_KEY_CHARS = 256


def _trusted(addr: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]
) -> str:
    """The client's address: the peer, or X-Forwarded-For's when the peer is trusted."""
    addr = peer or "unknown"
    if not trusted or not _trusted(addr, trusted):
        return addr
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop
    return hops[0] if hops else addr  # every hop is ours: the first one is the client


def client_key(
    rule: ClientKey,
    trusted: Sequence[Network],
    peer: str | None,
    headers: Mapping[str, str],
    forwarded_for: Sequence[str] = (),
) -> str:
    """The waiting room's key for this request (see the module text)."""
    if rule.source == "header" and rule.header:
        value = headers.get(rule.header, "").strip()
        if value:
            return "hdr:" + value[:MAX_KEY_CHARS]
    return "ip:" + client_address(peer, forwarded_for, trusted)
