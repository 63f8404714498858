"""Restarts and reloads never double an engine (issue #18 §5): the pure part.

A generation a previous process left running (``Gate.hold_orphan``) occupies a
slot of its engine until the engine is known idle: its busy signal says idle,
or, with no signal, its grace has passed. Slots are counted by the engine's
address, so a reload renaming an engine keeping its URL keeps its lease counted.
The real processes are in ``test_restarts_e2e.py``.
"""

from __future__ import annotations

import pytest

from gatekeeper.core.admission import Gate, GateLimits, Rejection
from gatekeeper.core.engines import EngineSlots, Orphans, pick_engine
from gatekeeper.core.estimator import DurationEstimator
from gatekeeper.core.lease import Lease

URL1, URL2 = "http://127.0.0.1:8001", "http://127.0.0.1:8002"
A1 = EngineSlots("a", 1, URL1)
B1 = EngineSlots("b", 1, URL1)  # a renamed, same address
B2 = EngineSlots("b", 1, URL2)
C1 = EngineSlots("c", 2, URL1)


def _gate(*slots: EngineSlots) -> Gate:
    total = sum(e.max_in_flight for e in slots)
    return Gate(GateLimits(total, 30, engines=slots), DurationEstimator(100.0))


def _lease(result: Lease | Rejection) -> Lease:
    assert isinstance(result, Lease), result
    return result


# Each row: the engines, the orphans held (engine or None: unknown; until), the busy
# reports, the time of the admit, and the engine it gets (None: refused busy).
@pytest.mark.parametrize(
    ("slots", "orphans", "reports", "now", "picked"),
    [
        ((A1,), [("a", 10.0)], {}, 1.0, None),  # within its grace: no slot
        ((A1,), [("a", 10.0)], {}, 10.0, "a"),  # grace over, no signal: free
        ((A1,), [("a", 10.0)], {"a": True}, 50.0, None),  # says busy: held past the grace
        ((A1,), [("a", 10.0)], {"a": False}, 1.0, "a"),  # says idle: free at once
        ((A1,), [("a", 10.0)], {"a": None}, 1.0, None),  # no readable signal: the grace
        ((A1, B2), [("a", 10.0)], {}, 1.0, "b"),  # the other engine takes it
        ((A1, B2), [(None, 10.0)], {}, 1.0, None),  # engine unknown: every one held
        ((A1, B2), [(None, 10.0)], {"b": False}, 1.0, "b"),  # b known idle
        ((C1,), [("c", 10.0)], {}, 1.0, "c"),  # one orphan, two slots: one left
        ((C1,), [("c", 10.0), ("c", 10.0)], {}, 1.0, None),  # two orphans fill it
    ],
)
def test_an_orphaned_generation_holds_its_engine_until_known_idle(
    slots: tuple[EngineSlots, ...],
    orphans: list[tuple[str | None, float]],
    reports: dict[str, bool | None],
    now: float,
    picked: str | None,
) -> None:
    gate = _gate(*slots)
    for engine, until in orphans:
        gate.hold_orphan(engine, until)
    for engine, busy in reports.items():
        gate.engine_busy(engine, busy)
    result = gate.try_admit("r", now)
    if picked is None:
        assert isinstance(result, Rejection) and result.reason == "busy"
        assert gate.in_flight == 0
    else:
        assert _lease(result).engine == picked


def test_an_engine_reporting_busy_gets_no_slot_until_it_reports_idle() -> None:
    """The busy signal decides over the grace, both ways; the report that frees the
    engine says so (the waiting room is woken on it)."""
    gate = _gate(A1)
    gate.hold_orphan("a", 5.0)
    assert gate.engine_busy("a", True) is False
    for now in (1.0, 6.0, 600.0):
        assert gate.check(now) is not None and gate.in_flight == 0
    assert gate.engine_busy("a", False) is True  # freed: dispatch now
    lease = _lease(gate.try_admit("r", 601.0))
    assert gate.engine_busy("a", False) is False  # nothing more to free
    # Our own lease: the engine's busy signal is ours now, and is no orphan.
    gate.engine_busy("a", True)
    assert isinstance(gate.try_admit("r", 602.0), Rejection)
    lease.release()
    _lease(gate.try_admit("r", 603.0))
    assert gate.repeat_releases == 0


def test_an_engine_with_a_busy_rule_is_held_until_its_first_report() -> None:
    gate = _gate(A1)
    gate.hold_orphan("a", 5.0, signal=True)
    assert isinstance(gate.try_admit("r", 60.0), Rejection)  # grace over, no report yet
    assert gate.engine_busy("a", False) is True
    _lease(gate.try_admit("r", 61.0))


def test_an_idle_report_before_the_hold_means_the_orphan_ended() -> None:
    """The probe may answer before the restored jobs are read: idle since the stop."""
    gate = _gate(A1)
    gate.engine_busy("a", False)
    gate.hold_orphan("a", 5.0, signal=True)
    _lease(gate.try_admit("r", 1.0))


def test_orphans_expire_one_by_one_at_their_grace() -> None:
    held = Orphans()
    held.add(["k"], 5.0)
    held.add(["k"], 8.0)
    assert held.counts(1.0) == {"k": 2}
    assert held.counts(6.0) == {"k": 1}
    assert held.counts(8.0) == {} and not held


def test_slots_follow_the_address_not_the_name() -> None:
    """The count is by address: two names for one URL share its slots in a pick."""
    assert pick_engine((B1,), {URL1: 1}, {}) is None
    assert pick_engine((B2,), {URL1: 1}, {}) == "b"


@pytest.mark.parametrize(
    ("after", "admitted"),
    [
        ((B1,), False),  # renamed, same URL: its running lease still counts
        ((B2,), True),  # another URL: another engine, free
        ((A1, B2), True),  # a kept, b added: b is free
    ],
)
def test_a_reload_renaming_a_busy_engine_keeps_its_lease_counted(
    after: tuple[EngineSlots, ...], admitted: bool
) -> None:
    gate = _gate(A1)
    lease = _lease(gate.try_admit("r", 0.0))
    gate.limits = GateLimits(sum(e.max_in_flight for e in after), 30, engines=after)
    second = gate.try_admit("r", 1.0)
    assert isinstance(second, Lease) is admitted, second
    # /status lists a removed engine while its job runs; a renamed one is not "removed".
    assert gate.unlisted() == ([] if URL1 in {e.address for e in after} else ["a"])
    if not admitted:
        assert isinstance(second, Rejection) and second.reason == "busy"
        assert gate.in_flight_on("b") == 1 and gate.in_flight == 1
    lease.release()
    assert gate.in_flight_on("a") == 0
    if not admitted:  # released under the new name's address: the slot is free again
        assert gate.in_flight_on("b") == 0
        _lease(gate.try_admit("r", 2.0))
    assert gate.repeat_releases == 0


def test_a_renamed_engine_orphan_is_kept_by_address() -> None:
    """An orphan held on a before a reload renames a to b (same URL) still holds b."""
    gate = _gate(A1)
    gate.hold_orphan("a", 10.0)
    gate.limits = GateLimits(1, 30, engines=(B1,))
    assert isinstance(gate.try_admit("r", 1.0), Rejection)
    assert gate.engine_busy("b", False) is True
    assert _lease(gate.try_admit("r", 2.0)).engine == "b"
