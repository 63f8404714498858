"""The boxes of one PostgreSQL store (issue #21, ``postgres.sql_anybox``), two stores on
one schema as two boxes: where a result is, the relay's shared secret, cancel requests
taken only by the box that holds the job, and every box and the whole queue as read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgserver import PgServer
from test_postgres_issue20 import _open, _sql, record

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.anybox_store import AnyBoxStore, anybox_store_of
from gatekeeper.jobs.postgres import PostgresJobStore

pytestmark = pytest.mark.slow


@pytest.fixture
def boxes(
    pg_server: PgServer, pg_schema: str, tmp_path: Path
) -> Iterator[tuple[PostgresJobStore, PostgresJobStore]]:
    a, b = _open(pg_server, pg_schema, tmp_path / "a"), _open(pg_server, pg_schema, tmp_path / "b")
    yield a, b
    a.close()
    b.close()


def _run(store: PostgresJobStore, job: str) -> None:
    store.mark_running(job, time.time(), "default")


def test_a_shared_store_is_one_and_every_box_learns_one_secret(
    boxes: tuple[PostgresJobStore, PostgresJobStore],
) -> None:
    """The PostgreSQL store is a ``AnyBoxStore``; both boxes read the same relay secret,
    however many times it is asked for, and it is not guessable."""
    a, b = boxes
    assert isinstance(a, AnyBoxStore) and anybox_store_of(a) is a
    secret = b.relay_secret()
    assert a.relay_secret() == secret == b.relay_secret() and len(secret) >= 40


def test_a_result_is_where_it_ran(boxes: tuple[PostgresJobStore, PostgresJobStore]) -> None:
    """``result_place``: the running box and its registered address; None before any box ran
    it, and for an unknown id."""
    a, b = boxes
    job = a.create(record(a)).id
    assert a.result_place(job) is None and a.result_place("nope") is None
    _run(b, job)
    place = a.result_place(job)
    assert place is not None and place.box == b.box


def test_a_cancel_request_goes_to_the_box_that_holds_the_job(
    boxes: tuple[PostgresJobStore, PostgresJobStore], pg_server: PgServer, pg_schema: str
) -> None:
    """A request for a queued job is taken by the box that took it (body_box), one for a
    running job by the box running it (run_box), each exactly once; a request for a job
    that ended is dropped, never handed to anyone."""
    a, b = boxes
    queued = a.create(record(a)).id
    running = a.create(record(a, "bob")).id
    ended = a.create(record(a, "eve")).id
    _run(b, running)
    a.finish(ended, JobState.CANCELLED, "deleted", time.time())
    for job in (queued, running, ended):
        b.request_cancel(job)
        a.request_cancel(job)  # a second request for one job is one request

    def taken(store: PostgresJobStore) -> list[str]:
        return asyncio.run(store.take_cancels())

    assert taken(a) == [queued]
    assert taken(b) == [running]
    assert taken(a) == [] and taken(b) == []
    left = _sql(pg_server.dsn, f"SELECT job_id FROM {pg_schema}.cancel_requests")
    assert left == []  # the ended job's request went with the first look


def test_every_box_and_the_whole_queue_are_read_in_one_round(
    boxes: tuple[PostgresJobStore, PostgresJobStore],
) -> None:
    """``fleet``: both boxes with their running jobs and a fresh heartbeat (stamped by the
    reading box), the queue's totals; a box that left is listed stopped, and its next
    stamp makes it run again."""
    a, b = boxes
    jobs = [a.create(record(a, c)).id for c in ("alice", "bob", "carol")]
    _run(b, jobs[0])
    asyncio.run(b.fleet())  # b stamps its heartbeat
    fleet = asyncio.run(a.fleet())
    by_id = {x.id: x for x in fleet.boxes}
    assert set(by_id) == {a.box, b.box}
    assert by_id[b.box].running == 1 and by_id[a.box].running == 0
    assert by_id[a.box].seen_age < 5 and by_id[b.box].seen_age < 5
    assert (fleet.queued, fleet.running) == (2, 1)
    assert [(j.box, j.client) for j in fleet.jobs] == [(b.box, "alice")]
    asyncio.run(b.leave())
    assert {x.id: x.stopped for x in asyncio.run(a.fleet()).boxes}[b.box]
    asyncio.run(b.fleet())
    assert not {x.id: x.stopped for x in asyncio.run(a.fleet()).boxes}[b.box]
