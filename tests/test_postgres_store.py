"""What the PostgreSQL store adds to the conformance suite: several boxes on one schema
(issue #21). A real server (``pg_server``: one per session, a fresh schema per test)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from pgserver import PgServer, queued_record

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.guard import StoreUnavailable
from gatekeeper.jobs.postgres import PostgresJobStore
from gatekeeper.jobs.postgres.schema import SCHEMA_VERSION
from gatekeeper.jobs.postgres.sql_records import LiveTwin
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.shared import Fenced
from gatekeeper.jobs.store import StoreOpenError

pytestmark = pytest.mark.slow


@pytest.fixture
def boxes(
    pg_server: PgServer, pg_schema: str, tmp_path: Path
) -> Iterator[tuple[PostgresJobStore, PostgresJobStore]]:
    a = PostgresJobStore.open(tmp_path / "a", dsn=pg_server.dsn, schema=pg_schema, timeout=5.0)
    b = PostgresJobStore.open(tmp_path / "b", dsn=pg_server.dsn, schema=pg_schema, timeout=5.0)
    yield a, b
    a.close()
    b.close()


def add(store: PostgresJobStore, client: str = "c", key: str | None = None) -> JobRecord:
    return store.create(queued_record(store, client, key))


def _fetch(dsn: str, sql: str) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        con = await asyncpg.connect(dsn)
        try:
            return list(await con.fetch(sql))
        finally:
            await con.close()

    return asyncio.run(go())


def test_two_boxes_opening_an_empty_database_at_once_make_one_schema(
    pg_server: PgServer, pg_schema: str, tmp_path: Path
) -> None:
    """Several stores started at the same instant on an empty database: each opens
    without error, and the schema exists once, at the current version (the advisory lock)."""
    start = threading.Barrier(4)
    opened: list[PostgresJobStore] = []
    errors: list[BaseException] = []

    def box(i: int) -> None:
        start.wait()
        try:
            opened.append(
                PostgresJobStore.open(tmp_path / f"box{i}", dsn=pg_server.dsn, schema=pg_schema)
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=box, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert errors == [] and len(opened) == 4
        rows = _fetch(pg_server.dsn, f"SELECT version FROM {pg_schema}.schema_version")
        assert [r["version"] for r in rows] == [SCHEMA_VERSION]
        assert len({s.box for s in opened}) == 4
        boxes = _fetch(pg_server.dsn, f"SELECT id FROM {pg_schema}.boxes")
        assert {r["id"] for r in boxes} == {s.box for s in opened}
    finally:
        for s in opened:
            s.close()


def test_a_newer_schema_is_refused_naming_both_versions(
    pg_server: PgServer, pg_schema: str, tmp_path: Path, boxes: tuple[PostgresJobStore, ...]
) -> None:
    """A schema at a version this gatekeeper does not know is refused, not guessed at."""
    _fetch(pg_server.dsn, f"UPDATE {pg_schema}.schema_version SET version = 99")
    with pytest.raises(StoreOpenError, match=f"version 99, this gatekeeper knows {SCHEMA_VERSION}"):
        PostgresJobStore.open(tmp_path / "c", dsn=pg_server.dsn, schema=pg_schema)


def test_two_boxes_claiming_at_once_share_the_queue_without_a_double_claim(
    boxes: tuple[PostgresJobStore, PostgresJobStore],
) -> None:
    """60 jobs of 3 clients submitted to box a, claimed by a and b at the same time:
    every job is claimed exactly once, each box claims some, each by its own box."""
    a, b = boxes
    ids = {add(a, client=f"client{i % 3}").id for i in range(60)}
    got: dict[str, list[str]] = {"a": [], "b": []}
    last: dict[str, JobRecord | None] = {}
    rounds = threading.Barrier(2, timeout=30)

    def work(name: str, store: PostgresJobStore) -> None:
        # Each round both boxes claim at the same moment (no one-box-takes-all by timing).
        while True:
            rounds.wait()
            last[name] = row = store.claim_next(time.time(), engine=name)
            if row is not None:
                got[name].append(row.id)
            rounds.wait()
            if last["a"] is None and last["b"] is None:
                return

    threads = [threading.Thread(target=work, args=(n, s)) for n, s in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    claimed = got["a"] + got["b"]
    assert sorted(claimed) == sorted(ids)  # each exactly once
    assert got["a"] and got["b"]
    assert {r.engine for r in a.running()} == {"a", "b"}
    assert all(r.engine == "a" for r in map(a.get, got["a"]) if r is not None)


def test_the_claim_order_is_fair_across_boxes(
    boxes: tuple[PostgresJobStore, PostgresJobStore],
) -> None:
    """Jobs submitted to two boxes form one queue: claims alternating between the boxes
    serve the clients round-robin in the order they joined, FIFO within each."""
    a, b = boxes
    names = {}
    for store, client, n in ((a, "A", 3), (b, "B", 1), (a, "C", 2)):
        for i in range(n):
            names[add(store, client=client).id] = f"{client}{i + 1}"
    order = []
    for i in range(6):
        row = (a, b)[i % 2].claim_next(1.0)
        assert row is not None
        order.append(names[row.id])
    assert order == ["A1", "B1", "C1", "A2", "C2", "A3"]


def test_one_live_job_per_coalescing_key_across_boxes(
    boxes: tuple[PostgresJobStore, PostgresJobStore],
) -> None:
    """The database refuses a second live job with the same key, from any box (LiveTwin);
    once the first has ended, the key is free again."""
    a, b = boxes
    first = add(a, key="same")
    with pytest.raises(LiveTwin):
        add(b, key="same")
    assert b.find_coalesce("same", now=time.time(), keep=60.0) == a.get(first.id)
    b.mark_running(first.id, 1.0)
    with pytest.raises(LiveTwin):
        add(a, key="same")
    with pytest.raises(Fenced):  # only the box that runs it ends a running job
        a.finish(first.id, JobState.FAILED, "x", 2.0)
    b.finish(first.id, JobState.FAILED, "x", 2.0)
    assert add(b, key="same").coalesce_key == "same"


def test_recover_touches_only_the_boxs_own_jobs(
    boxes: tuple[PostgresJobStore, PostgresJobStore],
) -> None:
    """A box that restarts interrupts its own running jobs only: another box's running
    job and its queued jobs (whose bodies it holds) are left alone."""
    a, b = boxes
    mine, theirs, queued_there = add(a), add(b), add(b)
    a.mark_running(mine.id, 1.0)
    b.mark_running(theirs.id, 1.0)
    changed = a.recover(now=5.0, retry_interrupted=False)
    assert [r.id for r in changed] == [mine.id]
    assert a.get(mine.id).state is JobState.FAILED  # type: ignore[union-attr]
    assert a.get(theirs.id).state is JobState.RUNNING  # type: ignore[union-attr]
    assert a.get(queued_there.id).state is JobState.QUEUED  # type: ignore[union-attr]
    assert b.body_path(queued_there.id) is not None


def _server_pids(server: PgServer) -> list[int]:
    pid = int((server.data / "postmaster.pid").read_text().split()[0])
    kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [pid, *(int(p) for p in kids.stdout.split())]


def test_an_unanswering_database_costs_one_timeout_then_fails_fast_and_recovers(
    pg_server: PgServer, pg_schema: str, tmp_path: Path
) -> None:
    """With the server frozen (SIGSTOP: connections hang), the first call raises
    StoreUnavailable (503 store_unavailable, Retry-After) after the call timeout, the
    next ones at once without waiting; once the server answers again the store does
    too, by itself (the breaker's probe), and nothing was lost."""
    store = PostgresJobStore.open(tmp_path / "s", dsn=pg_server.dsn, schema=pg_schema, timeout=0.5)
    try:
        kept = add(store)
        pids = _server_pids(pg_server)
        for p in pids:
            os.kill(p, signal.SIGSTOP)
        try:
            t = time.monotonic()
            with pytest.raises(StoreUnavailable) as first:
                store.get(kept.id)
            assert time.monotonic() - t >= 0.5  # it waited for the call timeout, once
            assert isinstance(first.value.__cause__, TimeoutError)
            assert (first.value.status, first.value.reason) == (503, "store_unavailable")
            assert first.value.retry_after >= 1
            assert store.bridge.breaker.is_open
            for _ in range(100):
                with pytest.raises(StoreUnavailable) as later:
                    store.claim_next(1.0)
                # Refused by the open breaker, never sent: no timeout behind it.
                assert later.value.__cause__ is None
        finally:
            for p in pids:
                os.kill(p, signal.SIGCONT)
        deadline = time.monotonic() + 30
        while True:
            try:
                got = store.get(kept.id)
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the store never came back"
                time.sleep(0.05)
        assert got == kept
    finally:
        store.close()


def test_running_jobs_are_stamped_on_the_databases_clock(
    pg_server: PgServer, pg_schema: str, boxes: tuple[PostgresJobStore, PostgresJobStore]
) -> None:
    """A claim and every set_progress stamp the job's heartbeat with the database's time,
    whatever ``started`` the caller passed (boxes' clocks may disagree; issue #21 leases)."""
    a, _ = boxes
    row = add(a)
    claimed = a.claim_next(1.0)
    assert claimed is not None and claimed.id == row.id and claimed.started == 1.0
    now = "extract(epoch from clock_timestamp())::float8"
    sql = f"SELECT heartbeat, {now} AS now FROM {pg_schema}.jobs"
    first = _fetch(pg_server.dsn, sql)[0]
    assert 0 <= first["now"] - first["heartbeat"] < 60
    a.set_progress(row.id, 0.5, 10)
    assert _fetch(pg_server.dsn, sql)[0]["heartbeat"] > first["heartbeat"]
