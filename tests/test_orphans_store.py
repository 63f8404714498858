"""Restarts never double an engine (issue #18 §5): what is kept and read to know it.

The engine a job runs on is in its record (``mark_running``), an older database
gains the column when opened, the jobs found running at start hold their engine
(``jobs.orphans.hold_orphans``), and the probe reads an engine's busy signal
(``upstream.probe.busy``) out of its JSON answer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from test_jobstore import add

from gatekeeper.config import Engine, ProbeBusy, Upstream, load_config
from gatekeeper.core.admission import Gate, GateLimits, Rejection
from gatekeeper.core.engines import EngineSlots
from gatekeeper.core.estimator import DurationEstimator
from gatekeeper.jobs.orphans import hold_orphans
from gatekeeper.jobs.record import STORED
from gatekeeper.jobs.sqlite import SqliteJobStore
from gatekeeper.lifecycle.probe import busy_of, engine_busy

ENGINES = (Engine("a", "http://127.0.0.1:8001"), Engine("b", "http://127.0.0.1:8002"))


def _upstream(busy: str = "") -> Upstream:
    up = load_config("").upstream
    return replace(up, engines=ENGINES, probe=replace(up.probe, busy=ProbeBusy(busy, True)))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteJobStore]:
    s = SqliteJobStore.open(tmp_path / "state")
    yield s
    s.close()


def _gate(expected: float = 100.0) -> Gate:
    slots = tuple(EngineSlots(e.name, 1, e.url) for e in ENGINES)
    return Gate(GateLimits(2, 30, engines=slots), DurationEstimator(expected))


def test_the_engine_a_job_runs_on_is_recorded_and_survives_a_kill(tmp_path: Path) -> None:
    s = SqliteJobStore.open(tmp_path / "state")
    row = add(s)
    assert row.engine is None
    assert s.mark_running(row.id, 1000.0, "b").engine == "b"
    s.close()  # as a kill -9 leaves it: still running
    again = SqliteJobStore.open(tmp_path / "state")
    try:
        assert [(r.id, r.engine, r.started) for r in again.running()] == [(row.id, "b", 1000.0)]
    finally:
        again.close()


def test_an_older_database_gains_the_engine_column(tmp_path: Path) -> None:
    """A state dir written before the engine was recorded opens, its rows read None."""
    state = tmp_path / "state"
    s = SqliteJobStore.open(state)
    row = add(s)
    s.mark_running(row.id, 1000.0, "a")
    s.close()
    db = sqlite3.connect(state / "jobs.sqlite3")
    db.execute("ALTER TABLE jobs DROP COLUMN engine")
    db.commit()
    db.close()
    again = SqliteJobStore.open(state)
    try:
        assert [r.engine for r in again.running()] == [None]
        other = add(again)
        assert again.mark_running(other.id, 1001.0, "b").engine == "b"
    finally:
        again.close()
    assert "engine" in {f.name for f in STORED}


@pytest.mark.parametrize(
    ("engine", "started", "now", "free"),
    [
        ("a", 1000.0, 1.0, ["b"]),  # a is computing it: b takes the next
        ("a", 1000.0, 70.5, ["b"]),  # 30 s of its 100 s ran: 70 s of grace left
        ("a", 1000.0, 71.0, ["a", "b"]),
        ("a", 900.0, 1.0, ["a", "b"]),  # it ran longer than expected: no grace left
        ("gone", 1000.0, 1.0, []),  # its engine is not listed: every engine held
        (None, 1000.0, 1.0, []),  # an older record: which engine is not known
    ],
)
def test_jobs_running_at_start_hold_their_engine_for_its_remaining_time(
    store: SqliteJobStore, engine: str | None, started: float, now: float, free: list[str]
) -> None:
    row = add(store)
    store.mark_running(row.id, started, engine)
    gate = _gate(expected=100.0)
    hold_orphans(gate, _upstream(), store.running(), 1.0, 1030.0)
    took = []
    while not isinstance(lease := gate.try_admit("r", now), Rejection):
        took.append(lease.engine)
    assert sorted(took) == free


@pytest.mark.parametrize(
    ("report", "free"),
    [
        ("none yet", ["b"]),  # a busy rule and no answer yet: held past its grace
        (None, ["a", "b"]),  # its answer does not carry the signal: the grace decides
        (True, ["b"]),
        (False, ["a", "b"]),
    ],
)
def test_with_a_busy_rule_the_engine_waits_for_its_report(
    store: SqliteJobStore, report: bool | str | None, free: list[str]
) -> None:
    row = add(store)
    store.mark_running(row.id, 1000.0, "a")
    gate = _gate(expected=100.0)
    hold_orphans(gate, _upstream("/busy"), store.running(), 1.0, 1030.0)
    if report != "none yet":
        assert isinstance(report, bool | None)
        gate.engine_busy("a", report)
    took = []
    while not isinstance(lease := gate.try_admit("r", 500.0), Rejection):  # grace long over
        took.append(lease.engine)
    assert sorted(took) == free


@pytest.mark.parametrize(
    ("rule", "body", "busy"),
    [
        (ProbeBusy("/busy", True), b'{"busy": true}', True),
        (ProbeBusy("/busy", True), b'{"busy": false}', False),
        (ProbeBusy("/busy", True), b'{"busy": 1}', False),  # true is not 1
        (ProbeBusy("/n", 1), b'{"n": 1.0}', True),  # numbers as numbers
        (ProbeBusy("/n", 1), b'{"n": true}', False),
        (ProbeBusy("/state", "generating"), b'{"state": "generating"}', True),
        (ProbeBusy("/state", "generating"), b'{"state": "idle"}', False),
        (ProbeBusy("/e/0/a~1b", True), b'{"e": [{"a/b": true}]}', True),  # RFC 6901
        (ProbeBusy("/busy", True), b'{"other": 1}', None),  # no such pointer: no signal
        (ProbeBusy("/busy", True), b"<html>ok</html>", None),  # not JSON: no signal
        (ProbeBusy("/busy/x", True), b'{"busy": true}', None),
        (ProbeBusy("", True), b'{"busy": true}', None),  # no rule
    ],
)
def test_the_busy_rule_reads_the_probe_answer(rule: ProbeBusy, body: bytes, busy: bool) -> None:
    assert busy_of(rule, body) is busy


def test_probe_busy_is_configured_under_upstream_probe() -> None:
    cfg = load_config("upstream:\n  probe:\n    busy: {pointer: /engine/busy, equals: yes}\n")
    assert cfg.upstream.probe.busy == ProbeBusy("/engine/busy", True)
    assert load_config("").upstream.probe.busy == ProbeBusy("", True)  # off by default


def test_an_idle_report_wakes_the_waiting_room_once() -> None:
    """The probe's idle report frees the orphan's slot and dispatches at once."""
    gate = _gate()
    woken: list[None] = []
    gate.on_free = lambda: woken.append(None)
    gate.hold_orphan("a", 1e9, signal=True)
    engine_busy(gate, "a", True)
    engine_busy(gate, "b", False)  # nothing held there: nothing to wake
    assert woken == []
    engine_busy(gate, "a", False)
    engine_busy(gate, "a", False)
    assert len(woken) == 1
