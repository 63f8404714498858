"""The public listener's connections: a head-read deadline and a cap on open connections.

aiohttp has neither: a client may open a connection and send its request head
one byte at a time for as long as it likes, and any number of them may be open
at once (1,000 slowloris connections held 1,013 fds; under systemd's usual
1,024 fd limit legitimate clients would be locked out). ``Connections`` tracks
every connection of the public listener and enforces two limits, read from the
live rules on every decision so a reload applies at once:

- ``limits.header_timeout``: a connection *waiting for a request head* is
  closed (``408``, then close) once the head has not been completed within the
  timeout, counted from the connection's opening, or, on a kept-alive
  connection, from the first byte of its next head (the idle wait before that
  byte is aiohttp's ``keepalive_timeout``);
- ``limits.max_client_connections``: a new connection over the cap closes the
  oldest connection still waiting for its head (never one whose request is
  running: that may be a generation); if every connection is running a
  request, the new one is closed at once.

The state of one connection is "waiting" (for a head) or "busy" (a request is
being handled, from the first middleware to the end of the handler). The
decisions (``expired``, ``victim``) are pure functions of that table and a
clock; ``EdgeProtocol`` is the thin adapter between asyncio's transport and
aiohttp's ``RequestHandler``: it forwards every call and tells the table when
bytes arrive.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web

from gatekeeper.config import Limits

log = logging.getLogger("gatekeeper.edge")

# How often waiting connections are checked against the head deadline.
SWEEP_SECONDS = 0.5
# At most one log line per reason this often, with the counts since the last one.
LOG_EVERY_SECONDS = 10.0
# Sent to a connection whose head did not arrive in time (RFC 9110 §15.5.9).
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
)


@dataclass
class Conn:
    """One client connection. ``since``: when its current wait for a head started."""

    transport: asyncio.Transport | None
    since: float
    first_byte: float | None = None  # of the head being waited for, on a kept-alive conn
    fresh: bool = True  # no request handled yet: the deadline counts from the opening
    busy: int = 0  # requests being handled (pipelining may overlap begin/end)

    def deadline(self, header_timeout: float) -> float | None:
        """When this connection must have completed its head; None: not waiting on us."""
        if self.busy:
            return None
        if self.fresh:
            return self.since + header_timeout
        if self.first_byte is not None:
            return self.first_byte + header_timeout
        return None  # idle keep-alive: aiohttp's keepalive_timeout applies


class Connections:
    """Every open connection of the public listener, oldest first."""

    def __init__(
        self,
        limits: Callable[[], Limits],
        clock: Callable[[], float],
        on_close: Callable[[str], None] | None = None,
    ):
        self._limits = limits
        self._clock = clock
        self._on_close = on_close
        self._conns: dict[object, Conn] = {}  # key: the aiohttp RequestHandler
        # Called once when a connection closes (a queued request leaves the queue at once).
        self._on_lost: dict[object, list[Callable[[], None]]] = {}
        self.cap_ceiling: int | None = None  # from the open-file limit (app.py)
        self.closed: dict[str, int] = {"header_timeout": 0, "connection_limit": 0}
        self._unlogged: dict[str, int] = {"header_timeout": 0, "connection_limit": 0}
        self._logged_at = dict.fromkeys(self._unlogged, -LOG_EVERY_SECONDS)

    # ------------------------------------------------------------------ pure decisions

    @property
    def open(self) -> int:
        return len(self._conns)

    @property
    def cap(self) -> int:
        cap = self._limits().max_client_connections
        return min(cap, self.cap_ceiling) if self.cap_ceiling is not None else cap

    def expired(self, now: float) -> list[object]:
        """Connections whose head deadline has passed."""
        timeout = self._limits().header_timeout
        out = []
        for key, conn in self._conns.items():
            deadline = conn.deadline(timeout)
            if deadline is not None and now >= deadline:
                out.append(key)
        return out

    def victim(self) -> object | None:
        """The connection to close so a new one fits: the oldest one waiting for a head."""
        for key, conn in self._conns.items():  # insertion order: oldest first
            if not conn.busy:
                return key
        return None

    # ------------------------------------------------------------------ events

    def opened(self, key: object, transport: asyncio.Transport) -> bool:
        """A new connection; False if it must be closed at once (every slot busy)."""
        while len(self._conns) >= self.cap:
            victim = self.victim()
            if victim is None:
                self._count("connection_limit")
                return False
            self._close(victim, "connection_limit", respond=False)
        self._conns[key] = Conn(transport, self._clock())
        return True

    def received(self, key: object) -> None:
        conn = self._conns.get(key)
        if conn is not None and not conn.busy and not conn.fresh and conn.first_byte is None:
            conn.first_byte = self._clock()

    def lost(self, key: object) -> None:
        self._conns.pop(key, None)
        for callback in self._on_lost.pop(key, ()):
            callback()

    def watch_lost(self, key: object, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when connection ``key`` closes; returns the undo."""
        if key not in self._conns:
            callback()  # already gone
            return lambda: None
        self._on_lost.setdefault(key, []).append(callback)

        def undo() -> None:
            callbacks = self._on_lost.get(key)
            if callbacks and callback in callbacks:
                callbacks.remove(callback)
                if not callbacks:
                    del self._on_lost[key]

        return undo

    def begin(self, key: object) -> None:
        """A request head was read on ``key``: it is handled now, no deadline applies."""
        conn = self._conns.get(key)
        if conn is not None:
            conn.busy += 1
            conn.fresh = False

    def end(self, key: object) -> None:
        """The request finished; the connection waits for its next head (keep-alive)."""
        conn = self._conns.get(key)
        if conn is None or conn.busy == 0:
            return
        conn.busy -= 1
        if conn.busy == 0:
            conn.since, conn.first_byte = self._clock(), None

    def sweep(self) -> int:
        """Close every connection past its head deadline; returns how many."""
        expired = self.expired(self._clock())
        for key in expired:
            self._close(key, "header_timeout", respond=True)
        return len(expired)

    async def run(self) -> None:
        """The sweeper (a cleanup_ctx task of the proxy app)."""
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            self.sweep()
            self._flush_log()

    # ------------------------------------------------------------------ closing

    def _close(self, key: object, reason: str, *, respond: bool) -> None:
        conn = self._conns.pop(key)
        self._count(reason)
        transport = conn.transport
        if transport is None or transport.is_closing():
            return
        if respond:
            transport.write(_TIMEOUT_RESPONSE)
            transport.close()  # flushes the 408 first
        else:
            transport.abort()

    def _count(self, reason: str) -> None:
        self.closed[reason] += 1
        if self._on_close is not None:
            self._on_close(reason)
        self._unlogged[reason] += 1
        self._flush_log()

    def _flush_log(self) -> None:
        """One line per reason at most every LOG_EVERY_SECONDS, with the count since."""
        now = self._clock()
        lim = self._limits()
        for reason, count in self._unlogged.items():
            if not count or now - self._logged_at[reason] < LOG_EVERY_SECONDS:
                continue
            self._logged_at[reason] = now
            self._unlogged[reason] = 0
            if reason == "header_timeout":
                log.warning(
                    "closed %d connection(s) that sent no complete request head within %gs "
                    "(limits.header_timeout; slow or idle clients); %d open",
                    count,
                    lim.header_timeout,
                    self.open,
                )
            else:
                log.warning(
                    "closed %d connection(s) over the cap of %d open client connections "
                    "(limits.max_client_connections%s): the oldest waiting for a head, or "
                    "the new one when every connection was running a request",
                    count,
                    self.cap,
                    "" if self.cap == lim.max_client_connections else ", lowered by the fd limit",
                )


class EdgeProtocol(asyncio.Protocol):
    """Stands between a transport and aiohttp's RequestHandler; forwards everything."""

    __slots__ = ("_conns", "_inner", "_made")

    def __init__(self, inner: Any, conns: Connections):
        self._inner = inner
        self._conns = conns
        self._made = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        if not self._conns.opened(self._inner, transport):
            transport.abort()  # connection_lost follows; aiohttp never sees this one
            return
        self._made = True
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._made:
            self._conns.received(self._inner)
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if not self._made:
            return None
        result: bool | None = self._inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self._conns.lost(self._inner)
        if self._made:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def protocol_factory(server: Callable[[], Any], conns: Connections) -> Callable[[], EdgeProtocol]:
    """What ``loop.create_server`` gets instead of aiohttp's ``web.Server``."""

    def factory() -> EdgeProtocol:
        return EdgeProtocol(server(), conns)

    return factory


class EdgeSite(web.TCPSite):
    """``TCPSite`` whose connections pass through ``EdgeProtocol`` (the public listener)."""

    __slots__ = ("_conns",)

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *, conns: Connections, **kw: Any
    ):
        super().__init__(runner, host, port, **kw)
        self._conns = conns

    async def start(self) -> None:
        self._runner._reg_site(self)  # what BaseSite.start does
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            protocol_factory(server, self._conns),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


def fd_ceiling(reserve: int = 64) -> int | None:
    """Connections the process's open-file limit leaves room for (None: unlimited)."""
    try:
        import resource  # Unix only: elsewhere there is no limit to read

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY:
        return None
    return max(1, soft - reserve)
