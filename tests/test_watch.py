"""What a /events watcher is told and when (``jobs.watch``, pure: the clock is passed in),
and the O(slots) ``start_delay`` against the heap it replaces (issue #18 §6)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gatekeeper.jobs import watch
from gatekeeper.jobs.waitroom import start_delay, start_delays


def view(**changes: Any) -> dict[str, Any]:
    base = {
        "state": "queued",
        "position": 3,
        "progress": None,
        "result": None,
        "engine": None,
        "cancel_requested": False,
        "eta_seconds": 30.0,
        "starts_in_seconds": 20.0,
    }
    return {**base, **changes}


def test_the_first_view_and_every_key_change_are_news() -> None:
    told = watch.Told.of(view(), 100.0)
    assert watch.is_news(None, view(), 100.0)
    assert not watch.is_news(told, view(), 100.0)
    for change in (
        {"position": 2},
        {"state": "running"},
        {"progress": 0.25},
        {"engine": "a"},
        {"cancel_requested": True},
        {"result": {"status": 200, "bytes": 1}},
    ):
        assert watch.is_news(told, view(**change), 100.1), change


def test_an_eta_that_counts_down_is_no_news_one_that_moves_a_second_is() -> None:
    told = watch.Told.of(view(), 100.0)
    # 5 s later, both ETAs 5 s lower: the client's own countdown.
    assert not watch.is_news(told, view(eta_seconds=25.0, starts_in_seconds=15.0), 105.0)
    # 5 s later, unchanged: the predicted end moved 5 s.
    assert watch.is_news(told, view(), 105.0)
    assert not watch.is_news(told, view(eta_seconds=25.9, starts_in_seconds=15.9), 105.0)
    assert watch.is_news(told, view(eta_seconds=26.0, starts_in_seconds=15.0), 105.0)
    assert watch.is_news(told, view(eta_seconds=25.0, starts_in_seconds=14.0), 105.0)
    # Counted down past zero: 0 is the countdown's end, not news.
    low = watch.Told.of(view(state="running", eta_seconds=0.5, starts_in_seconds=0.0), 0.0)
    assert not watch.is_news(
        low, view(state="running", eta_seconds=0.0, starts_in_seconds=0.0), 9.0
    )


def test_next_look() -> None:
    told = watch.Told.of(view(), 100.0)
    # A steady schedule: nothing to look at before it kinks.
    assert watch.next_look(told, view(), 100.0, steady_for=7.5) == 7.5
    # Drifting: the drift grows at most a second per second.
    assert watch.next_look(told, view(), 100.0, steady_for=0.0) == pytest.approx(1.0)
    assert watch.next_look(told, view(), 100.4, steady_for=0.0) == pytest.approx(0.6)
    # A running or ended job's changes are all announced.
    assert watch.next_look(told, view(state="running"), 100.0, steady_for=0.0) is None


def test_start_delay_equals_the_heap() -> None:
    rng = random.Random(18)
    for _ in range(2000):
        slots = rng.randint(1, 5)
        expected = rng.choice([0.0, 1.0, 7.5, 300.0])
        running = [rng.uniform(-1, expected * 1.5 + 1) for _ in range(rng.randint(0, 7))]
        count = rng.randint(1, 40)
        heap = start_delays(running, slots, count, expected)
        for i in range(count):
            assert start_delay(running, slots, i, expected) == pytest.approx(heap[i]), (
                running,
                slots,
                expected,
                i,
            )
