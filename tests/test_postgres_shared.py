"""The shared store's calls for several boxes (issue #21), on a real PostgreSQL server:
bodies any box can read (and the larger ones only their box), the wake-up on the schema's
channel, heartbeats, the lease sweep (one sweeper per dead box) and the fence that stops
a box swept while it was away from writing over the job."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgserver import PgServer, queued_record
from test_postgres_store import _fetch

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.postgres import PostgresJobStore
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.shared import Fenced, SharedQueue

pytestmark = pytest.mark.slow

LEASE = 0.3


def _open(pg: PgServer, schema: str, where: Path, **kw: float) -> PostgresJobStore:
    return PostgresJobStore.open(where, dsn=pg.dsn, schema=schema, timeout=5.0, **kw)  # type: ignore[arg-type]


@pytest.fixture
def boxes(
    pg_server: PgServer, pg_schema: str, tmp_path: Path
) -> Iterator[tuple[PostgresJobStore, PostgresJobStore]]:
    a = _open(pg_server, pg_schema, tmp_path / "a", max_body_bytes=10)
    b = _open(pg_server, pg_schema, tmp_path / "b", max_body_bytes=10)
    yield a, b
    a.close()
    b.close()


def add(store: PostgresJobStore, body: bytes = b"{}", client: str = "c") -> JobRecord:
    return store.create(queued_record(store, client, body=body))


def _answer(call: object) -> object:
    """The answer a fire-and-forget call (``beat``, ``sweep``) hands its ``done``."""
    got: queue.Queue[object] = queue.Queue()
    call(got.put)  # type: ignore[operator]
    return got.get(timeout=10)


def test_the_store_is_a_shared_queue(boxes: tuple[PostgresJobStore, PostgresJobStore]) -> None:
    """The PostgreSQL store offers the calls of a shared queue (``shared.SharedQueue``)."""
    assert isinstance(boxes[0], SharedQueue)


def test_a_small_body_is_claimed_by_any_box_a_large_one_only_by_its_own(
    boxes: tuple[PostgresJobStore, PostgresJobStore], pg_schema: str, pg_server: PgServer
) -> None:
    """A body up to max_body_bytes goes into the database with its job: another box claims
    it and finds the body in its own bodies/ (written at the claim); a larger one stays on
    the box that took it, and only that box claims the job here (these boxes register no
    address to fetch it from: test_postgres_bodies.py). A body leaves the database when
    its job ends."""
    a, b = boxes
    big = add(a, b"x" * 11)
    small = add(a, b"{}")
    got = b.claim_next(1.0)
    assert got is not None and got.id == small.id  # big: not readable from b
    path = b.body_path(small.id)
    assert path is not None and path.read_bytes() == b"{}"
    assert b.claim_next(1.0) is None
    mine = a.claim_next(1.0)
    assert mine is not None and mine.id == big.id
    b.finish(small.id, JobState.DONE, None, 2.0)
    rows = _fetch(pg_server.dsn, f"SELECT job_id FROM {pg_schema}.bodies")
    assert rows == []


def test_a_queued_job_notifies_every_listening_box(
    boxes: tuple[PostgresJobStore, PostgresJobStore],
) -> None:
    """Each box listening on the schema's channel is woken once when it connects, and again
    when a job is queued on any box (the notification is sent by the INSERT's trigger)."""
    a, b = boxes
    woken = threading.Semaphore(0)
    b.watch(woken.release)
    assert woken.acquire(timeout=10)  # the claim once after connecting
    add(a)
    assert woken.acquire(timeout=10)


def test_a_silent_box_is_swept_once_and_fenced_when_it_returns(
    pg_server: PgServer, pg_schema: str, tmp_path: Path
) -> None:
    """Box b claims a job and falls silent: after the lease, a's sweep fails it
    ``interrupted``; a second sweep (or a second sweeper) finds nothing more. When b comes
    back its beat no longer lists the job, and its writes of that job are refused (Fenced),
    so nothing b computed is recorded over it."""
    a = _open(pg_server, pg_schema, tmp_path / "a")
    b = _open(pg_server, pg_schema, tmp_path / "b")
    c = _open(pg_server, pg_schema, tmp_path / "c")
    try:
        job = add(a)
        assert b.claim_next(1.0) is not None
        assert _answer(b.beat) == {job.id}
        assert _answer(lambda done: a.sweep(LEASE, False, 5.0, done)) == []  # b is alive
        time.sleep(LEASE + 0.2)
        _answer(a.beat)
        _answer(c.beat)
        swept = [
            _answer(lambda done, s=s: s.sweep(LEASE, False, 5.0, done))  # type: ignore[misc]
            for s in (a, c)
        ]
        changed = [r for rows in swept for r in rows]  # type: ignore[attr-defined]
        assert [(r.id, r.state, r.reason) for r in changed] == [
            (job.id, JobState.FAILED, "interrupted")
        ]
        assert _answer(b.beat) == set()
        with pytest.raises(Fenced):
            b.set_progress(job.id, 0.5, 10)
        with pytest.raises(Fenced):
            b.finish(job.id, JobState.DONE, None, 6.0)
        assert a.get(job.id).state is JobState.FAILED  # type: ignore[union-attr]
    finally:
        for s in (a, b, c):
            s.close()


def test_retry_interrupted_queues_a_swept_job_again_and_wakes_the_boxes(
    pg_server: PgServer, pg_schema: str, tmp_path: Path
) -> None:
    """Under retry_interrupted a dead box's running job is queued again in its place (its
    seq), announced on the channel, and claimed by a live box."""
    a = _open(pg_server, pg_schema, tmp_path / "a")
    b = _open(pg_server, pg_schema, tmp_path / "b")
    try:
        job = add(a)
        assert b.claim_next(1.0) is not None
        woken = threading.Semaphore(0)
        a.watch(woken.release)
        assert woken.acquire(timeout=10)
        time.sleep(LEASE + 0.2)
        _answer(a.beat)
        changed = _answer(lambda done: a.sweep(LEASE, True, 5.0, done))
        assert [(r.id, r.state, r.seq) for r in changed] == [  # type: ignore[attr-defined]
            (job.id, JobState.QUEUED, job.seq)
        ]
        assert woken.acquire(timeout=10)
        again = a.claim_next(7.0)
        assert again is not None and again.id == job.id and again.started == 7.0
    finally:
        a.close()
        b.close()
