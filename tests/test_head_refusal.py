"""The rule of a refusal decided from the request head (issue #18 §2; ``jobs.route``'s
module text): each branch of ``RequestHead.decide``."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from gatekeeper.config.jobs import Jobs
from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.head import RequestHead
from gatekeeper.jobs.ids import coalesce_key
from gatekeeper.jobs.record import JobRecord

REFUSED = "client_limit"
SHA = "ab" * 32


def record(
    *,
    target: str = "/generate",
    size: int = 1000,
    key: str | None = "k1",
    method: str = "POST",
    route: str = "generate",
    client: str = "alice",
    state: JobState = JobState.RUNNING,
) -> JobRecord:
    return JobRecord(
        id="x" * 24,
        route=route,
        client=client,
        held=True,
        method=method,
        target=target,
        headers=(),
        coalesce_key=key,
        body_size=size,
        state=state,
    )


@dataclass
class Store:
    """find_coalesce / kept_like, answering from a fixed list of kept records."""

    kept: list[JobRecord] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)

    def find_coalesce(self, key: str, now: float, keep: float) -> JobRecord | None:
        self.asked.append("find_coalesce")
        return next((r for r in self.kept if r.coalesce_key == key), None)

    def kept_like(self, head: RequestHead, now: float, keep: float) -> bool:
        self.asked.append("kept_like")
        return any(head.may_match(r) for r in self.kept)


def head(size: int | None = 1000, key: str | None = None, path: str = "/generate") -> RequestHead:
    return RequestHead("alice", "generate", "POST", path, size, key)


JOBS = Jobs()


def test_nothing_refuses_nothing_is_asked() -> None:
    store = Store()
    assert head().decide(None, JOBS, [record()], store, 0.0) is None
    assert store.asked == []


def test_without_coalescing_the_head_alone_decides() -> None:
    off = Jobs(coalesce=False)
    store = Store(kept=[record(state=JobState.DONE)])
    assert head().decide(REFUSED, off, [record()], store, 0.0) == REFUSED
    assert store.asked == []


def test_no_live_job_and_no_kept_result_like_it_refuses_from_the_head() -> None:
    store = Store()
    assert head().decide(REFUSED, JOBS, [], store, 0.0) == REFUSED
    assert store.asked == ["kept_like"]


@pytest.mark.parametrize(
    ("live", "the_head", "body_decides"),
    [
        (record(), head(), True),  # same route, method, path and length: could be identical
        (record(), head(size=None), True),  # length unknown (chunked, or encoded)
        (record(target="/generate?seed=1"), head(), True),  # the query is not compared
        (record(client="bob"), head(), True),  # the key may be shared across clients
        (record(size=999), head(), False),  # a different length: never the same body
        (record(target="/generate/x"), head(), False),
        (record(method="PUT"), head(), False),
        (record(route="other"), head(), False),
        (record(key=None), head(), False),  # made without coalescing: nothing attaches
    ],
)
def test_a_live_job_a_body_could_match_leaves_the_decision_to_the_body(
    live: JobRecord, the_head: RequestHead, body_decides: bool
) -> None:
    got = the_head.decide(REFUSED, JOBS, [live], Store(), 0.0)
    assert got == (None if body_decides else REFUSED)


def test_a_kept_result_a_body_could_match_leaves_the_decision_to_the_body() -> None:
    kept = Store(kept=[record(state=JobState.DONE)])
    assert head().decide(REFUSED, JOBS, [], kept, 0.0) is None
    assert head(size=5).decide(REFUSED, JOBS, [], kept, 0.0) == REFUSED


def test_with_an_idempotency_key_the_whole_key_is_the_head_s() -> None:
    """The key is known: a live job or a kept done result with it -> the body decides
    (it attaches); none -> refused, whatever live jobs look like otherwise."""
    key = "idem-key"
    same_path = [record(key="other")]
    assert head(key=key).decide(REFUSED, JOBS, same_path, Store(), 0.0) == REFUSED
    assert head(key=key).decide(REFUSED, JOBS, [record(key=key)], Store(), 0.0) is None
    kept = Store(kept=[record(key=key, state=JobState.DONE)])
    assert head(key=key).decide(REFUSED, JOBS, [], kept, 0.0) is None
    failed = Store(kept=[record(key=key, state=JobState.FAILED)])
    assert head(key=key).decide(REFUSED, JOBS, [], failed, 0.0) == REFUSED


def test_an_idempotency_key_s_coalescing_key_does_not_depend_on_the_body() -> None:
    """What lets the route compute it from the head (``QueueRoute._head``)."""
    args = ("generate", "POST", "/generate", "", SHA, "retry-1")
    assert coalesce_key(*args, client="alice") == coalesce_key(
        *args[:4], "cd" * 32, args[5], client="alice"
    )
