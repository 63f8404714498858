"""What a ``/events`` watcher is told, and when (issue #18 §6). PURE: ``now`` is passed in.

A watcher hears every change of its job: its state, position, progress, result,
engine or cancel request, and every **ETA change**. An ETA that counts down with
the clock is no news (the client counts too); it is a change when the job's
``eta_seconds`` or ``starts_in_seconds`` is ``ETA_STEP`` or more away from the
value last sent minus the time since (a waiter whose slot overruns its expected
time, a free slot that is held, a queue that moved). News is coalesced: at most
one event every ``MIN_GAP`` seconds per watcher (2 a second), always the latest
view, so a change reaches the watcher within ``MIN_GAP`` of the moment it is seen.

``next_look`` says how long a watcher may sleep when nothing is announced: a
running job's changes are all announced (``Job.notify``: progress, head, end), a
queue change is announced (``JobService.any_change``); what only time changes is
a waiter's ETA, which can drift only once the schedule is no longer steady
(``Schedule.steady_for``), and then by at most one second per second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# At most one event per MIN_GAP seconds per watcher.
MIN_GAP = 0.5
# An ETA this far (seconds) from its countdown since the last event is a change.
ETA_STEP = 1.0
# The fields whose every change is news.
KEY_FIELDS = ("state", "position", "progress", "result", "engine", "cancel_requested")


@dataclass(frozen=True, slots=True)
class Told:
    """The last event sent to a watcher: its key fields, its ETAs, when."""

    key: tuple[Any, ...]
    eta: float | None
    starts_in: float | None
    at: float

    @classmethod
    def of(cls, view: dict[str, Any], now: float) -> Told:
        return cls(_key(view), view.get("eta_seconds"), view.get("starts_in_seconds"), now)


def _key(view: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(repr(view.get(f)) for f in KEY_FIELDS)


def drift(told: Told, view: dict[str, Any], now: float) -> float:
    """How far the view's ETAs are from the last ones sent, counted down to ``now``."""
    gone = max(0.0, now - told.at)
    out = 0.0
    for then, current in (
        (told.eta, view.get("eta_seconds")),
        (told.starts_in, view.get("starts_in_seconds")),
    ):
        if then is None or current is None:
            if then is not current:
                out = max(out, ETA_STEP)
            continue
        out = max(out, abs(float(current) - max(0.0, float(then) - gone)))
    return out


def is_news(told: Told | None, view: dict[str, Any], now: float) -> bool:
    """Whether ``view`` tells the watcher something the last event did not."""
    if told is None:
        return True
    return _key(view) != told.key or drift(told, view, now) >= ETA_STEP


def next_look(told: Told, view: dict[str, Any], now: float, steady_for: float) -> float | None:
    """Seconds until this view could be news by the clock alone; None: never (only an
    announced change can make it news: a running or ended job's ETA counts down)."""
    if view.get("state") != "queued":
        return None
    if steady_for > 0:
        return steady_for  # every ETA counts down until the schedule kinks
    return max(0.0, ETA_STEP - drift(told, view, now))
