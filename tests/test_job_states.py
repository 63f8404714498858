"""A job's state machine (jobs/states.py): the transition table and every ending, as tables."""

from __future__ import annotations

import pytest

from gatekeeper.core.errors import (
    UpstreamBusy,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gatekeeper.core.vocab import FINAL_STATES, ErrorKind, JobState
from gatekeeper.jobs.states import (
    ALL_ENDINGS,
    KEPT_STATES,
    LIVE_STATES,
    TRANSITIONS,
    Ending,
    Endings,
    RetryAfter,
    allowed,
    mid_body,
    sources,
    upstream_refused,
)

Q, R, D, F, C, E = (
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.DONE,
    JobState.FAILED,
    JobState.CANCELLED,
    JobState.EXPIRED,
)

# Every (before, after) pair: allowed or not. The whole 6x6 square, so a change to the
# table changes this test.
SQUARE = {
    Q: {Q: 0, R: 1, D: 0, F: 1, C: 1, E: 1},
    R: {Q: 1, R: 0, D: 1, F: 1, C: 1, E: 1},
    D: {Q: 0, R: 0, D: 0, F: 0, C: 0, E: 1},
    F: {Q: 0, R: 0, D: 0, F: 0, C: 0, E: 1},
    C: {Q: 0, R: 0, D: 0, F: 0, C: 0, E: 1},
    E: {Q: 0, R: 0, D: 0, F: 0, C: 0, E: 0},
}


def test_every_state_has_a_row() -> None:
    """The table names every JobState, and nothing else."""
    assert set(TRANSITIONS) == set(JobState)


@pytest.mark.parametrize(
    ("before", "after", "ok"),
    [(b, a, bool(ok)) for b, row in SQUARE.items() for a, ok in row.items()],
)
def test_transition_table(before: JobState, after: JobState, ok: bool) -> None:
    """Each change is allowed exactly as the square says."""
    assert allowed(before, after) is ok


def test_a_final_state_only_expires_and_expired_is_the_end() -> None:
    """done/failed/cancelled only go to expired; expired goes nowhere; live states are
    queued and running; the kept ones are the final ones but expired."""
    for s in FINAL_STATES - {E}:
        assert TRANSITIONS[s] == {E}
    assert TRANSITIONS[E] == frozenset()
    assert set(LIVE_STATES) == set(JobState) - FINAL_STATES
    assert set(KEPT_STATES) == FINAL_STATES - {E}


@pytest.mark.parametrize(
    ("after", "froms"),
    [(Q, (R,)), (R, (Q,)), (D, (R,)), (F, (Q, R)), (C, (Q, R)), (E, (Q, R, D, F, C))],
)
def test_sources(after: JobState, froms: tuple[JobState, ...]) -> None:
    """sources() lists the states a job may enter ``after`` from (what the store checks)."""
    assert sources(after) == froms


# name, final state, reason code, held client's status, Retry-After, whole answer
ENDINGS = [
    ("DONE", D, None, None, RetryAfter.NONE, True),
    ("UPSTREAM_STATUS", F, "upstream_status", None, RetryAfter.NONE, True),
    ("UPSTREAM_UNAVAILABLE", F, "upstream_unavailable", 502, RetryAfter.NONE, False),
    ("UPSTREAM_BUSY", F, "upstream_busy", 503, RetryAfter.NONE, False),
    ("UPSTREAM_TIMEOUT", F, "upstream_timeout", 504, RetryAfter.NONE, False),
    ("UPSTREAM_TIMEOUT_MID_BODY", F, "upstream_timeout_mid_body", None, RetryAfter.NONE, False),
    ("UPSTREAM_PROTOCOL_MID_BODY", F, "upstream_protocol_mid_body", None, RetryAfter.NONE, False),
    ("QUEUE_TIMEOUT", F, "queue_timeout", 503, RetryAfter.QUEUE, False),
    ("DRAINING", C, "draining", 503, RetryAfter.DEFAULT, False),
    ("INTERRUPTED", F, "interrupted", 503, RetryAfter.DEFAULT, False),
    ("INTERNAL", F, "internal", 500, RetryAfter.NONE, False),
    ("STORAGE_ERROR", F, "storage_error", 503, RetryAfter.DEFAULT, False),
    ("CLIENT_GONE", C, "client_gone", 499, RetryAfter.NONE, False),
    ("DELETED_WAITING", C, "deleted", 409, RetryAfter.NONE, False),
    ("DELETED_RUNNING", C, "deleted", 499, RetryAfter.NONE, False),
    ("RESTART", C, "restart", None, RetryAfter.NONE, False),
    ("BODY_LOST", F, "body_lost", None, RetryAfter.NONE, False),
    ("EXPIRED_KEEP", E, "keep", None, RetryAfter.NONE, False),
    ("EXPIRED_MAX_BYTES", E, "max_bytes", None, RetryAfter.NONE, False),
]


@pytest.mark.parametrize(("name", "state", "reason", "status", "retry", "whole"), ENDINGS)
def test_ending_table(
    name: str,
    state: JobState,
    reason: str | None,
    status: int | None,
    retry: RetryAfter,
    whole: bool,
) -> None:
    """Each ending carries its final state, reason code, status and Retry-After policy."""
    e = getattr(Endings, name)
    assert (e.state, e.reason, e.status, e.retry_after, e.whole_answer) == (
        state,
        reason,
        status,
        retry,
        whole,
    )
    assert e.engine_failed is (reason is not None and reason.startswith("upstream"))


def test_all_endings_are_in_the_table() -> None:
    """ALL_ENDINGS is every constant of Endings, each tested above."""
    assert len(ALL_ENDINGS) == len(ENDINGS) == len({id(e) for e in ALL_ENDINGS})
    assert set(ALL_ENDINGS) == {getattr(Endings, row[0]) for row in ENDINGS}


def test_an_ending_is_final() -> None:
    """An ending into a live state cannot be built."""
    for s in LIVE_STATES:
        with pytest.raises(ValueError, match="final state"):
            Ending(s, "x", None)


@pytest.mark.parametrize(
    ("exc", "want"),
    [
        (UpstreamUnavailable("x"), Endings.UPSTREAM_UNAVAILABLE),
        (UpstreamProtocolError("x"), Endings.UPSTREAM_UNAVAILABLE),
        (UpstreamBusy("x"), Endings.UPSTREAM_BUSY),
        (UpstreamTimeout("x"), Endings.UPSTREAM_TIMEOUT),
    ],
)
def test_upstream_refused_picks_the_constant(exc: UpstreamError, want: Ending) -> None:
    """Each engine failure before the head is its Endings constant (status from core.errors)."""
    assert upstream_refused(exc) is want
    assert (want.status, want.reason) == (exc.status, exc.reason)


def test_upstream_refused_keeps_an_unknown_status() -> None:
    """An UpstreamError raised with its own status ends the job with that status and reason."""
    got = upstream_refused(UpstreamTimeout("x", status=599, reason="upstream_odd"))
    assert (got.state, got.reason, got.status) == (F, "upstream_odd", 599)


@pytest.mark.parametrize(
    ("kind", "want"),
    [
        (ErrorKind.TIMEOUT, Endings.UPSTREAM_TIMEOUT_MID_BODY),
        (ErrorKind.PROTOCOL, Endings.UPSTREAM_PROTOCOL_MID_BODY),
    ],
)
def test_mid_body(kind: ErrorKind, want: Ending) -> None:
    """An answer that broke off ends as upstream_<kind>_mid_body."""
    assert mid_body(kind) is want
    assert want.reason == f"upstream_{kind}_mid_body"
