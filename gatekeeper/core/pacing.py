"""Refusal pacing: a retry storm is answered at a bounded rate (issue #18 §8).

A client that is refused and asks again as soon as it hears the answer (a
frontend's retry loop, ``wrk``) costs the box one refusal per round trip: the
faster gatekeeper says no, the more often it is asked, and every "no" is CPU the
engine, which needs the whole machine, does not get. So past ``rate`` refusals a
second (after a ``burst``), a refusal is *answered later*: it waits for its turn
in a schedule of ``rate`` answers a second, at most ``max_delay``. A closed-loop
flood of N connections then costs about ``max(rate, N / max_delay)`` refusals a
second instead of as many as the CPU allows; an honest client hears the same
answer (its ``Retry-After`` is minutes) a second or two later.

The schedule is GCRA (the generic cell rate algorithm: one "theoretical arrival
time", no timers, O(1)): a refusal whose turn is more than ``max_delay`` away is
answered after ``max_delay`` without taking a turn, so the schedule never runs
further ahead than ``max_delay``. Pacing never applies while the connection
table is ``crowded`` (a paced refusal holds its connection: holding thousands
would crowd out clients that have not yet been heard).

Pure: the clock is passed in; the proxy's handler sleeps the delay.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["PacingRule", "RefusalPacer"]


class PacingRule(Protocol):
    """``limits.refusal_pacing``: ``rate`` refusals a second answered at once after a
    ``burst``; the rest within ``max_delay`` seconds. ``rate`` 0: never paced."""

    @property
    def rate(self) -> float: ...
    @property
    def burst(self) -> int: ...
    @property
    def max_delay(self) -> float: ...


class RefusalPacer:
    def __init__(self) -> None:
        self._tat = 0.0  # the theoretical time of the next turn
        self.paced = 0  # refusals answered later (gatekeeper_refusals_paced_total)
        self.capped = 0  # of those, answered after max_delay without a turn

    def delay(self, rule: PacingRule, now: float, *, crowded: bool = False) -> float:
        """Seconds to wait before answering one refusal decided at ``now``."""
        if rule.rate <= 0 or crowded:
            return 0.0
        interval = 1.0 / rule.rate
        tat = max(self._tat, now)
        wait = tat - now - rule.burst * interval
        if wait <= 0.0:
            self._tat = tat + interval
            return 0.0
        self.paced += 1
        if wait > rule.max_delay:
            self.capped += 1
            return rule.max_delay
        self._tat = tat + interval
        return wait

    def behind(self, rule: PacingRule, now: float) -> float:
        """The wait of a refusal decided at ``now`` (0: answered at once), without
        taking a turn."""
        if rule.rate <= 0:
            return 0.0
        wait = max(self._tat, now) - now - rule.burst / rule.rate
        return min(max(0.0, wait), rule.max_delay)
