"""The chaos driver (tests/chaos.py) against the real CLI and engine-sim: a fast, seeded run."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from chaos import (
    ACTIONS,
    Chaos,
    InvariantViolation,
    Observation,
    Sample,
    check_invariants,
    metric_sum,
    parse_metrics,
)
from support import small_tmpfs

SEED = int(os.environ.get("GATEKEEPER_CHAOS_SEED", "20261203"))
PHASES = [("finish", 1), ("cancel", 1), ("finish", 2), ("cancel", 2), ("mixed", 1)]
# Two one-slot engines (issue #11 §1): the limit is always their sum, 2.
TWO_ENGINE_PHASES = ["finish", "cancel", "mixed"]
# Exchanges per phase of the storage-fault run (GATEKEEPER_CHAOS_EXCHANGES for a long run).
STORAGE_EXCHANGES = int(os.environ.get("GATEKEEPER_CHAOS_EXCHANGES", "50"))
# A fault every 0.5-1.5 s (the long runs of bench/chaos.py: 1-3 s): the short phases here
# see as many engine kills and reloads as phases twice as long did; volume is bench/'s.
FAULT_GAP = (0.5, 1.5)


def _assert_chaos_happened(c: Chaos, *, kills_and_reloads: bool = True) -> None:
    """The run exercised what its docstring claims: every hostile action of the driver
    ran (its decks guarantee it), and, unless told otherwise, an engine was killed and the
    rules reloaded (a run without them proved nothing)."""
    ran: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    for r in c.results:
        faults.update(r.faults)
        for name, outcomes in r.outcomes.items():
            ran[name] += sum(outcomes.values())
    assert not set(c.actions) - set(ran), f"actions never run: {set(c.actions) - set(ran)}"
    if kills_and_reloads:
        reloads = faults["sighup"] + faults["post_reload"] + faults["toggle_mode"]
        assert faults["kill_engine"] > 0 and reloads > 0, (c.seed, faults)


@pytest.mark.slow
async def test_chaos_fast_run(tmp_path: Path) -> None:
    """Hostile clients, engine kills and reloads in both modes: no leak, no over-admission."""
    async with Chaos(tmp_path, SEED, fault_gap=FAULT_GAP) as c:
        try:
            for mode, limit in PHASES:
                await c.phase(40, mode, limit)  # volume: the long run (bench/chaos.py)
            await c.sigterm_phase()
        finally:
            print("\n" + c.summary())
    _assert_chaos_happened(c)


@pytest.mark.slow
async def test_chaos_two_engines_fast_run(tmp_path: Path) -> None:
    """Two engine-sims in upstream.engines, a random one killed and restarted, reloads,
    hostile clients: each engine within its one slot, per-engine counts add up."""
    async with Chaos(tmp_path, SEED, engines=2, fault_gap=FAULT_GAP) as c:
        try:
            for mode in TWO_ENGINE_PHASES:
                await c.phase(35, mode)
            await c.sigterm_phase()
        finally:
            print("\n" + c.summary())
    _assert_chaos_happened(c)


@pytest.mark.slow
async def test_chaos_storage_faults_fast_run(tmp_path: Path) -> None:
    """The state directory on a 16 MiB tmpfs filled and freed at random (issue #18 §1),
    held jobs with bodies on a queue route, with the usual hostile clients, engine kills
    and reloads: no leak, no over-admission, no bare 500, the fresh generation served."""
    with small_tmpfs(tmp_path / "fs", "16m") as fs:
        async with Chaos(tmp_path, SEED, storage=fs, fault_gap=FAULT_GAP) as c:
            try:
                for mode in ("finish", "cancel"):
                    await c.phase(STORAGE_EXCHANGES, mode)
                await c.sigterm_phase()
            finally:
                print("\n" + c.summary())
    outcomes = sum((r.outcomes.get("queued_job", Counter()) for r in c.results), Counter())
    assert outcomes["200"] > 0, outcomes  # jobs were served between the faults
    assert sum(r.faults["disk_full"] for r in c.results) > 0
    _assert_chaos_happened(c, kills_and_reloads=False)  # most faults here fill the disk


def _observation(**change: object) -> Observation:
    status = {
        "in_flight": 0,
        "running": [],
        "counts": {"admitted": 3, "rejected": 2},
        "rejections_by_reason": {"busy": 2},
    }
    metrics = parse_metrics(
        "gatekeeper_in_flight 0\n"
        'gatekeeper_requests_total{route="generate",outcome="admitted"} 3\n'
        'gatekeeper_requests_total{route="generate",outcome="rejected"} 2\n'
        'gatekeeper_rejections_total{route="generate",reason="busy"} 2\n'
        'gatekeeper_engine_admitted_total{engine="default"} 3\n'
    )
    fields: dict[str, Any] = {
        "status": status,
        "metrics": metrics,
        "engine_peak_active": 1,
        "engine_requests": {"POST /generate": 3},
        "admitted_delta": {"generate": 3},
        "sampled_in_flight_max": 1,
        "max_in_flight": 1,
        "mode": "finish",
        "fresh_generation": 200,
    }
    fields.update(change)
    return Observation(**fields)


def test_checker_passes_a_clean_observation() -> None:
    """A quiescent, consistent observation breaks no invariant."""
    assert check_invariants(_observation()) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"status_in_flight": 1}, "/status in_flight is 1 at quiescence"),
        ({"metrics_in_flight": 1}, "gatekeeper_in_flight is 1.0 at quiescence"),
        ({"running": [{"route": "generate"}]}, "still lists running"),
        ({"counts": {"admitted": 4, "rejected": 2}}, "counts[admitted]=4"),
        ({"rejections_by_reason": {"busy": 1}}, "rejections[busy]=1"),
        ({"sampled_in_flight_max": 2}, "in_flight reached 2 > max_in_flight 1"),
        ({"engine_requests": {"POST /generate": 4}}, "engine received 4 POST /generate"),
        ({"engine_peak_active": 2}, "engine ran 2 generations at once"),
        ({"fresh_generation": 503}, "fresh generation after quiescence got 503"),
    ],
)
def test_checker_fails_on_each_leak(change: dict[str, Any], expected: str) -> None:
    """Each injected leak or over-admission is reported: a checker that cannot fail is a defect."""
    obs = _observation()
    status = dict(obs.status)
    metrics = dict(obs.metrics)
    fields: dict[str, Any] = {}
    for key, value in change.items():
        if key == "status_in_flight":
            status["in_flight"] = value
        elif key == "metrics_in_flight":
            metrics[("gatekeeper_in_flight", frozenset())] = float(value)
        elif key in status:
            status[key] = value
        else:
            fields[key] = value
    bad = check_invariants(replace(obs, status=status, metrics=metrics, **fields))
    assert any(expected in b for b in bad), bad


def test_checker_tolerates_engine_peak_in_cancel_mode() -> None:
    """cancel mode: the engine computing abandoned songs is by design, not over-admission."""
    assert check_invariants(_observation(mode="cancel", engine_peak_active=3)) == []


@pytest.mark.slow
async def test_driver_catches_a_gatekeeper_admitting_two(tmp_path: Path) -> None:
    """A gatekeeper configured with max_in_flight 2, held to 1: the phase raises with the seed."""
    only_songs = {"gen_ok": ACTIONS["gen_ok"]}
    async with Chaos(
        tmp_path, SEED, concurrency=4, gatekeeper_max_in_flight=2, actions=only_songs, faults=False
    ) as c:
        with pytest.raises(InvariantViolation, match=f"seed {SEED}") as err:
            await c.phase(40, "finish")
    assert "> max_in_flight 1" in str(err.value)


def _two_engines(**change: object) -> Observation:
    """A clean observation of a two-engine phase (gpu0 admitted 2, gpu1 1)."""
    metrics = parse_metrics(
        "gatekeeper_in_flight 0\n"
        'gatekeeper_requests_total{route="generate",outcome="admitted"} 3\n'
        'gatekeeper_requests_total{route="generate",outcome="rejected"} 2\n'
        'gatekeeper_rejections_total{route="generate",reason="busy"} 2\n'
        'gatekeeper_engine_admitted_total{engine="gpu0"} 2\n'
        'gatekeeper_engine_admitted_total{engine="gpu1"} 1\n'
    )
    busy = Sample(2, {"gpu0": (1, 1), "gpu1": (1, 1)}, 2.0, {"gpu0": 1.0, "gpu1": 1.0})
    idle = Sample(0, {"gpu0": (0, 1), "gpu1": (0, 1)}, 0.0, {"gpu0": 0.0, "gpu1": 0.0})
    fields: dict[str, Any] = {
        "metrics": metrics,
        "max_in_flight": 2,
        "sampled_in_flight_max": 2,
        "engine_slots": {"gpu0": 1, "gpu1": 1},
        "engine_peaks": {"gpu0": 1, "gpu1": 1},
        "engine_received": {"gpu0": 2, "gpu1": 1},
        "engine_admitted_delta": {"gpu0": 2, "gpu1": 1},
        "samples": (idle, busy, idle),
    }
    fields.update(change)
    return _observation(**fields)


def test_checker_passes_a_clean_two_engine_observation() -> None:
    """Two engines, each within its slot, counts adding up: no invariant broken."""
    assert check_invariants(_two_engines()) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"engine_peaks": {"gpu0": 2, "gpu1": 1}}, "engine gpu0 ran 2 generations at once"),
        (
            {"engine_received": {"gpu0": 2, "gpu1": 2}},
            "engine gpu1 received 2 generations but was admitted 1",
        ),
        (
            {"samples": (Sample(2, {"gpu0": (2, 1), "gpu1": (0, 1)}, 2.0, {"gpu0": 2.0}),)},
            "/status engine gpu0 in_flight 2 > max_in_flight 1",
        ),
        (
            {"samples": (Sample(1, {"gpu0": (1, 1), "gpu1": (1, 1)}, 1.0, {"gpu0": 1.0}),)},
            "/status engines' in_flight sum 2 != in_flight 1",
        ),
        (
            {"samples": (Sample(1, {"gpu0": (1, 1)}, 1.0, {"gpu0": 1.0, "gpu1": 1.0}),)},
            "gatekeeper_engine_in_flight sum 2.0 != gatekeeper_in_flight 1.0",
        ),
        (
            {"metric": ("gatekeeper_engine_admitted_total", {"engine": "gpu1"}, 0.0)},
            "admitted requests 3 != sum of gatekeeper_engine_admitted_total 2",
        ),
    ],
)
def test_checker_fails_on_each_engine_leak(change: dict[str, Any], expected: str) -> None:
    """Each per-engine over-admission or miscount is reported (issue #11 §1)."""
    obs = _two_engines()
    if "metric" in change:
        name, labels, value = change.pop("metric")
        metrics = dict(obs.metrics)
        metrics[(name, frozenset(labels.items()))] = value
        change["metrics"] = metrics
    bad = check_invariants(replace(obs, **change))
    assert any(expected in b for b in bad), bad


def test_checker_tolerates_an_engine_peak_in_cancel_mode() -> None:
    """cancel mode: an engine computing an abandoned song next to a new one is by design."""
    assert check_invariants(_two_engines(mode="cancel", engine_peaks={"gpu0": 2})) == []


@pytest.mark.slow
async def test_chaos_two_identities_never_cross(tmp_path: Path) -> None:
    """Issue #18 §3 under chaos: alice and bob send identical requests (held and async,
    some deleted at once) while generations, engine kills and reloads go on; requests of
    one identity do coalesce, and no answer carries the other identity's id or answer."""
    actions = {k: ACTIONS[k] for k in ("identities", "gen_ok", "hang")}
    actions["identities"] = (ACTIONS["identities"][0], 6)
    async with Chaos(tmp_path, SEED, actions=actions, fault_gap=FAULT_GAP) as c:
        try:
            for mode in ("finish", "cancel"):
                await c.phase(50, mode)
            coalesced = metric_sum(await c.metrics(), "gatekeeper_coalesced_total")
            assert coalesced > 0, "no request was coalesced: the run proved nothing"
            outcomes = Counter[str]()
            for r in c.results:
                outcomes.update(r.outcomes.get("identities", {}))
            assert outcomes["ok"] > 0 and "CROSSED" not in outcomes, outcomes
        finally:
            print("\n" + c.summary())
    _assert_chaos_happened(c)


def test_checker_counts_queue_jobs_started_as_admitted() -> None:
    """A queue route's generation is counted when its job starts (its request may have
    waited): 3 admitted + 2 queue jobs started = 5 on the engines, and a 6th is a leak."""
    extra = (
        'gatekeeper_requests_total{route="shared",outcome="queued"} 2\n'
        'gatekeeper_jobs_total{route="shared",state="running"} 2\n'
    )
    for on_engines, ok in ((5, True), (6, False)):
        metrics = parse_metrics(
            'gatekeeper_requests_total{route="generate",outcome="admitted"} 3\n'
            + extra
            + f'gatekeeper_engine_admitted_total{{engine="default"}} {on_engines}\n'
        )
        bad = check_invariants(_observation(metrics=metrics))
        leak = any("gatekeeper_engine_admitted_total" in b for b in bad)
        assert leak is not ok, bad
