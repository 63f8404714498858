"""Reload epochs: which generations of the rules a running request may still use.

A reload (``reload.Reloader``) starts a new epoch; the pools the new rules no
longer hold are closed once ``RuntimeUsage`` says no request of their epoch or
older is still open, so a 15-minute generation never loses its connection.
"""

from __future__ import annotations

import asyncio


class RuntimeUsage:
    """Which generations of the rules may still be in use by a running request.

    Every proxied request is counted under the *epoch* (number of reloads) current
    when it entered; the handler's ``Runtime`` snapshot is taken after that, so it
    is never older than its epoch. Hence the pools of epoch ``e`` are unused as
    soon as no request of an epoch ``<= e`` is still open — whatever the handler
    awaits before or after its snapshot.
    """

    def __init__(self) -> None:
        self.epoch = 0
        self._open: dict[int, int] = {}
        self._changed = asyncio.Event()

    def enter(self) -> int:
        e = self.epoch
        self._open[e] = self._open.get(e, 0) + 1
        return e

    def join(self, epoch: int) -> None:
        """One more holder of ``epoch`` (a task that outlives the request's handler)."""
        self._open[epoch] = self._open.get(epoch, 0) + 1

    def leave(self, epoch: int) -> None:
        left = self._open[epoch] - 1
        if left:
            self._open[epoch] = left
        else:
            del self._open[epoch]
            self._changed.set()
            self._changed = asyncio.Event()

    def advance(self) -> int:
        """Start a new epoch (a reload swapped the runtime); returns the one that ended."""
        self.epoch += 1
        return self.epoch - 1

    def open_through(self, epoch: int) -> int:
        """Requests still open that entered at ``epoch`` or before."""
        return sum(n for e, n in self._open.items() if e <= epoch)

    async def wait_idle_through(self, epoch: int) -> None:
        while self.open_through(epoch):
            await self._changed.wait()
