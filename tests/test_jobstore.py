"""The state directory: job rows in SQLite, bodies and results as files (issue #9)."""

from __future__ import annotations

import os
import secrets
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.files import ResultWriter
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.sqlite import SqliteJobStore
from gatekeeper.jobs.store import StateDirError


def new_id() -> str:
    return secrets.token_urlsafe(18)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteJobStore]:
    s = SqliteJobStore.open(tmp_path / "state")
    yield s
    s.close()


def add(
    store: SqliteJobStore,
    *,
    body: bytes = b"{}",
    held: bool = False,
    key: str | None = None,
    client: str = "10.0.0.1",
    created: float = 1000.0,
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
            target="/generate?x=1",
            headers=(("Content-Type", "application/json"),),
            coalesce_key=key,
            created=created,
            body_size=size,
        )
    )


def done(
    store: SqliteJobStore,
    finished: float,
    size: int = 100,
    status: int = 200,
    state: JobState = JobState.DONE,
    key: str | None = None,
) -> JobRecord:
    """A job that ran and ended in `state` at `finished`, with a `size`-byte result."""
    row = add(store, key=key)
    store.mark_running(row.id, finished - 1)
    store.set_result_head(row.id, status, "OK", (("Content-Type", "audio/wav"),))
    w = store.result_writer(row.id)
    w.write(b"r" * size)
    w.commit()
    return store.finish(row.id, state, None, finished)


def running(store: SqliteJobStore, size: int) -> tuple[JobRecord, ResultWriter]:
    """A running job whose result has `size` bytes so far (the caller ends the writer)."""
    row = add(store)
    store.mark_running(row.id, 1000.0)
    w = store.result_writer(row.id)
    w.write(b"p" * size)
    w.flush()
    return row, w


# -- rows ------------------------------------------------------------------------------------


def test_a_created_job_reads_back_with_every_field(store: SqliteJobStore) -> None:
    """create() returns the row get() reads back; headers keep order, duplicates, non-ASCII."""
    job_id = new_id()
    w = store.body_writer(job_id)
    w.write(b"abc")
    w.write(b"de")
    assert w.commit() == 5
    headers = (("X-A", "1"), ("X-A", "2"), ("X-Name", "歌"))
    row = store.create(
        JobRecord(
            id=job_id,
            route="generate",
            client="header:u1",
            held=True,
            method="POST",
            target="/generate?q=%20",
            headers=headers,
            coalesce_key="k1",
            created=1234.5,
            body_size=5,
        )
    )
    assert row.state is JobState.QUEUED and row.headers == headers and row.held
    assert store.get(job_id) == row
    assert store.get(new_id()) is None
    body = store.body_path(job_id)
    assert body is not None and body.read_bytes() == b"abcde"


def test_seq_is_arrival_order_and_never_reused(tmp_path: Path) -> None:
    """seq increases with every create, also across a reopen and after rows were deleted."""
    s = SqliteJobStore.open(tmp_path)
    first = [add(s) for _ in range(3)]
    for r in first:
        s.finish(r.id, JobState.EXPIRED, "gone", 0.0)
    s.evict(now=100.0, keep=1.0, max_bytes=1)  # deletes the expired rows (older than 7*keep)
    assert all(s.get(r.id) is None for r in first)
    s.close()
    s = SqliteJobStore.open(tmp_path)
    later = add(s)
    s.close()
    assert [r.seq for r in first] == sorted(r.seq for r in first)
    assert later.seq > max(r.seq for r in first)


def test_queued_and_running_lists_are_in_arrival_order(store: SqliteJobStore) -> None:
    """queued() and running() list by seq; mark_running moves a job from one to the other."""
    rows = [add(store) for _ in range(4)]
    store.mark_running(rows[2].id, 1.0)
    store.mark_running(rows[0].id, 2.0)
    assert [r.id for r in store.queued()] == [rows[1].id, rows[3].id]
    assert [r.id for r in store.running()] == [rows[0].id, rows[2].id]
    assert store.running()[1].started == 1.0


def test_finish_deletes_the_body_and_is_final(store: SqliteJobStore) -> None:
    """finish() sets state, reason and time, deletes the body; a second finish is an error."""
    row = add(store)
    store.mark_running(row.id, 5.0)
    store.set_progress(row.id, 0.5, 10)
    assert store.get(row.id).progress == 0.5  # type: ignore[union-attr]
    out = store.finish(row.id, JobState.FAILED, "upstream_error", 9.0)
    assert (out.state, out.reason, out.finished, out.result_bytes) == (
        JobState.FAILED,
        "upstream_error",
        9.0,
        10,
    )
    assert store.body_path(row.id) is None
    with pytest.raises(ValueError, match="failed"):
        store.finish(row.id, JobState.CANCELLED, None, 10.0)
    with pytest.raises(ValueError, match="not a final state"):
        store.finish(row.id, JobState.RUNNING, None, 10.0)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda s, i: s.mark_running(i, 1.0), KeyError),
        (lambda s, i: s.finish(i, JobState.DONE, None, 1.0), KeyError),
        (lambda s, i: s.add_coalesced(i), KeyError),
        (lambda s, i: s.set_progress(i, None, 0), KeyError),
    ],
)
def test_an_unknown_job_id_is_a_key_error(store: SqliteJobStore, call: object, error: type) -> None:
    """Changing a job that does not exist raises KeyError, never silently does nothing."""
    with pytest.raises(error):
        call(store, new_id())  # type: ignore[operator]


def test_a_job_id_that_is_not_a_file_name_is_refused(store: SqliteJobStore) -> None:
    """Ids become file names: a path-like id is refused before any file is touched."""
    for bad in ("../x", "a/b", "", "x" * 65, "a.b"):
        with pytest.raises(ValueError):
            store.body_writer(bad)
        with pytest.raises(ValueError):
            store.result_path(bad)


def test_a_job_id_with_a_box_is_a_file_name() -> None:
    """A "<box_id>.<token>" id (issue #11 §2) is accepted at the file boundary; a '.' in
    any other shape is not."""
    from gatekeeper.jobs.files import SAFE_ID

    assert SAFE_ID.fullmatch("box-a." + "A" * 24)
    for bad in ("a..x" + "A" * 22, ".a" + "A" * 23, "a.b" + "A" * 22, "A" * 24 + ".a"):
        assert not SAFE_ID.fullmatch(bad)


def test_add_coalesced_counts(store: SqliteJobStore) -> None:
    """add_coalesced returns the running count and the row shows it."""
    row = add(store)
    assert [store.add_coalesced(row.id) for _ in range(3)] == [1, 2, 3]
    assert store.get(row.id).coalesced == 3  # type: ignore[union-attr]


# -- coalescing --------------------------------------------------------------------------------


def test_find_coalesce_prefers_a_live_job_then_the_newest_kept_2xx(store: SqliteJobStore) -> None:
    """A queued/running job wins; else the newest done 2xx result within keep with its file."""
    old = done(store, 100.0, key="k")
    new = done(store, 200.0, key="k")
    done(store, 250.0, key="k", status=500)  # a failed answer is never replayed
    done(store, 260.0, key="k", state=JobState.FAILED)
    done(store, 270.0, key="other")
    assert store.find_coalesce("k", now=300.0, keep=1000.0) == store.get(new.id)
    assert store.find_coalesce("k", now=300.0, keep=50.0) is None  # both older than keep
    (store.directory / "results" / new.id).unlink()  # its file went: the older one serves
    assert store.find_coalesce("k", now=300.0, keep=1000.0) == store.get(old.id)
    live = add(store, key="k")
    assert store.find_coalesce("k", now=300.0, keep=1000.0) == live
    store.mark_running(live.id, 300.0)
    assert store.find_coalesce("k", now=300.0, keep=1000.0).id == live.id  # type: ignore[union-attr]
    assert store.find_coalesce("nothing", now=300.0, keep=1000.0) is None


# -- files -------------------------------------------------------------------------------------


def test_a_body_is_invisible_until_committed(store: SqliteJobStore) -> None:
    """The body is a .tmp file until commit; abort removes it and may be called again."""
    job_id = new_id()
    w = store.body_writer(job_id)
    w.write(b"x" * 10)
    assert store.body_path(job_id) is None
    w.abort()
    w.abort()
    assert list((store.directory / "bodies").iterdir()) == []
    w = store.body_writer(job_id)
    w.write(b"y")
    w.commit()
    w.abort()  # after commit: nothing to do
    assert store.body_path(job_id) is not None


def test_a_result_is_partial_while_running_then_final(store: SqliteJobStore) -> None:
    """result_path gives the growing .part file, then the final file; bytes are counted."""
    row = add(store)
    store.mark_running(row.id, 1.0)
    assert store.result_path(row.id) is None
    w = store.result_writer(row.id)
    w.write(b"data: 1\n\n")
    part = store.result_path(row.id)
    assert part is not None and part.name.endswith(".part")
    assert part.read_bytes() == b"data: 1\n\n"  # visible to a follower without flush
    w.write(b"data: 2\n\n")
    assert w.bytes_written == 18 == store.results_bytes()
    assert w.commit() == 18
    final = store.result_path(row.id)
    assert final is not None and final.name == row.id and final.read_bytes().count(b"data") == 2
    assert store.get(row.id).result_bytes == 18  # type: ignore[union-attr]
    assert store.results_bytes() == 18


def test_an_aborted_result_is_deleted(store: SqliteJobStore) -> None:
    """abort() deletes the partial result and its bytes leave results_bytes."""
    row, first = running(store, 50)
    assert store.results_bytes() == 50
    first.abort()
    assert store.results_bytes() == 0
    again = store.result_writer(row.id)  # a retried run starts from an empty file
    again.write(b"q" * 3)
    again.abort()
    w = store.result_writer(row.id)
    w.write(b"z" * 7)
    w.abort()
    w.abort()
    assert store.result_path(row.id) is None and store.results_bytes() == 0


def test_results_bytes_is_counted_from_disk_on_open(tmp_path: Path) -> None:
    """A reopened store knows the bytes of the results already there."""
    s = SqliteJobStore.open(tmp_path)
    done(s, 10.0, size=300)
    done(s, 20.0, size=200)
    s.close()
    s = SqliteJobStore.open(tmp_path)
    assert s.results_bytes() == 500
    s.close()


# -- eviction ----------------------------------------------------------------------------------


def test_evict_by_keep_expires_old_final_results(store: SqliteJobStore) -> None:
    """Final jobs finished more than keep ago become expired and lose their files."""
    a = done(store, 100.0)
    b = done(store, 200.0, state=JobState.FAILED)
    c = done(store, 300.0)
    q = add(store)
    r, w = running(store, 40)
    assert store.evict(now=400.0, keep=150.0, max_bytes=10**9) == [a.id, b.id]
    for row in (a, b):
        got = store.get(row.id)
        assert got is not None and (got.state, got.reason) == (JobState.EXPIRED, "keep")
        assert store.result_path(row.id) is None
    assert store.get(c.id).state is JobState.DONE  # type: ignore[union-attr]
    assert store.get(q.id).state is JobState.QUEUED  # type: ignore[union-attr]
    assert store.get(r.id).state is JobState.RUNNING  # type: ignore[union-attr]
    assert store.results_bytes() == 100 + 40
    assert store.evict(now=400.0, keep=150.0, max_bytes=10**9) == []
    w.abort()


def test_evict_by_max_bytes_takes_the_oldest_first_and_never_live_jobs(
    store: SqliteJobStore,
) -> None:
    """Over max_bytes, the oldest-finished results go first until under; live jobs stay."""
    r, w = running(store, 150)
    q = add(store)
    ids = [done(store, t).id for t in (30.0, 10.0, 20.0)]  # 100 bytes each, out of order
    assert store.results_bytes() == 450
    assert store.evict(now=40.0, keep=1000.0, max_bytes=250) == [ids[1], ids[2]]
    assert store.results_bytes() == 250
    assert store.get(ids[1]).reason == "max_bytes"  # type: ignore[union-attr]
    # Smaller than the running job's partial result alone: every kept result goes, it stays.
    assert store.evict(now=40.0, keep=1000.0, max_bytes=1) == [ids[0]]
    assert store.results_bytes() == 150
    assert store.get(r.id).state is JobState.RUNNING  # type: ignore[union-attr]
    assert store.result_path(r.id) is not None
    assert store.get(q.id).state is JobState.QUEUED  # type: ignore[union-attr]
    assert store.body_path(q.id) is not None
    w.write(b"p")  # the running job's writer still works after the evictions
    assert w.commit() == 151


def test_expired_rows_are_deleted_after_seven_keeps(store: SqliteJobStore) -> None:
    """An expired job answers as expired for 7 * keep after it finished, then is forgotten."""
    a = done(store, 100.0)
    store.evict(now=200.0, keep=50.0, max_bytes=10**9)
    assert store.get(a.id).state is JobState.EXPIRED  # type: ignore[union-attr]
    store.evict(now=100.0 + 7 * 50.0 - 1, keep=50.0, max_bytes=10**9)
    assert store.get(a.id) is not None
    store.evict(now=100.0 + 7 * 50.0, keep=50.0, max_bytes=10**9)
    assert store.get(a.id) is None


# -- opening -----------------------------------------------------------------------------------


def test_open_lays_out_the_directory(tmp_path: Path) -> None:
    """open creates the directory 0o700 with the database (WAL), bodies/ and results/."""
    d = tmp_path / "a" / "b"
    SqliteJobStore.open(d).close()
    assert d.stat().st_mode & 0o777 == 0o700
    assert {p.name for p in d.iterdir()} >= {"jobs.sqlite3", "bodies", "results", "lock"}
    with sqlite3.connect(d / "jobs.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_ring_made_before_issue_20_gets_its_rounds_and_keeps_the_order(tmp_path: Path) -> None:
    """A state directory whose fairness ring has no rounds (``ring(client, turn)`` and
    its ``ring_turn`` index, no ``ring_clock``: before issue #20 §3) opens: the ring gets
    its column, the round in service starts at 0, the queue keeps its order, and a
    client arriving after a claim takes the round in service."""
    d = tmp_path / "state"
    s = SqliteJobStore.open(d)
    names = {add(s, client=c).id: n for c, n in (("A", "A1"), ("A", "A2"), ("B", "B1"))}
    s.close()
    with sqlite3.connect(d / "jobs.sqlite3") as db:
        db.executescript(
            "DROP TABLE ring; DROP TABLE ring_clock;"
            " CREATE TABLE ring (client TEXT PRIMARY KEY, turn INTEGER NOT NULL);"
            " CREATE INDEX ring_turn ON ring (turn);"
        )
    s = SqliteJobStore.open(d)
    try:
        first = s.claim_next(1.0)
        assert first is not None and names[first.id] == "A1"
        names[add(s, client="C").id] = "C1"
        order = ["A1"]
        while (row := s.claim_next(1.0)) is not None:
            order.append(names[row.id])
    finally:
        s.close()
    assert order == ["A1", "B1", "C1", "A2"]


def test_a_second_opener_is_refused_while_the_lock_is_held(tmp_path: Path) -> None:
    """Another gatekeeper on the same directory gets StateDirError naming the holder's pid."""
    first = SqliteJobStore.open(tmp_path)
    with pytest.raises(StateDirError, match=rf"another gatekeeper \(pid {os.getpid()}\)") as e:
        SqliteJobStore.open(tmp_path)
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)
    first.close()
    SqliteJobStore.open(tmp_path).close()  # released on close


@pytest.mark.slow  # a second real process
def test_a_second_process_is_refused_too(tmp_path: Path) -> None:
    """The lock holds across processes: a second process cannot open the directory."""
    first = SqliteJobStore.open(tmp_path)
    try:
        out = subprocess.run(
            [sys.executable, "-c", OPEN_SCRIPT, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        first.close()
    assert out.returncode == 2, out.stderr
    assert "another gatekeeper" in out.stdout


OPEN_SCRIPT = """
import sys
from pathlib import Path
from gatekeeper.jobs.sqlite import SqliteJobStore
from gatekeeper.jobs.store import StateDirError
try:
    SqliteJobStore.open(Path(sys.argv[1]))
except StateDirError as exc:
    print(exc)
    sys.exit(2)
"""


def test_a_path_under_a_regular_file_is_refused(tmp_path: Path) -> None:
    """Not creatable, even as root: StateDirError in one line naming the directory."""
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StateDirError, match="cannot be created") as e:
        SqliteJobStore.open(f / "state")
    assert str(f / "state") in str(e.value) and "\n" not in str(e.value)


def test_a_regular_file_as_the_directory_is_refused(tmp_path: Path) -> None:
    """jobs.dir naming a file is 'not a directory'."""
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StateDirError, match="not a directory"):
        SqliteJobStore.open(f)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o500 directory")
def test_an_unwritable_directory_is_refused(tmp_path: Path) -> None:
    """A directory without write permission fails at open, not at the first job."""
    d = tmp_path / "ro"
    d.mkdir(mode=0o500)
    try:
        with pytest.raises(StateDirError, match="not writable"):
            SqliteJobStore.open(d)
    finally:
        d.chmod(0o700)


def test_a_corrupt_database_is_refused(tmp_path: Path) -> None:
    """A jobs.sqlite3 that is not a database is StateDirError, not a traceback later."""
    (tmp_path / "jobs.sqlite3").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateDirError, match=r"jobs\.sqlite3"):
        SqliteJobStore.open(tmp_path)
    SqliteJobStore.open(tmp_path / "other").close()  # the lock was released on the failure path
    (tmp_path / "jobs.sqlite3").unlink()
    SqliteJobStore.open(tmp_path).close()


def test_a_database_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    """A newer gatekeeper's database is not guessed at."""
    SqliteJobStore.open(tmp_path).close()
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StateDirError, match="schema version 99"):
        SqliteJobStore.open(tmp_path)


# -- recovery after a real kill -9 ---------------------------------------------------------------

# Creates jobs in this order, then is killed mid-write (a body .tmp and a result .part open):
#   a async queued, d async running (partial result), b held queued, c async queued,
#   e async done (result committed), f: body being written, never created.
KILL_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from gatekeeper.jobs.record import JobRecord
    from gatekeeper.jobs.sqlite import SqliteJobStore
    from gatekeeper.core.vocab import JobState

    store = SqliteJobStore.open(Path(sys.argv[1]))
    ids = dict(zip("adbcef", json.loads(sys.argv[2])))

    def add(name, held=False):
        w = store.body_writer(ids[name])
        w.write(name.encode() * 10)
        store.create(JobRecord(id=ids[name], route="generate", client="c", held=held,
                               method="POST", target="/generate", headers=(),
                               coalesce_key="key-" + name, created=time.time(),
                               body_size=w.commit()))

    add("a"); add("d"); add("b", held=True); add("c"); add("e")
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


def run_and_kill(directory: Path, ids: list[str]) -> None:
    import json

    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(directory), json.dumps(ids)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30.0)
        line = proc.stdout.readline() if ready else b""
        assert line == b"ready\n", proc.stderr.read() if proc.stderr else b""
        time.sleep(0.05)  # let it append to the partial result for a while, then kill it
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
def test_recovery_after_kill_9_keeps_queue_order_and_done_results(
    tmp_path: Path, retry: bool
) -> None:
    """After kill -9: queued async jobs keep their order, the done result is still served,
    the running job is failed "interrupted" (or requeued in its place with retry_interrupted),
    the held job is cancelled "restart", partial and temp files are gone."""
    ids = [new_id() for _ in range(6)]
    a, d, b, c, e, f = ids
    run_and_kill(tmp_path, ids)
    assert (tmp_path / "bodies" / f"{f}.tmp").exists()
    assert (tmp_path / "results" / f"{d}.part").stat().st_size > 500

    store = SqliteJobStore.open(tmp_path)  # the dead process's lock went with it
    try:
        assert store.running()[0].id == d
        changed = store.recover(now=5000.0, retry_interrupted=retry)
        got = {r.id: r for r in changed}
        assert [r.id for r in changed] == [d, b]  # by seq
        assert (got[b].state, got[b].reason) == (JobState.CANCELLED, "restart")
        if retry:
            assert got[d].state is JobState.QUEUED and got[d].started is None
            assert [r.id for r in store.queued()] == [a, d, c]
            assert store.body_path(d) is not None
        else:
            assert (got[d].state, got[d].reason, got[d].finished) == (
                JobState.FAILED,
                "interrupted",
                5000.0,
            )
            assert [r.id for r in store.queued()] == [a, c]
        assert store.running() == []
        assert store.result_path(d) is None
        for job in (a, c):
            path = store.body_path(job)
            assert path is not None and len(path.read_bytes()) == 10
        assert store.body_path(b) is None
        assert sorted(p.name for p in (tmp_path / "bodies").iterdir()) == sorted(
            [a, c] + ([d] if retry else [])
        )
        assert [p.name for p in (tmp_path / "results").iterdir()] == [e]
        kept = store.find_coalesce("key-e", now=time.time(), keep=3600.0)
        assert (
            kept is not None
            and kept.id == e
            and kept.result_headers == (("Content-Type", "audio/wav"),)
        )
        assert store.result_path(e).read_bytes() == b"E" * 1000  # type: ignore[union-attr]
        assert store.results_bytes() == 1000
        assert store.recover(now=5001.0, retry_interrupted=retry) == []  # idempotent
    finally:
        store.close()


def test_close_releases_the_lock_even_when_the_database_will_not_close(tmp_path: Path) -> None:
    """A database whose close fails (a broken file, a fault) still lets go of the state
    directory: the lock's descriptor is closed (no leak, no ResourceWarning at collection)
    and another store may open the directory."""
    s = SqliteJobStore.open(tmp_path)

    class Broken:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def close(self) -> None:
            self.db.close()
            raise sqlite3.OperationalError("disk I/O error")

    s._db = Broken(s._db)  # type: ignore[assignment]
    with pytest.raises(sqlite3.OperationalError):
        s.close()
    assert s._lock.closed
    SqliteJobStore.open(tmp_path).close()
