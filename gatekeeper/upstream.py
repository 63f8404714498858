"""Upstream client pools: the seed's httpx settings mapped onto aiohttp, failures mapped to ours.

One long-lived ``aiohttp.ClientSession`` per pool (gated generations and
passthrough traffic each get one, so a 15-minute job never starves status
polls). aiohttp, not httpx, on the proxy path: see issue #2 for the figures.

How each seed setting (httpx names) is enforced:

=========================  ==========================================================
``timeouts.connect``       aiohttp ``sock_connect``: establishing one TCP connection
``timeouts.read``          aiohttp ``sock_read``: the gap between two bytes, including
                           the wait for the response head (the 15-minute generation)
``timeouts.write``         aiohttp has none. Enforced here: every chunk handed to
                           aiohttp's writer must be taken by the socket within it
``timeouts.pool``          our own semaphore of ``max_connections`` permits, acquired
                           under this timeout, so "no free connection" is told apart
                           from "cannot connect" (503 ``upstream_busy`` vs 502)
``max_connections``        the semaphore above, and the connector ``limit``
``max_keepalive_conns``    aiohttp has no idle cap: ``_KeepaliveCappedConnector``
                           closes a released connection when that many are already idle
``keepalive_expiry``       connector ``keepalive_timeout``
=========================  ==========================================================

Also: ``auto_decompress=False`` (bytes are relayed raw), redirects are never
followed, and aiohttp's automatic request headers are suppressed so the
engine sees the frontend's headers, not ours.

A permit is held from before the request until ``Exchange.close`` and is
released exactly once, on every path.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gatekeeper.config import Pool, Timeouts
from gatekeeper.core.errors import (
    BodyTooLarge,
    ClientTimeout,
    UpstreamBusy,
    UpstreamDropped,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

# Headers aiohttp would invent when the frontend did not send them.
_AUTO_HEADERS = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})


class ClientGone(Exception):
    """The downstream client went away while its request body was being relayed."""


class Permits:
    """A counting semaphore with a synchronous fast path and FIFO waiters.

    asyncio.Semaphore re-checks its waiters with a generator on every acquire;
    on the proxy path that showed up in profiles. ``take`` waits in arrival order;
    a waiter cancelled (the pool timeout) after being handed a permit gives it on.
    """

    def __init__(self, count: int):
        self._free = count
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_take(self) -> bool:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def take(self) -> None:
        if self.try_take():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.give()  # we were handed a permit but will not use it
            elif fut in self._waiters:  # give() may already have dropped our cancelled future
                self._waiters.remove(fut)
            raise

    def give(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the permit passes straight to the next waiter
                return
        self._free += 1


class _KeepaliveCappedConnector(aiohttp.TCPConnector):
    """TCPConnector that keeps at most ``max_idle`` idle connections (httpx's
    ``max_keepalive_connections``). ``_release`` is aiohttp's private hook for a
    connection coming back to the pool; it is the only private API we touch, and
    ``tests/test_upstream.py`` pins its behaviour."""

    def __init__(self, *, max_idle: int, **kwargs: Any):
        super().__init__(**kwargs)
        self._max_idle = max_idle

    def idle_count(self) -> int:
        return sum(len(conns) for conns in self._conns.values())

    def _release(self, key: Any, protocol: Any, *, should_close: bool = False) -> None:
        if self.idle_count() >= self._max_idle:
            should_close = True
        super()._release(key, protocol, should_close=should_close)


@dataclass
class BodyState:
    """Shared between the request-body relay and the error mapping.

    aiohttp's writer wraps whatever the body iterator raises in a
    ``ClientConnectionError``, so the relay parks its own verdict here for
    ``_map_error`` to return as is.
    """

    sent: int = 0
    refusal: BaseException | None = None  # ClientGone | ClientTimeout | BodyTooLarge


class _WriteWatch:
    """Arms ``timeouts.write`` around each chunk aiohttp is writing upstream."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.deadline: asyncio.Timeout | None = None

    def arm(self) -> None:
        if self.deadline is not None:
            self.deadline.reschedule(asyncio.get_running_loop().time() + self.timeout)

    def disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.reschedule(None)


async def _relay_body(
    source: AsyncIterator[bytes],
    state: BodyState,
    max_bytes: int,
    watch: _WriteWatch,
    idle_timeout: float,
) -> AsyncIterator[bytes]:
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                chunk = await anext(source)
        except StopAsyncIteration:
            return
        except TimeoutError as exc:  # the client stopped sending mid-body
            state.refusal = ClientTimeout(
                f"the client sent no request body data for {idle_timeout:g}s "
                "(limits.client_body_timeout)"
            )
            raise state.refusal from exc
        except Exception as exc:  # the client's side of the relay broke
            state.refusal = ClientGone(str(exc))
            raise state.refusal from exc
        state.sent += len(chunk)
        if state.sent > max_bytes:
            state.refusal = BodyTooLarge(
                f"request body exceeds limits.max_body_bytes ({max_bytes} bytes); "
                f"{state.sent} bytes were received when it was refused"
            )
            raise state.refusal
        watch.arm()
        # aiohttp resumes us once the socket has taken the chunk: that wait is the write.
        yield chunk
        watch.disarm()


class Exchange:
    """An upstream response whose permit and connection are released exactly once."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        release_permit: Callable[[], None],
        body: BodyState | None = None,
    ):
        self.response = response
        self._permit: Callable[[], None] | None = release_permit
        self.body = body if body is not None else BodyState()

    def close(self, *, reuse: bool) -> None:
        """``reuse`` only when the body was read to its end; otherwise the socket dies."""
        if self._permit is None:
            return
        release_permit, self._permit = self._permit, None
        try:
            if reuse:
                self.response.release()
            else:
                self.response.close()
        finally:
            release_permit()


class UpstreamPool:
    """One aiohttp session plus the permits that make pool limits and timeouts explicit."""

    def __init__(self, name: str, base_url: str, pool: Pool):
        self.name = name
        self.base = base_url.rstrip("/")
        self.pool = pool
        t, lim = pool.timeouts, pool.limits
        self._permits = Permits(lim.max_connections)
        self.connector = _KeepaliveCappedConnector(
            max_idle=lim.max_keepalive_connections,
            limit=lim.max_connections,
            limit_per_host=0,
            keepalive_timeout=lim.keepalive_expiry if lim.keepalive_expiry > 0 else None,
            force_close=lim.keepalive_expiry == 0 or lim.max_keepalive_connections == 0,
            enable_cleanup_closed=False,
        )
        self.session = aiohttp.ClientSession(
            connector=self.connector,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=None, sock_connect=t.connect, sock_read=t.read
            ),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # a proxy must not keep cookies between users
            skip_auto_headers=_AUTO_HEADERS,
        )

    async def send(
        self,
        method: str,
        raw_target: str,
        headers: Mapping[str, str] | CIMultiDict[str],
        body: AsyncIterator[bytes] | None,
        *,
        max_body_bytes: int,
        client_body_timeout: float = 60.0,
    ) -> Exchange:
        """Send a request; return once the response head arrived. Raises our errors."""
        t = self.pool.timeouts
        if not self._permits.try_take():  # the common case (a free permit) needs no timer
            try:
                async with asyncio.timeout(t.pool):
                    await self._permits.take()
            except TimeoutError:
                raise UpstreamBusy(
                    f"no free connection to the upstream within {t.pool:g}s "
                    f"(pool {self.name!r}, max_connections={self.pool.limits.max_connections})"
                ) from None
        released = False

        def release_permit() -> None:
            nonlocal released
            if not released:
                released = True
                self._permits.give()

        state = BodyState()
        url = URL(self.base + raw_target, encoded=True)
        write_expired = False
        try:
            if body is None:  # nothing to write, nothing to watch
                response = await self.session.request(
                    method, url, headers=headers, allow_redirects=False
                )
            else:
                watch = _WriteWatch(t.write)
                data = _relay_body(body, state, max_body_bytes, watch, client_body_timeout)
                async with asyncio.timeout(None) as deadline:
                    watch.deadline = deadline
                    try:
                        response = await self.session.request(
                            method, url, headers=headers, data=data, allow_redirects=False
                        )
                    finally:
                        watch.deadline = None
                        write_expired = deadline.expired()
        except BaseException as exc:
            release_permit()
            mapped = _map_error(exc, state, write_expired=write_expired, timeouts=t)
            if mapped is None:
                raise
            raise mapped from exc
        return Exchange(response, release_permit, state)

    async def close(self) -> None:
        await self.session.close()


# The engine closed or reset a connection it had accepted: a verdict on the engine
# (``UpstreamDropped.engine_gone``), not only on this exchange.
DROPPED = (
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientConnectionResetError,
    aiohttp.ClientOSError,
    aiohttp.ClientPayloadError,
)


def _map_error(
    exc: BaseException,
    state: BodyState,
    *,
    write_expired: bool,
    timeouts: Timeouts,
) -> BaseException | None:
    connect, read, write = timeouts.connect, timeouts.read, timeouts.write
    if isinstance(exc, asyncio.CancelledError):
        return None  # never swallowed, never translated
    if state.refusal is not None:
        return state.refusal
    if write_expired:
        return UpstreamTimeout(f"the upstream did not accept the request body within {write:g}s")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamUnavailable(f"cannot connect to the upstream within {connect:g}s")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamUnavailable(f"cannot connect to the upstream: {exc.os_error}")
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return UpstreamTimeout(f"the upstream sent nothing for {read:g}s")
    if isinstance(exc, DROPPED):
        return UpstreamDropped(f"the upstream closed the connection before its answer: {exc!r}")
    if isinstance(exc, aiohttp.ClientError):
        return UpstreamProtocolError(f"the upstream connection failed: {exc!r}")
    if isinstance(exc, UpstreamError):
        return exc
    return None
