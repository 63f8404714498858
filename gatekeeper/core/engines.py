"""Which engine a new generation runs on (issue #11 §1), and why none can take it (PURE).

The gate asks ``pick_engine`` in the same synchronous step that takes the slot:
an engine whose probe said down (for a queued job: not yet up, ``available``),
or that is at its own ``max_in_flight``, is skipped; of the rest the least loaded
wins, ties going to the file's order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gatekeeper.core.vocab import AdmitReason


@dataclass(frozen=True)
class EngineSlots:
    """One engine as the gate sees it: its name and how many generations it takes."""

    name: str
    max_in_flight: int


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

    Only one that is ``available`` by its probe verdict (see there), not one at its
    own limit; of the rest, the lowest in_flight/max_in_flight, then the file's order.
    """
    best: str | None = None
    best_load = 2.0
    for e in slots:
        n = in_flight.get(e.name, 0)
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
    if any(in_flight.get(e.name, 0) >= e.max_in_flight for e in live):
        return AdmitReason.BUSY
    return AdmitReason.ENGINE_DOWN
