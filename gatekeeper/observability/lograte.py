"""Which refusal lines the access log writes under a flood (issue #18 §8), decided purely.

A refused request (decision ``rejected`` or ``blocked``) is answered from a
prebuilt body; its access line adds a formatted write per refusal, so at INFO a
flood of refusals is slower to answer and a flood into the journal. So refusal
lines are aggregated per second of the injected clock: within one second, the
first ``per_client`` refusals of one (reason, client) are logged one by one as
before, and at most ``per_second`` in all; every other one is only counted.
When a second in which something was left unlogged is over, ``flush`` hands
back one ``Summary`` of that second: how many were refused, how many of them
went unlogged and from how many clients, per reason. The metrics count every
refusal elsewhere; this only decides lines.

Nothing here logs, reads a config or arms a timer: the access log
(``proxy.accesslog``) is the adapter, and calls ``flush`` before each refusal and
from a timer at ``next_flush()``, so a summary comes out when traffic stops.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReasonCount:
    """One reason's refusals in a summarised second."""

    reason: str
    refused: int  # refusals with this reason in the second, logged or not
    unlogged: int  # of which counted here instead of logged one by one
    clients: int  # distinct clients among the refused


@dataclass(frozen=True, slots=True)
class Summary:
    """One second [second, second + 1) of the clock in which lines went unlogged."""

    second: int
    refused: int
    unlogged: int
    clients: int  # distinct clients over every reason
    reasons: tuple[ReasonCount, ...]  # by reason name

    def fields(self) -> dict[str, object]:
        """The summary line's structured fields (nested per reason)."""
        return {
            "refused": self.refused,
            "unlogged": self.unlogged,
            "clients": self.clients,
            "reasons": {
                r.reason: {"refused": r.refused, "unlogged": r.unlogged, "clients": r.clients}
                for r in self.reasons
            },
        }


class _Tally:
    """One reason's counts in the current second."""

    __slots__ = ("clients", "logged")

    def __init__(self) -> None:
        self.clients: dict[str, int] = {}  # client -> refusals
        self.logged = 0


class RefusalLines:
    """The per-second counts and the decision; ``clock`` gives seconds (the loop clock)."""

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self._second: int | None = None
        self._reasons: dict[str, _Tally] = {}
        self._logged = 0
        self._unlogged = 0
        self._ready: list[Summary] = []

    def refusal(self, reason: str, client: str | None, per_client: int, per_second: int) -> bool:
        """Count one refusal; True when its line is to be logged one by one."""
        self._roll(math.floor(self._clock()))
        tally = self._reasons.get(reason)
        if tally is None:
            tally = self._reasons[reason] = _Tally()
        key = client if client is not None else "-"
        n = tally.clients.get(key, 0) + 1
        tally.clients[key] = n
        if n <= per_client and self._logged < per_second:
            self._logged += 1
            tally.logged += 1
            return True
        self._unlogged += 1
        return False

    def flush(self) -> list[Summary]:
        """The summaries of the seconds that are over, once each, oldest first."""
        self._roll(math.floor(self._clock()))
        ready, self._ready = self._ready, []
        return ready

    def close(self) -> list[Summary]:
        """Every summary left, the current second's too (at shutdown); counts start over."""
        self._roll(math.floor(self._clock()))
        if self._unlogged:
            assert self._second is not None
            self._ready.append(self._summary(self._second))
        self._second = None
        self._reasons = {}
        self._logged = self._unlogged = 0
        ready, self._ready = self._ready, []
        return ready

    def next_flush(self) -> float | None:
        """When the current second, with lines left unlogged, is over; None: nothing to tell."""
        if self._second is None or not self._unlogged:
            return None
        return float(self._second + 1)

    def _roll(self, now: int) -> None:
        if now == self._second:
            return
        if self._unlogged:
            assert self._second is not None
            self._ready.append(self._summary(self._second))
        self._second = now
        self._reasons = {}
        self._logged = self._unlogged = 0

    def _summary(self, second: int) -> Summary:
        reasons = []
        everyone: set[str] = set()
        for name in sorted(self._reasons):
            tally = self._reasons[name]
            everyone.update(tally.clients)
            refused = sum(tally.clients.values())
            reasons.append(ReasonCount(name, refused, refused - tally.logged, len(tally.clients)))
        refused = self._logged + self._unlogged
        return Summary(second, refused, self._unlogged, len(everyone), tuple(reasons))
