"""Which engine a new generation runs on (issue #11 §1), and why none can take it (PURE).

The gate asks ``pick_engine`` in the same synchronous step that takes the slot:
an engine whose probe said down, or that is at its own ``max_in_flight``, is
skipped; of the rest the least loaded wins, ties going to the file's order.
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


def pick_engine(
    slots: tuple[EngineSlots, ...],
    in_flight: Mapping[str, int],
    up: Mapping[str, bool | None],
) -> str | None:
    """The engine a new generation goes to, or None if no engine may take one.

    Not one whose probe said down (``None``, no answer yet, is not "down": a fresh
    gatekeeper must not refuse its first request), not one at its own limit; of the
    rest, the lowest in_flight/max_in_flight, then the file's order.
    """
    best: str | None = None
    best_load = 2.0
    for e in slots:
        n = in_flight.get(e.name, 0)
        if up.get(e.name) is False or n >= e.max_in_flight:
            continue
        load = n / e.max_in_flight
        if load < best_load:
            best, best_load = e.name, load
    return best


def no_engine_reason(
    slots: tuple[EngineSlots, ...],
    in_flight: Mapping[str, int],
    up: Mapping[str, bool | None],
) -> str:
    """Why ``pick_engine`` found none: ``busy`` if an engine that is up is full (its
    song's ETA is the honest wait), else ``engine_down``."""
    live = [e for e in slots if up.get(e.name) is not False]
    if any(in_flight.get(e.name, 0) >= e.max_in_flight for e in live):
        return AdmitReason.BUSY
    return AdmitReason.ENGINE_DOWN
