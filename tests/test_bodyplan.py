"""The large-body rules of a shared queue (issue #21, ``jobs.bodyplan``), as tables: what
a box that claimed a job does before its engine is asked, what a fetch's outcome means,
and which taking boxes its claims skip after failed fetches."""

from __future__ import annotations

import pytest

from gatekeeper.jobs.bodyplan import BACKOFF_MAX, Backoff, Fetched, Step, judge, step

ME = "b"
MIB3 = 3 * 1024 * 1024


@pytest.mark.parametrize(
    ("body_size", "have_file", "body_box", "address", "expected"),
    [
        (0, False, "a", "http://a", Step.RUN),  # no body: nothing to fetch
        (MIB3, True, "a", "http://a", Step.RUN),  # in the database, written at the claim
        (MIB3, True, ME, None, Step.RUN),  # this box took it
        (MIB3, False, ME, "http://b", Step.LOST),  # this box took it and lost the file
        (MIB3, False, None, None, Step.LOST),  # one box's store: no other box to ask
        (MIB3, False, "a", None, Step.GIVE_BACK),  # the taking box has no address
        (MIB3, False, "a", "http://a", Step.FETCH),
    ],
)
def test_what_a_claiming_box_does_before_the_engine(
    body_size: int, have_file: bool, body_box: str | None, address: str | None, expected: Step
) -> None:
    """A body file here runs; one another box keeps is fetched (given back when that box
    has no address); this box's own lost body is lost."""
    got = step(body_size=body_size, have_file=have_file, body_box=body_box, me=ME, address=address)
    assert got is expected


@pytest.mark.parametrize(
    ("fetched", "expected"),
    [
        (Fetched(200, MIB3, MIB3, whole=True), Step.RUN),
        (Fetched(200, None, MIB3, whole=True), Step.RUN),  # chunked: counted
        # broken off mid-body, or a short body announced right: may come back
        (Fetched(200, MIB3, MIB3 // 2), Step.GIVE_BACK),
        (Fetched(200, None, MIB3 - 1, whole=True), Step.GIVE_BACK),
        (Fetched(200, None, MIB3 + 1, whole=True), Step.GIVE_BACK),
        # the taking box announces another length: its file is not the client's body
        (Fetched(200, MIB3 + 1, 0), Step.LOST),
        (Fetched(200, 10, 10, whole=True), Step.LOST),
        # the taking box itself says it has no such body: it never will
        (Fetched(410, reason="body_gone"), Step.LOST),
        (Fetched(410, reason=None), Step.GIVE_BACK),  # a 410 that is not the relay's
        (Fetched(404, reason="not_this_box"), Step.GIVE_BACK),  # another box at that address
        (Fetched(403, reason="forbidden"), Step.GIVE_BACK),
        (Fetched(503), Step.GIVE_BACK),
        (Fetched(None), Step.GIVE_BACK),  # refused, timed out
        (Fetched(200, MIB3, MIB3, whole=True, local_fault=True), Step.GIVE_BACK),
    ],
)
def test_what_a_fetch_came_to(fetched: Fetched, expected: Step) -> None:
    """Only exactly the recorded bytes, whole, run; a definitive "no such body" is lost;
    anything else gives the job back (never a partial body to the engine)."""
    assert judge(fetched, MIB3) is expected


def test_a_box_skips_a_failing_taking_box_for_a_doubling_while() -> None:
    """After a failed fetch a taking box is skipped 1 s, then 2, 4, ... at most
    BACKOFF_MAX; it returns when its time is up, and a fetch that works forgets its
    failures; other boxes are never skipped for it."""
    off = Backoff()
    assert off.skipped(0.0) == frozenset()
    assert off.failed("a", 0.0) == 1.0
    assert off.skipped(0.5) == {"a"}
    assert off.skipped(1.0) == frozenset()
    assert off.failed("a", 1.0) == 3.0
    assert off.failed("a", 3.0) == 7.0
    assert off.failed("c", 3.0) == 4.0
    assert off.skipped(5.0) == {"a"}
    for _ in range(20):
        until = off.failed("a", 100.0)
    assert until == 100.0 + BACKOFF_MAX
    off.worked("a")
    assert off.skipped(100.0) == frozenset()
    assert off.failed("a", 200.0) == 201.0
