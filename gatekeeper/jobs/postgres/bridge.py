"""The bridge: synchronous calls on the caller's loop, asyncpg on the store's own loop.

``JobStore`` is synchronous and called on the proxy's event loop (``store``
says why); asyncpg is asyncio. ``Bridge`` owns a second event loop in a daemon
thread, the asyncpg pool on it and the breaker's probe task; ``call`` submits a
coroutine there (``asyncio.run_coroutine_threadsafe``) and waits for its answer
at most ``timeout`` seconds. So a store call costs one round trip plus two
thread hand-offs (``bench/postgres_store.py`` measures it), and the proxy's loop
is never blocked longer than ``timeout`` by a store that stopped answering:

- a call that times out is cancelled on the store's loop (its transaction is
  rolled back by the server when the connection is reset; one whose COMMIT was
  already sent may or may not have committed: its outcome is unknown, as for any
  client of a database that vanished mid-call) and opens the breaker;
- while the breaker is open every call raises ``StoreUnavailable`` at once, and
  a probe on the store's loop reconnects by itself (``breaker``).

Errors are translated here, at the boundary: a lost connection or a timeout is
``guard.StoreUnavailable``; any other database error is ``guard.StoreFault``
(the store's ``StorageError``); ``UniqueViolation`` passes through for the
caller that expects it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import asyncpg

from gatekeeper.jobs.guard import StoreFault, StoreUnavailable
from gatekeeper.jobs.postgres.breaker import Breaker

T = TypeVar("T")
log = logging.getLogger("gatekeeper.jobs")


class _OneLine(logging.Filter):
    """asyncpg's pool logs each failed reconnect with a traceback; while PostgreSQL
    restarts that is expected (the breaker and the probe deal with it): one line each."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            record.msg = f"{record.msg}: {record.exc_info[1]!r}"
        record.exc_info = record.exc_text = None
        return True


_POOL_LOG = logging.getLogger("asyncpg.pool")
if not any(isinstance(f, _OneLine) for f in _POOL_LOG.filters):
    _POOL_LOG.addFilter(_OneLine())

# What a dead server, a broken network or a restarted PostgreSQL raises.
LOST: tuple[type[BaseException], ...] = (
    OSError,  # TimeoutError and ConnectionError are OSErrors
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # A pooled connection caught mid-operation by a server shutting down ("cannot switch
    # to state ...; another operation is in progress"): as lost as the others.
    asyncpg.InternalClientError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)
PASSED: tuple[type[BaseException], ...] = (asyncpg.UniqueViolationError,)


class Bridge:
    """An asyncpg pool on its own loop and thread, called synchronously with a bound."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str,
        pool_size: int,
        timeout: float,
        probe_every: float = 1.0,
    ):
        self.timeout = timeout
        self.dsn = dsn  # the listening connection's too (``listen``)
        self.breaker = Breaker(time.monotonic, probe_every)
        self._dsn = dsn
        self._schema = schema
        self._pool_size = pool_size
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="gatekeeper-postgres", daemon=True
        )
        self._pool: asyncpg.Pool | None = None
        self._probe: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []  # spawned: cancelled at close
        self._closed = False

    def start(self, setup: Callable[[asyncpg.Connection], Awaitable[None]]) -> None:
        """Start the thread, connect the pool and run ``setup`` on one connection (the
        schema); a failure here is raised as it is (the caller names it)."""
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._connect(setup), self._loop)
        try:
            fut.result(timeout=max(self.timeout, 10.0))
        except BaseException:
            fut.cancel()
            self.close()
            raise

    async def _connect(self, setup: Callable[[asyncpg.Connection], Awaitable[None]]) -> None:
        async with asyncio.timeout(max(self.timeout, 10.0)):
            con = await asyncpg.connect(self._dsn)
            try:
                await setup(con)
            finally:
                await con.close()
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=self._pool_size,
                server_settings={"search_path": self._schema},
            )
        self._probe = asyncio.create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        """While the breaker is open, ``SELECT 1`` every ``probe_every`` seconds."""
        while True:
            await asyncio.sleep(self.breaker.probe_every)
            if not self.breaker.is_open or self._pool is None:
                continue
            try:
                async with asyncio.timeout(self.timeout):
                    await self._pool.fetchval("SELECT 1")
            except Exception:
                self.breaker.probed(False)
            else:
                self.breaker.probed(True)

    def call(self, op: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(connection, *args)`` on the store's loop, waited for at most
        ``timeout`` seconds; ``StoreUnavailable`` when the store cannot answer."""
        fut = self._start(op, fn, args)
        try:
            return fut.result(timeout=self.timeout)
        except Exception as exc:
            failure = self._failure(op, exc, fut)
            if failure is exc:
                raise
            raise failure from exc

    async def acall(self, op: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``call`` for a coroutine of the caller's loop (a background look, never a
        request's decision): the caller's loop goes on while the store answers; the same
        bound, breaker and errors."""
        fut = self._start(op, fn, args)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), self.timeout)
        except Exception as exc:
            failure = self._failure(op, exc, fut)
            if failure is exc:
                raise
            raise failure from exc

    def _start(
        self, op: str, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]
    ) -> concurrent.futures.Future[T]:
        """``fn`` sent to the store's loop, unless the breaker is open or the store closed."""
        if not self.breaker.allow():
            raise StoreUnavailable(op, self.breaker.why, self.breaker.retry_after())
        if self._closed or self._pool is None:
            raise StoreUnavailable(op, "the store is closed", self.breaker.retry_after())
        return asyncio.run_coroutine_threadsafe(self._with_connection(fn, args), self._loop)

    def _failure(self, op: str, exc: Exception, fut: concurrent.futures.Future[Any]) -> Exception:
        """What a failed ``call``/``acall`` raises: no answer in time or a lost connection
        open the breaker (``StoreUnavailable``); a statement's error is ``StoreFault``;
        the store's own answers (``PASSED``: a refused transition, an unknown id) as they are."""
        if isinstance(exc, TimeoutError):  # concurrent.futures' too (3.11+)
            fut.cancel()
            why = f"no answer within {self.timeout:g}s"
        elif isinstance(exc, PASSED):
            return exc
        elif isinstance(exc, LOST):
            why = f"{type(exc).__name__}: {exc}"
        elif isinstance(exc, asyncpg.PostgresError):
            return StoreFault(op, exc)
        else:
            return exc
        self.breaker.failed(why)
        return StoreUnavailable(op, why, self.breaker.retry_after())

    def fire(
        self,
        op: str,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        done: Callable[[T | None], None],
    ) -> None:
        """``await fn(connection, *args)`` on the store's loop, never waited for (heartbeats,
        the lease sweep: issue #21). ``done`` gets the answer on the store's thread, or None
        when it failed; a lost connection or a timeout opens the breaker as ``call``'s do."""
        if not self.breaker.allow() or self._closed or self._pool is None:
            done(None)
            return
        asyncio.run_coroutine_threadsafe(self._fired(op, fn, args, done), self._loop)

    async def _fired(
        self,
        op: str,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        done: Callable[[T | None], None],
    ) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                result = await self._with_connection(fn, args)
        except LOST as exc:  # TimeoutError is an OSError
            self.breaker.failed(f"{op}: {type(exc).__name__}: {exc}")
            done(None)
        except Exception:
            log.exception("the store's %s failed", op)
            done(None)
        else:
            done(result)

    def spawn(self, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``job()`` on the store's loop until ``close`` (the listening connection)."""
        if self._closed:
            return

        def start() -> None:
            self._tasks.append(self._loop.create_task(job()))

        self._loop.call_soon_threadsafe(start)

    async def _with_connection(self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
        assert self._pool is not None
        async with self._pool.acquire() as con:
            return await fn(con, *args)

    def close(self) -> None:
        """Close the pool and stop the thread; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            with contextlib.suppress(Exception):
                fut.result(timeout=max(self.timeout, 5.0))
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5.0)
        if not self._thread.is_alive():
            self._loop.close()

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        if self._pool is not None:
            try:
                async with asyncio.timeout(2.0):
                    await self._pool.close()
            except LOST:
                self._pool.terminate()
