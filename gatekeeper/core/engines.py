"""Which engine a new generation runs on (issue #11 §1), and why none can take it (PURE).

The gate asks ``pick_engine`` in the same synchronous step that takes the slot:
an engine whose probe said down (for a queued job: not yet up, ``available``),
or that is at its own ``max_in_flight``, is skipped; of the rest the least loaded
wins, ties going to the file's order.

An engine's slots are counted by its **address** (``EngineSlots.key``: its URL),
not by its name (issue #18 §5): a reload that renames an engine keeping its URL
keeps the generations running there counted against it.

``Orphans``: generations a previous gatekeeper process started and never saw
end (found ``running`` at start, after a ``kill -9``). The engine is still
computing them, so each occupies a slot of its engine until the engine is
known idle: its busy signal (``upstream.probe.busy``) says idle, or, where the
engine offers none, its grace (the interrupted job's expected remaining time)
has passed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gatekeeper.core.vocab import AdmitReason


@dataclass(frozen=True)
class EngineSlots:
    """One engine as the gate sees it: its name, how many generations it takes, and
    its address (the URL, by which its slots are counted; "": the name)."""

    name: str
    max_in_flight: int
    address: str = ""

    @property
    def key(self) -> str:
        """What the engine's running generations are counted by."""
        return self.address or self.name


def available(verdict: bool | None, *, probed_only: bool = False) -> bool:
    """May an engine with this probe verdict take a new generation?

    Down (``False``): never. Not yet probed (``None``): an admit request yes (a fresh
    gatekeeper must not refuse its first request), a queued job no (``probed_only``,
    issue #18 §5: nothing is dispatched to an engine before a probe has seen it up,
    so a queue restored at a start while the engine is still down waits for it
    instead of failing its oldest job in milliseconds).
    """
    return verdict is True or (verdict is None and not probed_only)


def pick_engine(
    slots: tuple[EngineSlots, ...],
    in_flight: Mapping[str, int],
    up: Mapping[str, bool | None],
    *,
    probed_only: bool = False,
) -> str | None:
    """The engine a new generation goes to, or None if no engine may take one.

    ``in_flight``: the slots taken, by engine key (``EngineSlots.key``). Only one that
    is ``available`` by its probe verdict (see there), not one at its own limit; of the
    rest, the lowest in_flight/max_in_flight, then the file's order.
    """
    best: str | None = None
    best_load = 2.0
    for e in slots:
        n = in_flight.get(e.key, 0)
        if not available(up.get(e.name), probed_only=probed_only) or n >= e.max_in_flight:
            continue
        load = n / e.max_in_flight
        if load < best_load:
            best, best_load = e.name, load
    return best


def no_engine_reason(
    slots: tuple[EngineSlots, ...],
    in_flight: Mapping[str, int],
    up: Mapping[str, bool | None],
    *,
    probed_only: bool = False,
) -> str:
    """Why ``pick_engine`` found none: ``busy`` if an engine that is up is full (its
    song's ETA is the honest wait), else ``engine_down`` (down, or not yet probed)."""
    live = [e for e in slots if available(up.get(e.name), probed_only=probed_only)]
    if any(in_flight.get(e.key, 0) >= e.max_in_flight for e in live):
        return AdmitReason.BUSY
    return AdmitReason.ENGINE_DOWN


class Orphans:
    """Generations left running on engines by a previous process, by engine key.

    Each one occupies a slot of its engine (``counts``) until the engine is known
    idle: ``report(key, False)`` (the engine's busy signal says idle) ends all of an
    engine's orphans at once; while the last report is ``True`` (busy) they stay,
    whatever their grace, and so they do before the first report of an engine that
    has a busy rule (``signal``); with no signal (no rule, or ``None``: an answer that
    does not carry it) each ends at its grace (``until``, on the caller's clock).
    """

    def __init__(self) -> None:
        self._until: dict[str, list[float]] = {}
        self._busy: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self._until)

    def add(self, keys: Iterable[str], until: float, signal: bool = False) -> None:
        """One orphaned generation on the engine of each of ``keys`` (several: its engine
        is not known, so every candidate is held). ``signal``: the engine has a busy
        rule, so it is presumed busy until its probe says otherwise."""
        for key in keys:
            if self._busy.get(key) is False:  # reported idle since the stop: it ended
                continue
            if signal:
                self._busy.setdefault(key, True)
            self._until.setdefault(key, []).append(until)

    def report(self, key: str, busy: bool | None) -> bool:
        """The engine's busy signal; True when it freed the engine's orphans."""
        if busy is None:
            self._busy.pop(key, None)
            return False
        self._busy[key] = busy
        if busy or key not in self._until:
            return False
        del self._until[key]
        return True

    def counts(self, now: float) -> dict[str, int]:
        """The orphans still held at ``now``, by engine key (the expired ones go)."""
        out: dict[str, int] = {}
        for key in list(self._until):
            held = self._until[key]
            if not self._busy.get(key, False):
                held = [u for u in held if u > now]
            if held:
                self._until[key] = held
                out[key] = len(held)
            else:
                del self._until[key]
        return out
