"""The job database deleted or replaced under a running gatekeeper (issue #18 §1), in-process.

SQLite keeps writing a deleted file's inode, so without a check everything would
vanish at the next start. The store notices (``check_file``: the path's inode
against the one it opened) and puts the database back whole, a replacement kept
aside; when that cannot be done the service refuses new jobs ``503
storage_error`` (JSON, Retry-After), starts none, says so in a gauge and the
alert input, keeps its tick running, and recovers by itself once it can.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import generate_latest
from support import eventually
from test_jobstore import add
from test_storage_faults import ASYNC, JOBS, ClientFactory, _box, _json, _state

from gatekeeper.enginesim import SimConfig, create_app
from gatekeeper.jobs import dbwatch
from gatekeeper.jobs.sqlite import SqliteJobStore
from gatekeeper.jobs.sqlite_file import DbFile
from gatekeeper.jobs.statedir import DB_NAME
from gatekeeper.observability.alerts.inputs import state_db_detached


def test_a_deleted_database_is_put_back_whole_and_survives_a_restart(tmp_path: Path) -> None:
    """rm jobs.sqlite3: the store notices and puts back every record, those written after
    the deletion too, at its path, where the next start reads them."""
    state = tmp_path / "state"
    s = SqliteJobStore.open(state)
    before = add(s)
    assert s.check_file() is None  # nothing moved: nothing done
    (state / DB_NAME).unlink()
    after = add(s, client="10.0.0.2")  # SQLite writes on, into the deleted inode
    done = s.check_file()
    assert done is not None and "put back at its path" in done
    assert (state / DB_NAME).exists()
    assert s.check_file() is None
    third = add(s, client="10.0.0.3")
    assert {r.id for r in s.queued()} == {before.id, after.id, third.id}
    s.close()
    again = SqliteJobStore.open(state)
    try:
        assert {r.id for r in again.queued()} == {before.id, after.id, third.id}
    finally:
        again.close()


def test_a_replaced_database_is_kept_aside_never_deleted(tmp_path: Path) -> None:
    """A file renamed over jobs.sqlite3 (a restore, by hand) is moved to
    jobs.sqlite3.replaced-<time>; the records gatekeeper holds go back at the path."""
    state = tmp_path / "state"
    s = SqliteJobStore.open(state)
    mine = add(s)
    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE restored (x)")
    db.close()
    os.replace(other, state / DB_NAME)
    done = s.check_file()
    assert done is not None and "jobs.sqlite3.replaced-" in done
    (aside,) = state.glob(f"{DB_NAME}.replaced-*")
    with sqlite3.connect(aside) as db:
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("restored",)]
    db.close()
    assert [r.id for r in s.queued()] == [mine.id]
    for _ in range(2):  # replaced again within the same second: a second name, none lost
        shutil.copy(aside, state / "incoming")
        os.replace(state / "incoming", state / DB_NAME)
        assert s.check_file() is not None
    assert len(list(state.glob(f"{DB_NAME}.replaced-*"))) == 3
    s.close()
    again = SqliteJobStore.open(state)
    try:
        assert [r.id for r in again.queued()] == [mine.id]
    finally:
        again.close()


@pytest.fixture
async def engine(aiohttp_server: Any) -> TestServer:
    server: TestServer = await aiohttp_server(
        create_app(SimConfig(seconds=0.05, burn_cpu=False, memory_mb=0, progress_interval=0.05))
    )
    return server


async def test_a_database_that_cannot_be_put_back_refuses_then_recovers_by_itself(
    engine: TestServer,
    aiohttp_client: ClientFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The copy fails (a read-only directory): new jobs get 503 storage_error in JSON with
    Retry-After, a queued job is not started, gatekeeper_state_db_detached and the alert
    input read 1, the tick goes on; once the copy works, all resumes by itself and the
    queued job runs."""
    monkeypatch.setattr(dbwatch, "RETRY_SECONDS", 0.1)
    st, client = await _box(engine, aiohttp_client, tmp_path)
    jobs = st.jobs
    assert jobs is not None
    real_copy = DbFile._copy

    def read_only(db: sqlite3.Connection, copy: Path) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(copy))

    st.set_upstream_up(False)  # a job that waits (the engine not seen up)
    async with client.get("/download?bytes=20", headers=ASYNC) as r:
        waiting = (await _json(r))["id"]
        assert r.status == 202
    monkeypatch.setattr(DbFile, "_copy", staticmethod(read_only))
    (jobs.state_dir / DB_NAME).unlink()
    assert await eventually(lambda: jobs.db.detached is not None, timeout=3)
    st.set_upstream_up(True)
    await asyncio.sleep(0.5)  # two ticks: the waiting job is not started meanwhile
    assert (await _state(client, waiting))["state"] == "queued"
    async with client.get("/download?bytes=10", headers=ASYNC) as r:
        body = await _json(r)
        assert (r.status, body["reason"]) == (503, "storage_error"), body
        assert "Read-only file system" in jobs.db.detached  # type: ignore[operator]
        assert body["detail"] and int(r.headers["Retry-After"]) > 0
    assert state_db_detached(st) == 1.0
    text = generate_latest(st.metrics.registry).decode()
    assert "gatekeeper_state_db_detached 1.0" in text
    tick = jobs._task
    assert tick is not None and not tick.done()

    monkeypatch.setattr(DbFile, "_copy", staticmethod(real_copy))
    assert await eventually(lambda: jobs.db.detached is None, timeout=3)
    assert state_db_detached(st) == 0.0
    text = generate_latest(st.metrics.registry).decode()
    assert "gatekeeper_state_db_rehomed_total 1.0" in text
    async with client.get("/download?bytes=10", headers=ASYNC) as r:
        job_id = (await _json(r))["id"]
        assert r.status == 202
    for one, size in ((waiting, 20), (job_id, 10)):
        for _ in range(100):
            if (await _state(client, one))["state"] == "done":
                break
            await asyncio.sleep(0.05)
        async with client.get(f"{JOBS}/{one}/result") as r:
            assert r.status == 200 and len(await r.read()) == size
    assert (jobs.state_dir / DB_NAME).exists() and jobs.store.check_file() is None
