"""Large bodies on the shared queue, store side (issue #21: ``sql_fair.CLAIM``,
``sql_anybox.give_back``, ``PostgresHousekeeping``), two stores on one schema as two
boxes with addresses: a body only its taking box keeps is claimed by another box while
that box is alive and not skipped; a job given back is queued again in its place and
keeps its client's turn, once; the taking box keeps the body while the job runs
elsewhere and deletes it once the job ended."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgserver import PgServer
from test_postgres_issue20 import _sql
from test_postgres_shared import _answer, add

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.anybox_store import BodyStore, body_store_of
from gatekeeper.jobs.postgres import PostgresJobStore

pytestmark = pytest.mark.slow

LEASE = 30.0
BIG = b"x" * 11  # over max_body_bytes (10): kept by the taking box only


def _open(pg: PgServer, schema: str, where: Path, name: str) -> PostgresJobStore:
    return PostgresJobStore.open(
        where,
        dsn=pg.dsn,
        schema=schema,
        timeout=5.0,
        max_body_bytes=10,
        lease=LEASE,
        address=f"http://{name}.internal:9",
    )


@pytest.fixture
def boxes(
    pg_server: PgServer, pg_schema: str, tmp_path: Path
) -> Iterator[tuple[PostgresJobStore, PostgresJobStore]]:
    a = _open(pg_server, pg_schema, tmp_path / "a", "a")
    b = _open(pg_server, pg_schema, tmp_path / "b", "b")
    yield a, b
    a.close()
    b.close()


def test_a_large_body_is_claimed_by_another_box_while_its_taking_box_is_alive(
    boxes: tuple[PostgresJobStore, PostgresJobStore], pg_server: PgServer, pg_schema: str
) -> None:
    """B claims A's large-body job (no body file written at the claim: B fetches it) while
    A is seen within the lease; not while B skips A, nor once A is silent past the lease
    or stopped; A itself claims it whatever its state."""
    a, b = boxes
    assert isinstance(b, BodyStore) and body_store_of(b) is b
    job = add(a, BIG)
    place = b.body_place(job.id)
    assert place is not None and (place.box, place.address) == (a.box, "http://a.internal:9")
    b.skipped_bodies = frozenset({a.box})
    assert b.claim_next(1.0) is None
    b.skipped_bodies = frozenset()
    for stale in (
        f"UPDATE {pg_schema}.boxes SET seen = seen - {2 * LEASE} WHERE id = '{a.box}'",
        f"UPDATE {pg_schema}.boxes SET stopped = seen, seen = seen + {2 * LEASE}"
        f" WHERE id = '{a.box}'",
    ):
        _sql(pg_server.dsn, stale)
        assert b.claim_next(1.0) is None
        _sql(
            pg_server.dsn,
            f"UPDATE {pg_schema}.boxes SET seen = extract(epoch from clock_timestamp()),"
            f" stopped = NULL WHERE id = '{a.box}'",
        )
    got = b.claim_next(1.0)
    assert got is not None and got.id == job.id and b.body_path(job.id) is None


def test_a_job_given_back_is_queued_again_in_its_place_once(
    boxes: tuple[PostgresJobStore, PostgresJobStore], pg_server: PgServer, pg_schema: str
) -> None:
    """B claims client c1's large-body job, then gives it back: queued again with its
    seq, no run_box, no start; its client keeps its turn (the next claim takes it again,
    before c2's); a second give-back, or one by a box that does not run it, changes
    nothing (None)."""
    a, b = boxes
    first = add(a, BIG, client="c1")
    other = add(a, b"{}", client="c2")
    got = b.claim_next(1.0)
    assert got is not None and got.id == first.id
    assert a.give_back(first.id) is None  # not A's to give back
    back = b.give_back(first.id)
    assert back is not None and back.state is JobState.QUEUED and back.seq == first.seq
    assert back.started is None and back.engine is None
    assert b.give_back(first.id) is None
    (row,) = _sql(
        pg_server.dsn, f"SELECT run_box, heartbeat FROM {pg_schema}.jobs WHERE id = '{first.id}'"
    )
    assert row["run_box"] is None and row["heartbeat"] is None
    again = a.claim_next(2.0)
    assert again is not None and again.id == first.id  # c1's turn, not c2's
    nxt = a.claim_next(3.0)
    assert nxt is not None and nxt.id == other.id


def test_the_taking_box_keeps_the_body_while_the_job_runs_elsewhere_then_drops_it(
    boxes: tuple[PostgresJobStore, PostgresJobStore],
) -> None:
    """A restarts (recover) while B runs A's large-body job: A keeps the body (B may give
    it back, a sweep may queue it again); once the job ended, A's eviction deletes it."""
    a, b = boxes
    job = add(a, BIG)
    assert b.claim_next(1.0) is not None
    a.recover(time.time(), False)
    assert a.body_path(job.id) is not None
    a.evict(time.time(), 3600.0, 1 << 40)
    assert a.body_path(job.id) is not None  # still running on B
    b.finish(job.id, JobState.DONE, None, time.time())
    a.evict(time.time(), 3600.0, 1 << 40)
    assert a.body_path(job.id) is None


def test_a_large_body_of_a_box_gone_past_max_wait_is_lost_not_run(
    boxes: tuple[PostgresJobStore, PostgresJobStore], pg_server: PgServer, pg_schema: str
) -> None:
    """A is silent past the lease: B's sweep leaves A's large-body job queued (its body may
    come back) while A is silent for less than ``body_wait`` (the service passes
    ``admission.queue.max_wait``), and fails it ``body_lost`` once A is silent for
    longer; A's small-body job stays queued for any box either way."""
    a, b = boxes
    big, small = add(a, BIG), add(a, b"{}")
    silent = f"UPDATE {pg_schema}.boxes SET seen = seen - {{}} WHERE id = '{a.box}'"
    _sql(pg_server.dsn, silent.format(2 * LEASE))
    assert _answer(lambda done: b.sweep(LEASE, False, 5.0, done, 1000.0)) == []
    assert b.get(big.id).state is JobState.QUEUED  # type: ignore[union-attr]
    _sql(pg_server.dsn, silent.format(1000.0))
    assert _answer(lambda done: b.sweep(LEASE, False, 5.0, done)) == []  # no bound: waits
    changed = _answer(lambda done: b.sweep(LEASE, False, 5.0, done, 1000.0))
    assert [(r.id, r.state, r.reason) for r in changed] == [  # type: ignore[attr-defined]
        (big.id, JobState.FAILED, "body_lost")
    ]
    assert b.get(small.id).state is JobState.QUEUED  # type: ignore[union-attr]


def test_a_small_body_that_cannot_be_written_at_the_claim_gives_the_job_back(
    boxes: tuple[PostgresJobStore, PostgresJobStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """B claims A's small job (its body in the database) but its own disk refuses the body:
    the claim raises and the job is queued again in its place, not left running on B
    without a body; once B's disk takes it, the same job is claimed, body and all."""
    a, b = boxes
    job = add(a, b"tiny")  # within max_body_bytes: in the database
    real = b._files.body_writer

    def full(job_id: str) -> object:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(b._files, "body_writer", full)
    with pytest.raises(OSError):
        b.claim_next(1.0)
    again = b.get(job.id)
    assert again is not None and again.state == JobState.QUEUED
    monkeypatch.setattr(b._files, "body_writer", real)
    got = b.claim_next(2.0)
    assert got is not None and got.id == job.id and got.state == JobState.RUNNING
    path = b.body_path(job.id)
    assert path is not None and path.read_bytes() == b"tiny"
