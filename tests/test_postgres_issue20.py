"""Issue #20 on the shared PostgreSQL store, beyond the conformance suite: several boxes
delivering from one outbox, seeing each other's batches and lists, and a schema of
version 1 (before the outbox, lists and batches) migrated by gatekeeper."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from pgserver import PgServer

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.batch.record import BatchRecord
from gatekeeper.jobs.handles import Handle
from gatekeeper.jobs.outbox import Delivery
from gatekeeper.jobs.postgres import PostgresJobStore
from gatekeeper.jobs.postgres.schema import SCHEMA_VERSION
from gatekeeper.jobs.record import JobRecord

pytestmark = pytest.mark.slow


def _open(pg_server: PgServer, schema: str, directory: Path) -> PostgresJobStore:
    return PostgresJobStore.open(directory, dsn=pg_server.dsn, schema=schema, timeout=5.0)


@pytest.fixture
def boxes(
    pg_server: PgServer, pg_schema: str, tmp_path: Path
) -> Iterator[tuple[PostgresJobStore, PostgresJobStore]]:
    a, b = _open(pg_server, pg_schema, tmp_path / "a"), _open(pg_server, pg_schema, tmp_path / "b")
    yield a, b
    a.close()
    b.close()


def _sql(dsn: str, *statements: str) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        con = await asyncpg.connect(dsn)
        try:
            rows: list[asyncpg.Record] = []
            for s in statements:
                rows = list(await con.fetch(s))
            return rows
        finally:
            await con.close()

    return asyncio.run(go())


def record(store: PostgresJobStore, client: str = "c", batch: str | None = None) -> JobRecord:
    job_id = secrets.token_urlsafe(18)
    w = store.body_writer(job_id)
    w.write(b"{}")
    size = w.commit()
    return JobRecord(
        job_id, "generate", client, False, "POST", "/g", (), None, size, time.time(), batch=batch
    )


def delivery(job_id: str, n: int, at: float = 1000.0) -> Delivery:
    return Delivery(f"msg_{job_id}_{n}", job_id, "hooks", "http://r/h", "job.x", b"{}", at, at)


def test_two_boxes_taking_at_once_never_take_a_row_twice(
    boxes: tuple[PostgresJobStore, PostgresJobStore],
) -> None:
    """Two boxes take from one outbox in lock-step rounds (both take in every round, by
    construction): every row is taken exactly once, and a job's second row only after
    its first was delivered."""
    a, b = boxes
    jobs = [f"job{n}" for n in range(60)]
    a.outbox_add([delivery(j, n) for j in jobs for n in (1, 2)])
    rounds = threading.Barrier(2, timeout=30)
    taken: dict[str, list[str]] = {"a": [], "b": []}

    def deliver(name: str, store: PostgresJobStore) -> None:
        for _ in range(20):
            rounds.wait()
            got = store.outbox_take(1000.0, 7, 9999.0)
            taken[name] += [d.id for d in got]
            rounds.wait()  # both took before either delivers: the rows are leased
            for d in got:
                store.outbox_delivered(d.id)

    threads = [threading.Thread(target=deliver, args=i) for i in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    every = taken["a"] + taken["b"]
    assert taken["a"] and taken["b"]
    assert len(every) == len(set(every)) == 120
    for j in jobs:  # per job: its first row was taken in an earlier round than its second
        assert every.count(f"msg_{j}_1") == every.count(f"msg_{j}_2") == 1
    assert a.outbox_backlog().count == 0


def test_a_box_at_open_releases_its_own_leases_only(
    pg_server: PgServer, pg_schema: str, tmp_path: Path
) -> None:
    """A box that restarts releases the leases its dead process held (due again at once);
    the rows another box is delivering stay leased to it."""
    a, b = _open(pg_server, pg_schema, tmp_path / "a"), _open(pg_server, pg_schema, tmp_path / "b")
    try:
        a.outbox_add([delivery(f"job{n}", 1) for n in range(10)])
        mine = {d.id for d in a.outbox_take(1000.0, 4, 9999.0)}
        theirs = {d.id for d in b.outbox_take(1000.0, 4, 9999.0)}
        a.close()
        a = _open(pg_server, pg_schema, tmp_path / "a")
        again = {d.id for d in a.outbox_take(1000.0, 100, 9999.0)}
        assert mine <= again and not theirs & again and len(again) == 6
    finally:
        a.close()
        b.close()


def test_one_box_reads_anothers_batch_and_list(
    boxes: tuple[PostgresJobStore, PostgresJobStore],
) -> None:
    """A batch created on one box reads back whole on the other, and claims on the other
    box take its items; a client's list is one list whichever box added the handle, its
    keys growing across boxes."""
    a, b = boxes
    batch = BatchRecord("b" + secrets.token_hex(8), "alice", "batch-generate", 1000.0, 3)
    items = [record(a, "alice", batch.id) for _ in range(3)]
    a.create_batch(batch, items)
    assert b.get_batch(batch.id) == batch
    assert [r.id for r in b.batch_jobs(batch.id)] == [r.id for r in items]
    claimed = b.claim_next(1001.0)
    assert claimed is not None and claimed.id == items[0].id and claimed.batch == batch.id
    added = []
    for store in (a, b, a, b):
        job = store.create(record(store, "alice"))
        h = Handle(job.id, job.id, "alice", False, 1000.0)
        store.add_handle(h)
        added.append(h.id)
    page = b.client_handles("alice", limit=10)
    assert [e.handle.id for e in page.entries] == added[::-1]
    keys = [e.key for e in page.entries]
    assert keys == sorted(keys, reverse=True) and len(set(keys)) == 4
    done = a.client_handles("alice", limit=10, states=[JobState.QUEUED])
    assert [e.handle.id for e in done.entries] == added[::-1]


# What version 4 (issue #21's any-box serving) added, taken away again.
_UNDO_VERSION_4 = (
    "DROP TABLE relay_secret, cancel_requests",
    "ALTER TABLE boxes DROP COLUMN stopped",
)
# What version 5 (issue #21, several boxes) added, undone.
_UNDO_VERSION_5 = (
    "DROP TABLE bodies",
    "DROP TRIGGER jobs_queued_notify ON jobs",
    "DROP TRIGGER jobs_final_body ON jobs",
    "DROP FUNCTION notify_queued, drop_body",
    "ALTER TABLE jobs DROP COLUMN body_in_db",
)
# What version 6 (issue #21, places in the whole queue) added, undone.
_UNDO_VERSION_6 = ("ALTER TABLE boxes DROP COLUMN slots", "DROP INDEX jobs_waiting")
# What version 3 (the ring's rounds, issue #20 §3) added, taken away again.
_UNDO_VERSION_3 = (
    "DROP TABLE ring_clock",
    "DROP INDEX ring_order",
    "ALTER TABLE ring DROP COLUMN round",
    "CREATE INDEX ring_by_turn ON ring (turn)",
)


def test_a_version_2_ring_keeps_its_order_and_takes_newcomers_in_the_round_in_service(
    pg_server: PgServer, pg_schema: str, tmp_path: Path
) -> None:
    """A version 2 ring (turns only) is brought to version 3 at the next open: its clients
    keep their order (A B C A C A), and a client arriving after the first claim takes the
    round in service (D right after C, before A's second)."""
    s = _open(pg_server, pg_schema, tmp_path / "a")
    names = {}
    for client, n in (("A", 3), ("B", 1), ("C", 2)):
        for i in range(n):
            names[s.create(record(s, client)).id] = f"{client}{i + 1}"
    s.close()
    _sql(
        pg_server.dsn,
        f"SET search_path TO {pg_schema}",
        *_UNDO_VERSION_6,
        *_UNDO_VERSION_5,
        *_UNDO_VERSION_4,
        *_UNDO_VERSION_3,
        "UPDATE schema_version SET version = 2",
    )
    s = _open(pg_server, pg_schema, tmp_path / "a")
    try:
        rows = _sql(pg_server.dsn, f"SELECT version FROM {pg_schema}.schema_version")
        assert [r["version"] for r in rows] == [SCHEMA_VERSION] == [6]
        first = s.claim_next(1.0)
        assert first is not None and names[first.id] == "A1"
        names[s.create(record(s, "D")).id] = "D1"
        order = ["A1"]
        while (row := s.claim_next(1.0)) is not None:
            order.append(names[row.id])
    finally:
        s.close()
    assert order == ["A1", "B1", "C1", "D1", "A2", "C2", "A3"]


def test_a_version_1_schema_is_migrated_keeping_its_jobs(
    pg_server: PgServer, pg_schema: str, tmp_path: Path
) -> None:
    """A schema made by the store before issue #20 (version 1: no outbox, no batches, no
    list index, jobs without the webhook and batch columns) is brought to the current
    version at the next open; its jobs read back and the new calls work on it."""
    s = _open(pg_server, pg_schema, tmp_path / "a")
    old = s.create(record(s, "alice"))
    s.close()
    _sql(  # what version 1 was
        pg_server.dsn,
        f"SET search_path TO {pg_schema}",
        *_UNDO_VERSION_6,  # first: its index is over the batch column
        "DROP TABLE outbox, outbox_gone, batches",
        "DROP INDEX handles_client",
        "ALTER TABLE jobs DROP COLUMN webhook, DROP COLUMN batch",
        *_UNDO_VERSION_5,
        *_UNDO_VERSION_4,
        *_UNDO_VERSION_3,
        "UPDATE schema_version SET version = 1",
    )
    s = _open(pg_server, pg_schema, tmp_path / "a")
    try:
        rows = _sql(pg_server.dsn, f"SELECT version FROM {pg_schema}.schema_version")
        assert [r["version"] for r in rows] == [SCHEMA_VERSION] == [6]
        assert s.get(old.id) == old
        batch = BatchRecord("b" + secrets.token_hex(8), "bob", "batch-generate", 1000.0, 2)
        items = [record(s, "bob", batch.id) for _ in range(2)]
        s.create_batch(batch, items, [delivery(r.id, 1) for r in items])
        assert [r.batch for r in s.batch_jobs(batch.id)] == [batch.id] * 2
        assert s.outbox_backlog().count == 2
        s.add_handle(Handle(old.id, old.id, "alice", False, 1000.0))
        assert [e.record for e in s.client_handles("alice", limit=5).entries] == [old]
    finally:
        s.close()
