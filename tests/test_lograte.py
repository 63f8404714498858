"""The refusal-line aggregator (issue #18 §8): which lines are logged, and the summaries.

Pure: ``RefusalLines`` over (second, reason, client) with an injected clock. Each row
is a sequence of refusals at given clock times, the limits, which of them are logged
one by one, and what ``flush`` says at the end (after the last second is over)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gatekeeper.observability.lograte import ReasonCount, RefusalLines, Summary


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Row:
    name: str
    events: list[tuple[float, str, str | None]]  # (clock, reason, client)
    per_client: int
    per_second: int
    logged: str  # one character per event: L logged, . counted only
    # (second, refused, unlogged, clients, {reason: (refused, unlogged, clients)})
    summaries: list[tuple[int, int, int, int, dict[str, tuple[int, int, int]]]]


ROWS = [
    Row("quiet: every line, no summary", [(100.1, "busy", "a"), (100.5, "busy", "b")], 5, 50,
        "LL", []),
    Row("the first few of one client, then counted", [(100.0 + i / 10, "busy", "a")
        for i in range(8)], 3, 50, "LLL.....", [(100, 8, 5, 1, {"busy": (8, 5, 1)})]),
    Row("per reason and client: another client or reason has its own few",
        [(100.1, "busy", "a"), (100.2, "busy", "a"), (100.3, "busy", "b"),
         (100.4, "queue_full", "a"), (100.5, "busy", "a")], 2, 50, "LLLL.",
        [(100, 5, 1, 2, {"busy": (4, 1, 2), "queue_full": (1, 0, 1)})]),
    Row("a new second starts a new allowance and closes the last one's summary",
        [(100.1, "busy", "a"), (100.2, "busy", "a"), (101.0, "busy", "a"), (101.9, "busy", "a")],
        1, 50, "L.L.", [(100, 2, 1, 1, {"busy": (2, 1, 1)}), (101, 2, 1, 1, {"busy": (2, 1, 1)})]),
    Row("a second with nothing unlogged has no summary",
        [(100.1, "busy", "a"), (100.2, "busy", "a"), (101.5, "busy", "a")], 1, 50, "L.L",
        [(100, 2, 1, 1, {"busy": (2, 1, 1)})]),
    Row("many clients: at most per_second lines in all",
        [(100.0 + i / 100, "busy", f"c{i}") for i in range(6)], 5, 4, "LLLL..",
        [(100, 6, 2, 6, {"busy": (6, 2, 6)})]),
    Row("per_client 0: only summaries", [(100.1, "blocked", "a"), (100.2, "blocked", None)],
        0, 50, "..", [(100, 2, 2, 2, {"blocked": (2, 2, 2)})]),
    Row("no client (None) is one client", [(100.1, "busy", None), (100.2, "busy", None)], 1, 50,
        "L.", [(100, 2, 1, 1, {"busy": (2, 1, 1)})]),
    Row("a gap of seconds: each summary names its own second",
        [(100.1, "busy", "a"), (100.2, "busy", "a"), (105.3, "cpu", "b"), (105.4, "cpu", "b")],
        1, 50, "L.L.", [(100, 2, 1, 1, {"busy": (2, 1, 1)}), (105, 2, 1, 1, {"cpu": (2, 1, 1)})]),
]  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_refusal_lines_table(row: Row) -> None:
    clock = Clock()
    agg = RefusalLines(clock)
    decided = ""
    summaries: list[Summary] = []
    for t, reason, client in row.events:
        clock.now = t
        summaries += agg.flush()  # what the access log does before each refusal
        decided += "L" if agg.refusal(reason, client, row.per_client, row.per_second) else "."
    assert decided == row.logged
    clock.now = row.events[-1][0] + 1.0  # the last second is over: the timer's flush
    summaries += agg.flush()
    assert agg.flush() == []  # each summary once
    want = [
        Summary(s, refused, unlogged, clients, tuple(
            ReasonCount(r, *counts) for r, counts in sorted(reasons.items())
        ))
        for s, refused, unlogged, clients, reasons in row.summaries
    ]  # fmt: skip
    assert summaries == want


def test_next_flush_is_the_end_of_a_second_with_unlogged_lines() -> None:
    clock = Clock()
    agg = RefusalLines(clock)
    assert agg.next_flush() is None
    clock.now = 100.3
    assert agg.refusal("busy", "a", 1, 50)
    assert agg.next_flush() is None  # everything so far was logged: nothing to summarise
    assert not agg.refusal("busy", "a", 1, 50)
    assert agg.next_flush() == 101.0
    clock.now = 100.99
    assert agg.flush() == []  # not over yet
    clock.now = 101.0
    (summary,) = agg.flush()
    assert summary.fields() == {
        "refused": 2,
        "unlogged": 1,
        "clients": 1,
        "reasons": {"busy": {"refused": 2, "unlogged": 1, "clients": 1}},
    }
    assert agg.next_flush() is None


def test_close_tells_the_current_second_at_once() -> None:
    clock = Clock()
    agg = RefusalLines(clock)
    clock.now = 100.2
    for _ in range(3):
        agg.refusal("busy", "a", 1, 50)
    (summary,) = agg.close()  # the second is not over: shutdown must not lose it
    assert (summary.second, summary.refused, summary.unlogged) == (100, 3, 2)
    assert agg.close() == [] and agg.next_flush() is None
