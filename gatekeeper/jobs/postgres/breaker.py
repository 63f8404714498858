"""The circuit breaker in front of the PostgreSQL store: when to stop asking a dead database.

Pure state over an injected clock (no I/O): the bridge (``bridge``) reports each
call's outcome and asks ``allow`` before the next one.

    closed ──failure──▶ open ──probe succeeds──▶ closed
                          ▲ │
                          └─┘ probe fails (stays open, next probe after ``probe_every``)

A failure is a call that timed out or lost its connection (not a refused
transition, not a unique violation: those are answers). One failure opens the
breaker: a store that did not answer within the call timeout is treated as
unreachable until proven otherwise, because every waiting call blocks the
proxy's event loop. While open, every call is refused at once (``allow`` is
False) and a background probe (``SELECT 1`` on the store's own loop, never on the
caller's) decides when it closes. Callers turn a refusal into ``503
store_unavailable`` with ``retry_after`` = the seconds until the next probe.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable


class Breaker:
    """Closed or open; thread-safe (the caller's loop and the store's thread both use it)."""

    def __init__(self, clock: Callable[[], float], probe_every: float = 1.0):
        self._clock = clock
        self.probe_every = probe_every
        self._lock = threading.Lock()
        self._opened: float | None = None
        self._why = ""
        self.opened_total = 0

    @property
    def is_open(self) -> bool:
        return self._opened is not None

    @property
    def why(self) -> str:
        """The failure that opened it ("" when closed)."""
        return self._why

    def allow(self) -> bool:
        """May a call go to the database now?"""
        return self._opened is None

    def failed(self, why: str) -> None:
        """A call timed out or lost its connection: open (the first failure's cause is kept)."""
        with self._lock:
            if self._opened is None:
                self._opened = self._clock()
                self._why = why
                self.opened_total += 1

    def probed(self, ok: bool) -> None:
        """The background probe's outcome: a success closes the breaker."""
        if ok:
            with self._lock:
                self._opened = None
                self._why = ""

    def retry_after(self) -> int:
        """Whole seconds a refused caller should wait (at least 1)."""
        return max(1, math.ceil(self.probe_every))
