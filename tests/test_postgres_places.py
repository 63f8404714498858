"""Places and limits over the whole shared queue (issue #21), on a real PostgreSQL server:
the places every box reads are the fairness rule's over every box's jobs, the same from
each box; ``per_client`` and ``max_waiting`` count every box's jobs, exactly, when boxes
race; a live twin still takes a request first; ETAs count the slots of every live box."""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pgserver import PgServer, queued_record
from test_postgres_store import _fetch

from gatekeeper.core.vocab import JobState, QueueReason
from gatekeeper.jobs.places import fair_order
from gatekeeper.jobs.postgres import PostgresJobStore
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.shared import Limits, LiveTwin, OverLimit
from gatekeeper.jobs.waitroom import Waiter, WaitingRoom

pytestmark = pytest.mark.slow


@pytest.fixture
def boxes(
    pg_server: PgServer, pg_schema: str, tmp_path: Path
) -> Iterator[tuple[PostgresJobStore, PostgresJobStore]]:
    opened = [
        PostgresJobStore.open(tmp_path / n, dsn=pg_server.dsn, schema=pg_schema, timeout=5.0)
        for n in ("a", "b")
    ]
    yield opened[0], opened[1]
    for s in opened:
        s.close()


def _record(store: PostgresJobStore, client: str, key: str | None = None) -> JobRecord:
    return queued_record(store, client, key)


def _read(store: PostgresJobStore, ids: list[str] | None = None, slots: int = 1) -> Any:
    got: queue.Queue[Any] = queue.Queue()
    store.picture(ids or [], slots, got.put)
    read = got.get(timeout=10)
    assert read is not None
    return read


def test_every_box_reads_the_fair_order_of_the_whole_queue(
    pg_server: PgServer, pg_schema: str, boxes: tuple[PostgresJobStore, PostgresJobStore]
) -> None:
    """Random arrivals on two boxes, claims by either, cancels of queued jobs: after each
    step both boxes read the same places, those of ``WaitingRoom`` over every box's jobs
    (and of ``places.fair_order`` over the stored rows), for the jobs each asks about:
    its own and the other box's alike."""
    rng = random.Random(21)
    room = WaitingRoom()
    mine: dict[str, PostgresJobStore] = {}
    for step in range(60):
        op = rng.random()
        if op < 0.6 or not len(room):
            store = rng.choice(boxes)
            row = store.create(_record(store, f"c{rng.randrange(4)}"))
            room.join(Waiter(row.id, row.client, "r", 0.0, 1e9))
            mine[row.id] = store
        elif op < 0.85:
            claimed = rng.choice(boxes).claim_next(time.time())
            assert claimed is not None
            assert room.pop_next().job_id == claimed.id  # type: ignore[union-attr]
        else:
            gone = rng.choice(room.waiters()).job_id
            mine[gone].finish(gone, JobState.CANCELLED, "deleted", time.time())
            room.leave(gone)
        expected = {w.job_id: i for i, w in enumerate(room.order(), start=1)}
        for store in boxes:
            own = {j: p for j, p in expected.items() if mine[j] is store}
            waiting, places, _, _ = _read(store, list(own))
            assert (waiting, places) == (len(room), own), step
            assert _read(store, [*expected, "gone"])[1] == expected, step
    rows = _fetch(
        pg_server.dsn,
        f"SELECT j.id, j.client, j.seq, r.round, r.turn FROM {pg_schema}.jobs j"
        f" JOIN {pg_schema}.ring r USING (client) WHERE j.state = 'queued'",
    )
    ring = {r["client"]: (r["round"], r["turn"]) for r in rows}
    stored = fair_order(((r["id"], r["client"], r["seq"]) for r in rows), ring)
    assert stored == [w.job_id for w in room.order()]


def _race(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` on as many threads at once; what each returned or raised."""
    out: list[Any] = [None] * len(calls)
    go = threading.Barrier(len(calls))

    def run(i: int) -> None:
        go.wait()
        try:
            out[i] = calls[i]()
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_per_client_counts_every_box_exactly_when_boxes_race(
    boxes: tuple[PostgresJobStore, PostgresJobStore],
) -> None:
    """A client with one job on box A and per_client 3: twelve submissions racing on both
    boxes admit exactly two more; the rest are refused client_limit with the client's
    standing over both boxes (3 live, one of them running, its oldest queued job named);
    another client is still admitted."""
    a, b = boxes
    limits = Limits(per_client=3, max_waiting=100)
    first = a.create_limited(_record(a, "u"), [], limits)
    a.claim_next(time.time())  # u's first job runs on a: it still counts
    calls = [(lambda s=s: s.create_limited(_record(s, "u"), [], limits)) for s in (a, b) * 6]
    got = _race(calls)
    made = [r for r in got if isinstance(r, JobRecord)]
    refused = [r for r in got if isinstance(r, OverLimit)]
    assert (len(made), len(refused)) == (2, 10), got
    assert {r.reason for r in refused} == {QueueReason.CLIENT_LIMIT}
    last = refused[-1].standing
    assert last.counts.client_live == 3 and len(last.running) == 1
    assert last.first_queued == min(made, key=lambda r: r.seq).id
    assert b.create_limited(_record(b, "v"), [], limits).client == "v"
    assert a.get(first.id).state is JobState.RUNNING  # type: ignore[union-attr]


def test_max_waiting_counts_every_box_exactly_when_boxes_race(
    boxes: tuple[PostgresJobStore, PostgresJobStore],
) -> None:
    """max_waiting 4: ten clients racing on both boxes fill exactly four places; a running
    job takes none (a claim frees one, which the next submission takes), and a queue of
    nobody still lets a box with a free slot start one at max_waiting 0."""
    a, b = boxes
    limits = Limits(per_client=10, max_waiting=4)
    got = _race(
        [
            (lambda s=s, i=i: s.create_limited(_record(s, f"k{i}"), [], limits))
            for i, s in enumerate((a, b) * 5)
        ]
    )
    assert sum(isinstance(r, JobRecord) for r in got) == 4, got
    assert {r.reason for r in got if isinstance(r, OverLimit)} == {QueueReason.QUEUE_FULL}
    with pytest.raises(OverLimit) as full:
        b.create_limited(_record(b, "late"), [], limits)
    assert full.value.standing.counts.waiting == 4
    a.claim_next(time.time())
    assert b.create_limited(_record(b, "late"), [], limits).client == "late"
    for _ in range(4):
        b.claim_next(time.time())
    zero = Limits(per_client=10, max_waiting=0, free_here=True)
    assert a.create_limited(_record(a, "free"), [], zero).client == "free"
    with pytest.raises(OverLimit):
        b.create_limited(_record(b, "second"), [], zero)


def test_a_live_twin_takes_the_request_before_the_limits(
    boxes: tuple[PostgresJobStore, PostgresJobStore],
) -> None:
    """As on one box, an identical request attaches to its live twin even from a client at
    per_client: box B's create is refused as a LiveTwin (attach), not client_limit."""
    a, b = boxes
    limits = Limits(per_client=1, max_waiting=100)
    a.create_limited(_record(a, "u", key="same"), [], limits)
    with pytest.raises(LiveTwin):
        b.create_limited(_record(b, "u", key="same"), [], limits)
    with pytest.raises(OverLimit):
        b.create_limited(_record(b, "u", key="other"), [], limits)


def test_etas_count_the_slots_of_every_live_box(
    boxes: tuple[PostgresJobStore, PostgresJobStore],
) -> None:
    """Each read stamps its box's slots: a box reads its own plus every live box's, and a
    box that left is no longer counted; running jobs of every box are read."""
    a, b = boxes
    _read(a, slots=2)
    assert _read(b, slots=3)[3] == 5
    job = a.create(_record(a, "u"))
    b.mark_running(job.id, time.time())
    assert len(_read(a, slots=2)[2]) == 1
    _run(b.leave())
    assert _read(a, slots=2)[3] == 2


def _run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)
