"""The job store conformance suite: what any ``jobs.store.JobStore`` must do.

One set of tests, parametrized over the implementations in ``STORES`` (the
SQLite state directory today). A new store (PostgreSQL, issue #17 §4) is added
to ``STORES`` and must pass every test here unchanged. The tests use the
Protocol's methods only, never an implementation's files or tables.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gatekeeper.core.vocab import FINAL_STATES, JobState
from gatekeeper.jobs.batch.record import BatchRecord
from gatekeeper.jobs.handles import Handle
from gatekeeper.jobs.outbox import Delivery
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.states import TRANSITIONS, Endings, allowed
from gatekeeper.jobs.store import EXPIRED_ROW_KEEP_FACTOR, JobStore
from gatekeeper.jobs.waitroom import Waiter, WaitingRoom

# name -> "module:callable" that opens a store on a directory (a child process imports it).
# The PostgreSQL store runs on the session's server, a fresh schema per test (pgserver.py).
STORES = {
    "sqlite": "gatekeeper.jobs.sqlite:SqliteJobStore.open",
    "postgres": "pgserver:open_test_store",
}
# A store that needs a server: its tests start a process, so they are in the slow tier.
SERVER_STORES = {"postgres": "pg_schema"}

Opener = Callable[[Path], JobStore]


def _opener(spec: str) -> Opener:
    module, _, attr = spec.partition(":")
    obj: object = __import__(module, fromlist=["_"])
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[return-value]


@pytest.fixture(
    params=[
        pytest.param(n, marks=pytest.mark.slow) if n in SERVER_STORES else n for n in sorted(STORES)
    ]
)
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    name = str(request.param)
    if name in SERVER_STORES:
        request.getfixturevalue(SERVER_STORES[name])
        # The kill -9 test's child imports the opener by name (pgserver lives here).
        here = str(Path(__file__).parent)
        monkeypatch.setenv(
            "PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
        )
    return name


@pytest.fixture
def open_store(impl: str) -> Opener:
    return _opener(STORES[impl])


@pytest.fixture
def store(open_store: Opener, tmp_path: Path) -> Iterator[JobStore]:
    s = open_store(tmp_path / "state")
    yield s
    s.close()


def new_id() -> str:
    return secrets.token_urlsafe(18)


def add(
    store: JobStore,
    *,
    client: str = "10.0.0.1",
    held: bool = False,
    key: str | None = None,
    created: float = 1000.0,
    body: bytes = b"{}",
) -> JobRecord:
    job_id = new_id()
    w = store.body_writer(job_id)
    w.write(body)
    size = w.commit()
    return store.create(
        JobRecord(
            id=job_id,
            route="generate",
            client=client,
            held=held,
            method="POST",
            target="/generate",
            headers=(("Content-Type", "application/json"),),
            coalesce_key=key,
            created=created,
            body_size=size,
        )
    )


def done(
    store: JobStore,
    finished: float,
    *,
    size: int = 100,
    status: int = 200,
    state: JobState = JobState.DONE,
    key: str | None = None,
) -> JobRecord:
    """A job that ran and ended in ``state`` at ``finished`` with a ``size``-byte result."""
    row = add(store, key=key)
    store.mark_running(row.id, finished - 1)
    store.set_result_head(row.id, status, "OK", (("Content-Type", "audio/wav"),))
    w = store.result_writer(row.id)
    w.write(b"r" * size)
    w.commit()
    return store.finish(row.id, state, None, finished)


# -- records and ordering ----------------------------------------------------------------------


def test_a_record_reads_back_as_created(store: JobStore) -> None:
    """create() assigns a seq and returns the record that get() reads back, field for field."""
    row = add(store, key="k", held=True)
    assert row.seq > 0 and row.state is JobState.QUEUED
    assert store.get(row.id) == row
    assert store.get(new_id()) is None


def test_queued_and_running_are_in_arrival_order(store: JobStore) -> None:
    """queued() and running() list by arrival; mark_running moves a job between them."""
    rows = [add(store) for _ in range(4)]
    assert [r.seq for r in rows] == sorted(r.seq for r in rows)
    assert store.mark_running(rows[2].id, 1.0).state is JobState.RUNNING
    store.mark_running(rows[0].id, 2.0)
    assert [r.id for r in store.queued()] == [rows[1].id, rows[3].id]
    assert [r.id for r in store.running()] == [rows[0].id, rows[2].id]


def test_seq_is_never_reused(open_store: Opener, tmp_path: Path) -> None:
    """A seq is never given twice, also after records were deleted and the store reopened."""
    s = open_store(tmp_path)
    first = [add(s) for _ in range(3)]
    for r in first:
        s.finish(r.id, JobState.EXPIRED, "keep", 0.0)
    s.evict(now=100.0, keep=1.0, max_bytes=1)
    assert all(s.get(r.id) is None for r in first)
    s.close()
    s = open_store(tmp_path)
    try:
        assert add(s).seq > max(r.seq for r in first)
    finally:
        s.close()


# -- the state machine -------------------------------------------------------------------------


def _put_in(store: JobStore, state: JobState) -> JobRecord:
    """A job brought to ``state`` through the store's own calls."""
    row = add(store)
    if state is JobState.QUEUED:
        return row
    store.mark_running(row.id, 1.0)
    if state is JobState.RUNNING:
        return store.get(row.id)  # type: ignore[return-value]
    if state is JobState.EXPIRED:
        return store.finish(row.id, JobState.EXPIRED, "keep", 2.0)
    return store.finish(row.id, state, None, 2.0)


@pytest.mark.parametrize("before", list(JobState))
@pytest.mark.parametrize("after", [JobState.RUNNING, *sorted(FINAL_STATES)])
def test_the_store_follows_the_transition_table(
    store: JobStore, before: JobState, after: JobState
) -> None:
    """mark_running and finish succeed exactly where states.TRANSITIONS allows, else
    ValueError and the record is unchanged."""
    row = _put_in(store, before)

    def change() -> JobRecord:
        if after is JobState.RUNNING:
            return store.mark_running(row.id, 5.0)
        return store.finish(row.id, after, "x", 5.0)

    # finish is the live job's ending; a kept result leaves only by evict (tested below).
    ok = allowed(before, after) and before in (JobState.QUEUED, JobState.RUNNING)
    if ok:
        assert change().state is after
    else:
        with pytest.raises(ValueError):
            change()
        assert store.get(row.id) == row


@pytest.mark.parametrize(
    "call",
    [
        lambda s, i: s.mark_running(i, 1.0),
        lambda s, i: s.finish(i, JobState.DONE, None, 1.0),
        lambda s, i: s.add_coalesced(i),
        lambda s, i: s.set_progress(i, None, 0),
    ],
)
def test_an_unknown_job_is_a_key_error(store: JobStore, call: Callable[..., object]) -> None:
    """Changing a job that does not exist raises KeyError, never silently does nothing."""
    with pytest.raises(KeyError):
        call(store, new_id())


def test_finish_deletes_the_body_and_keeps_the_result(store: JobStore) -> None:
    """A finished job's body is gone; its result stays until evict (expired: gone at once)."""
    kept = done(store, 10.0)
    assert store.body_path(kept.id) is None and store.result_path(kept.id) is not None
    row = add(store)
    store.mark_running(row.id, 1.0)
    w = store.result_writer(row.id)
    w.write(b"x" * 10)
    w.commit()
    assert store.finish(row.id, JobState.EXPIRED, "keep", 2.0).state is JobState.EXPIRED
    assert store.result_path(row.id) is None and store.results_bytes() == 100


# -- fairness ----------------------------------------------------------------------------------

# Arrivals (client per job) and the dispatch order of the waiting room's rule (round-robin
# across clients in the order they joined, FIFO within one): A A A B C C -> A B C A C A.
ARRIVALS = ["A", "A", "A", "B", "C", "C"]
FAIR = ["A1", "B1", "C1", "A2", "C2", "A3"]
# Without A1 (it ran and was failed "interrupted"): A A B C C -> A B C A C.
FAIR_WITHOUT_A1 = ["A2", "B1", "C1", "A3", "C2"]


def _fair_order(records: list[JobRecord]) -> list[str]:
    room = WaitingRoom()
    for r in records:
        room.join(Waiter(r.id, r.client, r.route, r.created, float("inf")))
    out: list[str] = []
    while (w := room.pop_next()) is not None:
        out.append(w.job_id)
    return out


@pytest.mark.parametrize("retry", [False, True])
def test_fair_order_survives_a_restart(open_store: Opener, tmp_path: Path, retry: bool) -> None:
    """After a restart the queued records come back in arrival order and claim_next serves
    them as the restored waiting room would (round-robin across clients in the order of
    their oldest job, FIFO within one); a job requeued by retry_interrupted keeps its place."""
    s = open_store(tmp_path)
    names: dict[str, str] = {}
    count: dict[str, int] = {}
    for client in ARRIVALS:
        count[client] = count.get(client, 0) + 1
        names[add(s, client=client, created=float(len(names))).id] = f"{client}{count[client]}"
    first = next(i for i, n in names.items() if n == "A1")
    s.mark_running(first, 1.0)  # A1 was running when the process stopped
    s.close()
    s = open_store(tmp_path)
    try:
        s.recover(now=10.0, retry_interrupted=retry)
        got = [names[i] for i in _fair_order(s.queued())]
        claimed = []
        while (row := s.claim_next(20.0)) is not None:
            claimed.append(names[row.id])
    finally:
        s.close()
    assert got == claimed == (FAIR if retry else FAIR_WITHOUT_A1)


def test_claim_next_serves_round_robin_across_clients(store: JobStore) -> None:
    """claim_next takes the oldest job of the client at the head of the ring, then moves
    that client to the tail: A A A B C C -> A B C A C A; None when nothing is queued."""
    names: dict[str, str] = {}
    count: dict[str, int] = {}
    for client in ARRIVALS:
        count[client] = count.get(client, 0) + 1
        names[add(store, client=client).id] = f"{client}{count[client]}"
    got = []
    while (row := store.claim_next(5.0)) is not None:
        assert row.state is JobState.RUNNING and row.started == 5.0
        got.append(names[row.id])
    assert got == FAIR
    assert store.queued() == []


@pytest.mark.parametrize("seed", range(8))
def test_claim_next_follows_the_waiting_room(store: JobStore, seed: int) -> None:
    """Through random arrivals, claims (by claim_next or by id, as the service claims what
    its waiting room chose) and jobs leaving the queue, the store serves exactly the
    order of waitroom.WaitingRoom."""
    rng = random.Random(seed)
    room = WaitingRoom()
    for _ in range(120):
        op = rng.random()
        if op < 0.5 or not room:
            row = add(store, client=rng.choice("ABCDE"))
            room.join(Waiter(row.id, row.client, row.route, 0.0, float("inf")))
        elif op < 0.7:
            w = room.pop_next()
            assert w is not None
            claimed = store.claim_next(1.0)
            assert claimed is not None and claimed.id == w.job_id
        elif op < 0.85:
            w = room.pop_next()
            assert w is not None
            store.mark_running(w.job_id, 1.0)
        else:
            gone = rng.choice(room.waiters())
            room.leave(gone.job_id)
            store.finish(gone.job_id, JobState.CANCELLED, "client_gone", 2.0)
    while (w := room.pop_next()) is not None:
        claimed = store.claim_next(1.0)
        assert claimed is not None and claimed.id == w.job_id
    assert store.claim_next(1.0) is None


# -- coalescing --------------------------------------------------------------------------------


def test_coalescing_finds_a_live_job_then_the_newest_kept_2xx(store: JobStore) -> None:
    """A queued or running job with the key wins; else the newest done 2xx within keep
    whose result is there; a failed answer or another key never matches."""
    old = done(store, 100.0, key="k")
    new = done(store, 200.0, key="k")
    done(store, 250.0, key="k", status=500)
    done(store, 260.0, key="k", state=JobState.FAILED)
    done(store, 270.0, key="other")
    assert store.find_coalesce("k", now=300.0, keep=1000.0) == store.get(new.id)
    assert store.find_coalesce("k", now=300.0, keep=50.0) is None
    store.evict(now=300.0 + 1000.0 - 150.0, keep=1000.0, max_bytes=10**9)  # nothing old enough
    assert store.find_coalesce("k", now=300.0, keep=1000.0) == store.get(new.id)
    store.evict(now=1150.0, keep=1000.0, max_bytes=10**9)  # old (finished 100) expires
    assert store.get(old.id).state is JobState.EXPIRED  # type: ignore[union-attr]
    live = add(store, key="k")
    assert store.find_coalesce("k", now=300.0, keep=1000.0) == live
    store.mark_running(live.id, 300.0)
    assert store.find_coalesce("k", now=300.0, keep=1000.0).id == live.id  # type: ignore[union-attr]
    assert store.find_coalesce("nothing", now=300.0, keep=1000.0) is None


def test_kept_like_never_misses_a_kept_result_a_body_could_match(store: JobStore) -> None:
    """``kept_like`` (issue #18 §2: a refusal decided from the head) says True for every
    kept 2xx result within ``keep`` on the same route, method and path, of the
    head's body length or any length when unknown; False when none could match."""
    from gatekeeper.jobs.head import RequestHead

    row = done(store, 200.0, key="k")
    size = row.body_size

    def head(path: str = "/generate", body_size: int | None = size, **kw: str) -> RequestHead:
        args = {"client": "c", "route": "generate", "method": "POST", **kw}
        return RequestHead(path=path, body_size=body_size, **args)

    assert store.kept_like(head(), now=300.0, keep=1000.0)
    assert store.kept_like(head(body_size=None), now=300.0, keep=1000.0)
    assert store.kept_like(head(client="someone else"), now=300.0, keep=1000.0)  # over-approx.
    assert not store.kept_like(head(body_size=size + 1), now=300.0, keep=1000.0)
    assert not store.kept_like(head(path="/generate/x"), now=300.0, keep=1000.0)
    assert not store.kept_like(head(path="/gen"), now=300.0, keep=1000.0)
    assert not store.kept_like(head(method="PUT"), now=300.0, keep=1000.0)
    assert not store.kept_like(head(route="other"), now=300.0, keep=1000.0)
    assert not store.kept_like(head(), now=300.0, keep=50.0)  # finished before keep
    other = done(store, 280.0, key="k2", status=500)  # a failed answer is never replayed
    assert other.body_size == size
    assert not store.kept_like(head(), now=1250.0, keep=1000.0)


def test_add_coalesced_counts(store: JobStore) -> None:
    """add_coalesced returns the running count and the record shows it."""
    row = add(store)
    assert [store.add_coalesced(row.id) for _ in range(3)] == [1, 2, 3]
    assert store.get(row.id).coalesced == 3  # type: ignore[union-attr]


# -- eviction ----------------------------------------------------------------------------------


def test_evict_by_age_then_by_bytes_never_live_jobs(store: JobStore) -> None:
    """Kept results older than keep expire ("keep"); then the oldest-finished go until the
    bytes fit ("max_bytes"); queued and running jobs and their partial results stay."""
    a = done(store, 100.0)
    b = done(store, 200.0, state=JobState.FAILED)
    c = done(store, 300.0)
    d = done(store, 310.0)
    q = add(store)
    r = add(store)
    store.mark_running(r.id, 1.0)
    w = store.result_writer(r.id)
    w.write(b"p" * 40)
    assert store.results_bytes() == 4 * 100 + 40
    assert store.evict(now=400.0, keep=150.0, max_bytes=200) == [a.id, b.id, c.id]
    for row, why in ((a, "keep"), (b, "keep"), (c, "max_bytes")):
        got = store.get(row.id)
        assert got is not None and (got.state, got.reason) == (JobState.EXPIRED, why)
        assert store.result_path(row.id) is None
    assert store.get(d.id).state is JobState.DONE  # type: ignore[union-attr]
    assert store.get(q.id).state is JobState.QUEUED  # type: ignore[union-attr]
    assert store.body_path(q.id) is not None
    assert store.results_bytes() == 100 + 40
    assert store.evict(now=400.0, keep=150.0, max_bytes=1) == [d.id]
    assert store.get(r.id).state is JobState.RUNNING  # type: ignore[union-attr]
    w.write(b"p")
    assert w.commit() == 41


def test_expired_records_go_after_the_keep_factor(store: JobStore) -> None:
    """An expired job answers as expired for EXPIRED_ROW_KEEP_FACTOR * keep, then is gone."""
    a = done(store, 100.0)
    store.evict(now=200.0, keep=50.0, max_bytes=10**9)
    assert store.get(a.id).state is JobState.EXPIRED  # type: ignore[union-attr]
    store.evict(now=100.0 + EXPIRED_ROW_KEEP_FACTOR * 50.0 - 1, keep=50.0, max_bytes=10**9)
    assert store.get(a.id) is not None
    store.evict(now=100.0 + EXPIRED_ROW_KEEP_FACTOR * 50.0, keep=50.0, max_bytes=10**9)
    assert store.get(a.id) is None


# -- handles: each submitter's own id on a job (issue #18 §3) --------------------------------


def test_handles_read_back_detach_once_and_survive_a_reopen(
    open_store: Opener, tmp_path: Path
) -> None:
    """A handle reads back as added, in creation order per job; detach stamps it once; an
    unknown job or handle is a KeyError, a taken id a ValueError; all survive a reopen."""
    store = open_store(tmp_path / "state")
    row = add(store, client="victim")
    creator = Handle(row.id, row.id, "victim", False, 1000.0)
    mine = Handle(new_id(), row.id, "victim", True, 1001.0)
    store.add_handle(creator)
    store.add_handle(mine)
    assert store.get_handle(mine.id) == mine and mine.attached
    assert store.handles_of(row.id) == [creator, mine]
    assert store.get_handle(new_id()) is None
    with pytest.raises(KeyError):
        store.add_handle(Handle(new_id(), new_id(), "x", False, 1.0))
    with pytest.raises(ValueError):
        store.add_handle(Handle(mine.id, row.id, "other", False, 1.0))
    with pytest.raises(KeyError):
        store.detach_handle(new_id(), 5.0)
    gone = store.detach_handle(mine.id, 1002.0)
    assert gone.detached == 1002.0 and not gone.attached
    assert store.detach_handle(mine.id, 1003.0).detached == 1002.0  # stamped once
    assert store.get_handle(creator.id) == creator  # the other handle is untouched
    store.close()
    store = open_store(tmp_path / "state")
    try:
        assert store.handles_of(row.id) == [creator, gone]
        assert store.get_handle(mine.id) == gone
    finally:
        store.close()


# -- batches: N jobs of one request, created together (issue #20 §3) --------------------------


def _batch(store: JobStore, client: str, n: int, *, job_ids: list[str] | None = None):
    """A batch of ``n`` items of ``client``, each body committed first (as the service does)."""
    batch = BatchRecord(new_id(), client, "batch-generate", 1000.0, n)
    items = []
    for i, job_id in enumerate(job_ids or [new_id() for _ in range(n)]):
        w = store.body_writer(job_id)
        w.write(b'{"lyrics": "%d"}' % i)
        size = w.commit()
        items.append(
            JobRecord(
                job_id,
                "generate",
                client,
                False,
                "POST",
                "/generate",
                (),
                None,
                size,
                created=1000.0,
                batch=batch.id,
            )
        )
    return batch, items


def test_a_batch_and_its_jobs_are_created_together_and_read_back_in_order(
    open_store: Opener, tmp_path: Path
) -> None:
    """create_batch stores the batch and its N queued jobs (seq in item order), which
    read back by get_batch / batch_jobs / queued, and after a reopen."""
    store = open_store(tmp_path / "state")
    batch, items = _batch(store, "alice", 3)
    rows = store.create_batch(batch, items)
    assert [r.id for r in rows] == [r.id for r in items]
    assert [r.seq for r in rows] == sorted(r.seq for r in rows) and rows[0].seq > 0
    assert store.get_batch(batch.id) == batch
    assert [r.id for r in store.batch_jobs(batch.id)] == [r.id for r in items]
    assert all(r.batch == batch.id and r.state is JobState.QUEUED for r in store.queued())
    assert store.get_batch(new_id()) is None and store.batch_jobs(new_id()) == []
    store.close()
    store = open_store(tmp_path / "state")
    try:
        assert store.get_batch(batch.id) == batch
        assert [r.id for r in store.batch_jobs(batch.id)] == [r.id for r in items]
    finally:
        store.close()


def test_a_batch_is_all_or_nothing(store: JobStore) -> None:
    """A batch that cannot be stored whole (a job id already taken, a job of another
    batch, a count that disagrees) raises ValueError and stores none of it."""
    lone = add(store)
    batch, items = _batch(store, "alice", 3, job_ids=[new_id(), new_id(), lone.id])
    with pytest.raises(ValueError):
        store.create_batch(batch, items)
    assert store.get_batch(batch.id) is None and store.batch_jobs(batch.id) == []
    assert [r.id for r in store.queued()] == [lone.id]
    other, more = _batch(store, "alice", 2)
    with pytest.raises(ValueError):
        store.create_batch(other, more[:1])
    with pytest.raises(ValueError):
        store.create_batch(other, [more[0], replace(more[1], batch=new_id())])
    assert store.get_batch(other.id) is None and [r.id for r in store.queued()] == [lone.id]


def test_batch_items_take_their_turn_in_the_fair_ring(store: JobStore) -> None:
    """claim_next serves a 5-item batch of A and B's one job as A, B, A, A, A, A: B's job
    runs second, not sixth."""
    batch, items = _batch(store, "A", 5)
    store.create_batch(batch, items)
    b = add(store, client="B")
    order = []
    while (row := store.claim_next(2000.0)) is not None:
        order.append(row.client)
        store.finish(row.id, JobState.DONE, None, 2001.0)
    assert order == ["A", "B", "A", "A", "A", "A"]
    assert store.get(b.id).state is JobState.DONE  # type: ignore[union-attr]


@pytest.mark.parametrize("by_id", [False, True])
def test_a_newcomer_runs_second_after_a_batch_found_the_engine_idle(
    store: JobStore, by_id: bool
) -> None:
    """Issue #20 §3 on an idle engine: A's 5-item batch is queued, its first item is
    claimed at once (by claim_next, or by id as the service claims what its waiting room
    chose), then B's one job arrives: B's runs second (A B A A A A), exactly the order of
    waitroom.WaitingRoom; a client C arriving later takes the round then in service."""
    room = WaitingRoom()
    batch, items = _batch(store, "A", 5)
    for r in store.create_batch(batch, items):
        room.join(Waiter(r.id, r.client, r.route, 0.0, float("inf")))

    def claim() -> str:
        w = room.pop_next()
        assert w is not None
        if by_id:
            row = store.mark_running(w.job_id, 2000.0)
        else:
            got = store.claim_next(2000.0)
            assert got is not None
            row = got
        assert row.id == w.job_id
        return row.client

    order = [claim()]  # A's first item: the engine was idle
    b = add(store, client="B")
    room.join(Waiter(b.id, b.client, b.route, 0.0, float("inf")))
    order += [claim(), claim()]  # B, then A's second (round 1 in service)
    c = add(store, client="C")
    room.join(Waiter(c.id, c.client, c.route, 0.0, float("inf")))
    while room:
        order.append(claim())
    assert store.claim_next(2000.0) is None
    assert order == ["A", "B", "A", "C", "A", "A", "A"]


def test_a_batch_goes_with_the_last_of_its_jobs_records(store: JobStore) -> None:
    """evict deletes a batch's row once none of its jobs' rows is left, never before."""
    batch, items = _batch(store, "alice", 2)
    store.create_batch(batch, items)
    for r in items:
        store.mark_running(r.id, 99.0)
        store.finish(r.id, JobState.DONE, None, 100.0)
    store.evict(now=200.0, keep=50.0, max_bytes=10**9)
    assert store.get_batch(batch.id) == batch
    store.evict(now=100.0 + EXPIRED_ROW_KEEP_FACTOR * 50.0, keep=50.0, max_bytes=10**9)
    assert store.get_batch(batch.id) is None and store.batch_jobs(batch.id) == []


def test_handles_go_with_their_record(store: JobStore) -> None:
    """evict deletes a job's handles with its record, never before."""
    a = done(store, 100.0)
    h = Handle(new_id(), a.id, "c", False, 100.0)
    store.add_handle(h)
    store.evict(now=200.0, keep=50.0, max_bytes=10**9)  # expired: the record stays a while
    assert store.get_handle(h.id) == h
    store.evict(now=100.0 + EXPIRED_ROW_KEEP_FACTOR * 50.0, keep=50.0, max_bytes=10**9)
    assert store.get(a.id) is None and store.get_handle(h.id) is None
    assert store.handles_of(a.id) == []


# -- a client's own list (issue #20 §2) ----------------------------------------------------------


def _held_by(store: JobStore, client: str, *, job: JobRecord | None = None) -> Handle:
    """A new job of ``client`` (or ``job``, shared) and ``client``'s handle on it."""
    row = job or add(store, client=client)
    h = Handle(row.id if job is None else new_id(), row.id, client, False, 1000.0)
    store.add_handle(h)
    return h


def _walk(store: JobStore, client: str, limit: int, **kw: object) -> list[list[str]]:
    """Every page of ``client``'s list, as handle ids, following ``next``."""
    pages: list[list[str]] = []
    before = None
    while True:
        page = store.client_handles(client, limit=limit, before=before, **kw)  # type: ignore[arg-type]
        pages.append([e.handle.id for e in page.entries])
        if page.next is None:
            return pages
        before = page.next


def test_a_client_lists_only_its_own_handles_newest_first(store: JobStore) -> None:
    """client_handles lists the handles of one client key, newest first, each with its
    job's record; another client's handle on the same (coalesced) job is never listed."""
    mine = [_held_by(store, "hdr:alice") for _ in range(3)]
    theirs = _held_by(store, "hdr:bob")
    shared = _held_by(store, "hdr:bob", job=store.get(mine[0].job_id))
    page = store.client_handles("hdr:alice", limit=10)
    assert [e.handle for e in page.entries] == mine[::-1] and page.next is None
    assert [e.record.id for e in page.entries] == [h.job_id for h in mine[::-1]]
    bob = [e.handle.id for e in store.client_handles("hdr:bob", limit=10).entries]
    assert bob == [shared.id, theirs.id]  # bob's own id on alice's job, never alice's id
    assert mine[0].id not in bob
    assert store.client_handles("hdr:nobody", limit=10).entries == []


def test_pagination_over_1000_handles_is_stable_under_inserts(store: JobStore) -> None:
    """1,000 handles in pages of 37: every handle exactly once, in order, although a new
    handle is added before each page is read (it sorts first: no page repeats or skips)."""
    ids = [_held_by(store, "hdr:alice").id for _ in range(1000)]
    for _ in range(50):
        _held_by(store, "hdr:bob")  # interleaved: another client's rows are not read
    seen: list[str] = []
    before = None
    added = []
    while True:
        added.append(_held_by(store, "hdr:alice").id)  # a submit while the user pages
        page = store.client_handles("hdr:alice", limit=37, before=before)
        assert len(page.entries) <= 37
        seen += [e.handle.id for e in page.entries]
        if page.next is None:
            break
        before = page.next
    assert seen == [added[0], *ids[::-1]]  # only the one added before the first page
    assert len(set(seen)) == len(seen)


def test_the_state_filter_and_detached_handles(store: JobStore) -> None:
    """states= keeps entries whose job is in one of them; a detached handle also counts as
    cancelled (its holder let go while others hold the job), the job's own state too."""
    q = _held_by(store, "c")
    d = add(store, client="c")
    store.mark_running(d.id, 1.0)
    store.finish(d.id, JobState.DONE, None, 2.0)
    dh = _held_by(store, "c", job=store.get(d.id))
    let_go = _held_by(store, "c", job=store.get(q.job_id))
    store.detach_handle(let_go.id, 3.0)

    def ids(*states: JobState) -> list[str]:
        return [e.handle.id for e in store.client_handles("c", limit=10, states=states).entries]

    assert ids(JobState.DONE) == [dh.id]
    assert ids(JobState.QUEUED) == [let_go.id, q.id]
    assert ids(JobState.CANCELLED) == [let_go.id]
    assert ids(JobState.FAILED, JobState.EXPIRED) == []


def test_a_filtered_page_reads_a_bounded_number_of_handles(store: JobStore) -> None:
    """With states, one call reads at most ``scan`` handles: a page may be short (even
    empty) with a next; following next still finds every match exactly once."""
    wanted = []
    for i in range(60):
        h = _held_by(store, "c")
        if i % 20 == 0:
            store.finish(h.job_id, JobState.CANCELLED, "deleted", 5.0)
            wanted.append(h.id)
    pages = _walk(store, "c", 5, states=[JobState.CANCELLED], scan=10)
    assert len(pages) >= 6  # 60 handles, 10 read per call
    assert [i for p in pages for i in p] == wanted[::-1]
    assert any(p == [] for p in pages)


def test_a_page_ends_exactly_at_the_last_handle(store: JobStore) -> None:
    """A list of exactly ``limit`` handles is one page with next None; limit < 1 is a
    ValueError."""
    for _ in range(4):
        _held_by(store, "c")
    assert _walk(store, "c", 4) == [
        [e.handle.id for e in store.client_handles("c", limit=4).entries]
    ]
    assert [len(p) for p in _walk(store, "c", 3)] == [3, 1]
    with pytest.raises(ValueError):
        store.client_handles("c", limit=0)


def test_results_bytes_counts_partial_and_final_and_survives_a_reopen(
    open_store: Opener, tmp_path: Path
) -> None:
    """Partial results count while written, an aborted one stops counting, a reopened store
    knows the bytes already there."""
    s = open_store(tmp_path)
    done(s, 10.0, size=300)
    row = add(s)
    s.mark_running(row.id, 1.0)
    w = s.result_writer(row.id)
    w.write(b"x" * 50)
    assert s.results_bytes() == 350
    w.abort()
    assert s.results_bytes() == 300 and s.result_path(row.id) is None
    s.close()
    s = open_store(tmp_path)
    try:
        assert s.results_bytes() == 300
    finally:
        s.close()


# -- recovery after a real kill -9 -------------------------------------------------------------

# The child opens the store, then: a async queued, d async running (partial result),
# b held queued, c async queued, e async done (result committed), g async queued (its
# body will be lost), f: a body being written, never created. Then it writes to d's
# result until it is killed.
KILL_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from gatekeeper.core.vocab import JobState
    from gatekeeper.jobs.record import JobRecord

    module, _, attr = sys.argv[1].partition(":")
    opener = __import__(module, fromlist=["_"])
    for part in attr.split("."):
        opener = getattr(opener, part)
    store = opener(Path(sys.argv[2]))
    ids = dict(zip("adbcegf", json.loads(sys.argv[3])))

    def add(name, held=False):
        w = store.body_writer(ids[name])
        w.write(name.encode() * 10)
        store.create(JobRecord(id=ids[name], route="generate", client="c", held=held,
                               method="POST", target="/generate", headers=(),
                               coalesce_key="key-" + name, created=time.time(),
                               body_size=w.commit()))

    add("a"); add("d"); add("b", held=True); add("c"); add("e"); add("g")
    store.mark_running(ids["e"], 1.0)
    store.set_result_head(ids["e"], 200, "OK", (("Content-Type", "audio/wav"),))
    w = store.result_writer(ids["e"]); w.write(b"E" * 1000); w.commit()
    store.finish(ids["e"], JobState.DONE, None, time.time())
    store.mark_running(ids["d"], 2.0)
    part = store.result_writer(ids["d"]); part.write(b"D" * 500)
    body = store.body_writer(ids["f"]); body.write(b"f" * 100)
    print("ready", flush=True)
    while True:
        part.write(b"D")
        time.sleep(0.01)
    """
)


def run_and_kill(spec: str, directory: Path, ids: list[str]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, spec, str(directory), json.dumps(ids)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30.0)
        line = proc.stdout.readline() if ready else b""
        assert line == b"ready\n", proc.stderr.read() if proc.stderr else b""
        time.sleep(0.05)  # let it append to the partial result, then kill it mid-write
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.slow
@pytest.mark.parametrize("retry", [False, True])
def test_recovery_after_kill_9(impl: str, open_store: Opener, tmp_path: Path, retry: bool) -> None:
    """After kill -9 and recover: the running job is failed "interrupted" (or queued again
    in its place with retry_interrupted), a held queued job is cancelled "restart", an
    async one without its body failed "body_lost", the others stay queued in order, the
    done result is still served, partial results are gone; recover is idempotent."""
    ids = [new_id() for _ in range(7)]
    a, d, b, c, e, g, f = ids
    run_and_kill(STORES[impl], tmp_path, ids)
    store = open_store(tmp_path)
    try:
        assert [r.id for r in store.running()] == [d]
        lost = store.body_path(g)
        assert lost is not None
        lost.unlink()  # as a power loss may leave it
        changed = store.recover(now=5000.0, retry_interrupted=retry)
        got = {r.id: r for r in changed}
        assert [r.id for r in changed] == [d, b, g]  # by seq
        assert (got[b].state, got[b].reason) == (Endings.RESTART.state, Endings.RESTART.reason)
        assert (got[g].state, got[g].reason) == (Endings.BODY_LOST.state, "body_lost")
        if retry:
            assert got[d].state is JobState.QUEUED and got[d].started is None
            assert got[d].result_status is None and got[d].result_bytes == 0
            assert [r.id for r in store.queued()] == [a, d, c]
        else:
            assert (got[d].state, got[d].reason, got[d].finished) == (
                JobState.FAILED,
                "interrupted",
                5000.0,
            )
            assert [r.id for r in store.queued()] == [a, c]
        assert store.running() == []
        assert store.result_path(d) is None
        assert store.body_path(b) is None and store.body_path(f) is None
        for job in (a, c):
            path = store.body_path(job)
            assert path is not None and len(path.read_bytes()) == 10
        kept = store.find_coalesce("key-e", now=time.time(), keep=3600.0)
        assert kept is not None and kept.id == e
        assert kept.result_headers == (("Content-Type", "audio/wav"),)
        assert store.result_path(e).read_bytes() == b"E" * 1000  # type: ignore[union-attr]
        assert store.results_bytes() == 1000
        assert store.recover(now=5001.0, retry_interrupted=retry) == []
    finally:
        store.close()


def test_every_state_is_reachable_through_the_store() -> None:
    """The table has no state the store's calls cannot reach from a new job (queued)."""
    seen, todo = {JobState.QUEUED}, [JobState.QUEUED]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(JobState)


# -- the webhook outbox (issue #20 §1) ---------------------------------------------------------


def delivery(job_id: str, n: int, *, dest: str = "hooks", at: float = 1000.0) -> Delivery:
    return Delivery(f"msg_{job_id}_{n}", job_id, dest, "http://r/h", "job.x", b"{}", at, at)


def test_outbox_rows_are_written_with_the_state_change(store: JobStore) -> None:
    """create, mark_running and finish write their deliveries; a refused change writes none."""
    job_id = new_id()
    store.body_writer(job_id).commit()
    rec = JobRecord(job_id, "generate", "c", False, "POST", "/g", (), None, 0, created=1000.0)
    store.create(rec, [delivery(job_id, 1)])
    store.mark_running(job_id, 1001.0, None, [delivery(job_id, 2)])
    with pytest.raises(ValueError):  # queued -> running twice: refused, and nothing written
        store.mark_running(job_id, 1002.0, None, [delivery(job_id, 99)])
    store.finish(job_id, JobState.DONE, None, 1003.0, [delivery(job_id, 3)])
    with pytest.raises(ValueError):
        store.finish(job_id, JobState.FAILED, "x", 1004.0, [delivery(job_id, 98)])
    assert [d.id for d in store.outbox_pending(job_id)] == [f"msg_{job_id}_{n}" for n in (1, 2, 3)]
    assert store.outbox_backlog().count == 3 and store.outbox_backlog().oldest == 1000.0


def test_outbox_take_leases_retry_and_deliver(store: JobStore) -> None:
    """A taken row is not taken again until retried (due at its time) or delivered."""
    job = add(store)
    store.outbox_add([delivery(job.id, 1), delivery(job.id, 2, dest="other")])
    first = store.outbox_take(1000.0, 10, 5000.0, skip=["other"])
    assert [d.id for d in first] == [f"msg_{job.id}_1"]
    assert [d.destination for d in store.outbox_take(1000.0, 10, 5000.0)] == ["other"]
    assert store.outbox_take(1000.0, 10, 5000.0) == []  # both leased
    store.outbox_retry(first[0].id, 1010.0, "HTTP 500")
    assert store.outbox_take(1009.0, 10, 5000.0) == []  # not due yet
    again = store.outbox_take(1010.0, 10, 5000.0)
    assert [(d.id, d.attempts, d.last_error) for d in again] == [(first[0].id, 1, "HTTP 500")]
    assert again[0].payload == b"{}"  # the same body and id on every attempt
    store.outbox_delivered(first[0].id)
    assert store.outbox_backlog().count == 1


def test_gone_stops_a_destination_for_that_job(store: JobStore) -> None:
    """After a 410 the destination's rows of that job go, and later ones are not written."""
    job, other = add(store), add(store)
    store.outbox_add([delivery(job.id, 1), delivery(job.id, 2), delivery(other.id, 1)])
    assert store.outbox_gone(job.id, "hooks") == 2
    store.outbox_add([delivery(job.id, 3), delivery(job.id, 4, dest="else")])
    assert [d.destination for d in store.outbox_pending(job.id)] == ["else"]
    assert len(store.outbox_pending(other.id)) == 1


def test_outbox_survives_a_reopen_with_leases_released(open_store: Opener, tmp_path: Path) -> None:
    """Undelivered rows outlive the store; a row leased by the dead process is due at once."""
    s = open_store(tmp_path / "state")
    job = add(s)
    s.outbox_add([delivery(f"{job.id}-{n}", n) for n in range(50)])  # 50 jobs' events
    assert len(s.outbox_take(1000.0, 20, 9999.0)) == 20
    s.close()
    s = open_store(tmp_path / "state")
    try:
        assert s.outbox_backlog().count == 50
        assert len(s.outbox_take(1000.0, 100, 9999.0)) == 50
    finally:
        s.close()


def test_wake_makes_a_destinations_retries_due(store: JobStore) -> None:
    """A destination back after an outage: its rows waiting for a retry are due now; leased
    rows and other destinations are untouched."""
    rows = [delivery(f"job{n}", n) for n in range(3)] + [delivery("job9", 9, dest="b")]
    store.outbox_add(rows)
    for d in store.outbox_take(1000.0, 10, 5000.0):
        store.outbox_retry(d.id, 2000.0, "HTTP 503")
    leased = store.outbox_take(2000.0, 1, 5000.0)
    assert [d.id for d in leased] == ["msg_job0_0"]
    assert store.outbox_wake("hooks", 1500.0) == 2
    assert {d.id for d in store.outbox_take(1500.0, 10, 5000.0)} == {"msg_job1_1", "msg_job2_2"}


def test_one_jobs_rows_to_a_destination_go_one_at_a_time_in_order(store: JobStore) -> None:
    """A row is not taken while an earlier row of its job and destination is in the outbox
    (leased or waiting for a retry); other jobs and destinations are not held."""
    a, b = add(store), add(store)
    store.outbox_add([delivery(a.id, 1), delivery(a.id, 2), delivery(b.id, 1)])
    store.outbox_add([delivery(a.id, 3, dest="other")])
    first = {d.id for d in store.outbox_take(1000.0, 10, 5000.0)}
    assert first == {f"msg_{a.id}_1", f"msg_{b.id}_1", f"msg_{a.id}_3"}
    store.outbox_retry(f"msg_{a.id}_1", 1000.0, "HTTP 500")  # due again, still first
    assert [d.id for d in store.outbox_take(1000.0, 10, 5000.0)] == [f"msg_{a.id}_1"]
    store.outbox_delivered(f"msg_{a.id}_1")
    assert [d.id for d in store.outbox_take(1000.0, 10, 5000.0)] == [f"msg_{a.id}_2"]


def test_a_batch_writes_its_deliveries_with_its_jobs_or_none(store: JobStore) -> None:
    """create_batch writes the deliveries announcing its jobs in its transaction: all of
    them with the batch, none when the batch is refused (a job.queued never announces a
    job that was not stored)."""
    batch, items = _batch(store, "alice", 2)
    store.create_batch(batch, items, [delivery(r.id, 1) for r in items])
    for r in items:
        assert [d.id for d in store.outbox_pending(r.id)] == [f"msg_{r.id}_1"]
    lone = add(store)
    refused, more = _batch(store, "alice", 2, job_ids=[new_id(), lone.id])
    with pytest.raises(ValueError):
        store.create_batch(refused, more, [delivery(r.id, 1) for r in more])
    assert store.outbox_pending(more[0].id) == [] and store.outbox_backlog().count == 2
