"""The wake-up of idle boxes: ``LISTEN`` on the schema's channel (issue #21).

Every row that becomes queued notifies ``gatekeeper_<schema>`` from inside the
statement that queued it (the ``notify_queued`` trigger, schema version 4).
``Listener`` runs on the store's loop (``Bridge.spawn``) and holds one connection
outside the pool, listening; each notification calls ``wake``, which only
schedules the service's claim on the proxy's loop (the claim itself is the
normal ``claim_next``, taken only when an engine of this box has a free slot).

Notifications are at most once and reach only connected listeners, so after
each (re)connect ``wake`` is called once (jobs queued while this box was deaf
are claimed then), and the service polls every second while a slot is free (the
fallback when one is lost). The connection is checked with ``SELECT 1`` every
``check_every`` seconds: a restarted server or a dead network path is noticed
and the connection made again, every ``retry_every`` seconds until it works.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg

log = logging.getLogger("gatekeeper.jobs")


class Listener:
    def __init__(
        self,
        dsn: str,
        channel: str,
        wake: Callable[[], None],
        *,
        timeout: float,
        check_every: float = 1.0,
        retry_every: float = 1.0,
    ):
        self._dsn = dsn
        self.channel = channel
        self._wake = wake
        self._timeout = timeout
        self._check_every = check_every
        self._retry_every = retry_every
        self.connects = 0  # how often the connection was made (tests, logs)

    def _notified(self, *_: object) -> None:
        self._wake()

    async def run(self) -> None:
        """Listen, reconnecting for ever (cancelled at the store's close)."""
        while True:
            con: asyncpg.Connection | None = None
            try:
                con = await asyncpg.connect(self._dsn, timeout=max(self._timeout, 5.0))
                await con.add_listener(self.channel, self._notified)
                self.connects += 1
                if self.connects > 1:
                    log.info("listening on %s again", self.channel)
                self._wake()  # what was queued while this box could not hear
                while True:
                    await asyncio.sleep(self._check_every)
                    async with asyncio.timeout(self._timeout):
                        await con.fetchval("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("listening on %s: %s: %s", self.channel, type(exc).__name__, exc)
            finally:
                if con is not None:
                    con.terminate()
            await asyncio.sleep(self._retry_every)
