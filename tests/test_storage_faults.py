"""Storage faults never wedge the box (issue #18 §1), in-process.

Every method of the ``JobStore`` Protocol, each in turn, raises a storage fault
(SQLite's "database or disk is full", ENOSPC, EIO, EROFS) while jobs arrive and
run; then the fault goes away. Whatever failed: every answer was JSON (never
aiohttp's text/plain 500), the slot was released exactly once (in-flight back
to 0, no repeated release), each job ended (done, or failed ``storage_error``),
no failed job's result is served as a 200, the background tick still runs, and
a job submitted after the fault is dispatched and done.
"""

from __future__ import annotations

import asyncio
import errno
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from support import eventually, resources_file

from gatekeeper.app.state import AppState
from gatekeeper.app.wiring import build_proxy_app, create_state
from gatekeeper.config import load_config
from gatekeeper.enginesim import SimConfig, create_app
from gatekeeper.jobs import dbwatch
from gatekeeper.jobs.floor import DiskFloor
from gatekeeper.jobs.guard import StorageError
from gatekeeper.jobs.service import JobService
from gatekeeper.jobs.store import JobStore

ServerFactory = Callable[..., Awaitable[TestServer]]
ClientFactory = Callable[..., Awaitable[TestClient]]

JOBS = "/_gatekeeper/jobs"
ASYNC = {"Prefer": "respond-async"}
ANSWER_BYTES = 300_000  # several chunks: a fault can land mid-answer

# Every method of the Protocol a running box calls (recover, queued and running are
# called at start only; close at stop: they are covered by the same guard).
METHODS = (
    "create",
    "get",
    "find_coalesce",
    "add_coalesced",
    "mark_running",
    "set_result_head",
    "set_progress",
    "finish",
    "evict",
    "results_bytes",
    "body_target",
    "body_path",
    "result_writer",
    "result_path",
    "result_writer.write",
    "result_writer.commit",
    "check_file",  # the database's place, asked by the tick (jobs.dbwatch)
)
FAULTS: tuple[BaseException, ...] = (
    sqlite3.OperationalError("database or disk is full"),
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EIO, "Input/output error"),
    OSError(errno.EROFS, "Read-only file system"),
)


class Faults:
    """Makes one method of a store (or of the result writers it hands out) raise."""

    def __init__(self, store: JobStore, method: str, fault: BaseException):
        self.store, self.method, self.fault = store, method, fault
        self.armed = False
        self.hits = 0
        name, _, writer_method = method.partition(".")
        original = getattr(store, name)

        def faulty(*args: Any, **kwargs: Any) -> Any:
            if self.armed and not writer_method:
                self.hits += 1
                raise self.fault
            result = original(*args, **kwargs)
            if writer_method:
                inner = getattr(result, writer_method)

                def broken(*a: Any, **k: Any) -> Any:
                    if self.armed:
                        self.hits += 1
                        raise self.fault
                    return inner(*a, **k)

                setattr(result, writer_method, broken)
            return result

        setattr(store, name, faulty)  # the instance attribute shadows the method


def _store(jobs: JobService) -> Any:
    """The store the service was given (the guard, where there is one, wraps it)."""
    return getattr(jobs.store, "inner", jobs.store)


@pytest.fixture
async def engine(aiohttp_server: ServerFactory) -> TestServer:
    return await aiohttp_server(
        create_app(SimConfig(seconds=0.05, burn_cpu=False, memory_mb=0, progress_interval=0.05))
    )


async def _box(
    engine: TestServer, aiohttp_client: ClientFactory, tmp_path: Path, **jobs: Any
) -> tuple[AppState, TestClient]:
    doc: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:1",
        "upstream": {"url": str(engine.make_url("")).rstrip("/")},
        "admission": {"max_in_flight": 1, "queue": {"per_client": 50}},
        "jobs": {"min_free_bytes": 0, **jobs},
        "routes": [{"name": "big", "match": {"path": "/download"}, "action": "queue"}],
    }
    doc = {
        **doc,
        "admission": {**doc["admission"], **resources_file(tmp_path / "calm.json")["admission"]},
    }
    st = await create_state(load_config(yaml.safe_dump(doc)), state_dir=tmp_path / "state")
    st.set_upstream_up(True)  # no probe runs here: a queued job needs the engine seen up
    client = await aiohttp_client(build_proxy_app(st, monitor=False, probe=False))
    return st, client


async def _json(resp: Any) -> dict[str, Any]:
    assert resp.content_type == "application/json", (resp.status, await resp.text())
    body: dict[str, Any] = await resp.json()
    return body


async def _submit(client: TestClient, n: int) -> tuple[int, dict[str, Any]]:
    """Job ``n``: an answer of ANSWER_BYTES + n bytes; a body, so it has a body file."""
    url = f"/download?bytes={ANSWER_BYTES + n}"
    async with client.get(url, headers=ASYNC, data=b"x" * (n + 1)) as r:
        return r.status, await _json(r)


async def _state(client: TestClient, job_id: str) -> dict[str, Any]:
    async with client.get(f"{JOBS}/{job_id}") as r:
        return await _json(r)


@pytest.mark.slow  # in process, but ~0.6-1.4 s per store call: the fast tier stays under a minute
@pytest.mark.parametrize("method", METHODS)
async def test_a_store_fault_at_any_call_never_wedges_the_queue(
    engine: TestServer,
    aiohttp_client: ClientFactory,
    tmp_path: Path,
    method: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dbwatch, "RETRY_SECONDS", 0.1)  # check_file: tried again soon
    # evict runs after a job is done once the results pass jobs.max_bytes
    extra = {"max_bytes": 1} if method == "evict" else {}
    st, client = await _box(engine, aiohttp_client, tmp_path, **extra)
    jobs = st.jobs
    assert jobs is not None
    fault = FAULTS[METHODS.index(method) % len(FAULTS)]
    faults = Faults(_store(jobs), method, fault)
    tick = jobs._task
    assert tick is not None
    faults.armed = True
    ids: list[str] = []
    sizes: dict[str, int] = {}
    for n in (0, 1, 1):  # one runs, one waits, and one more coalesces with it
        status, body = await _submit(client, n)
        assert status in (202, 503), body
        if status == 503:
            assert body["reason"] == "storage_error" and body["detail"], body
        else:
            ids.append(body["id"])
            sizes[body["id"]] = ANSWER_BYTES + n
    await asyncio.sleep(0.4)  # the jobs run (or fail) under the fault
    for job_id in ids:  # every answer is JSON while it lasts
        async with client.get(f"{JOBS}/{job_id}/result") as r:
            await _json(r) if r.status != 200 else await r.read()
    faults.armed = False
    assert faults.hits > 0, f"{method} was never called"

    async def ended() -> bool:
        states = [(await _state(client, i))["state"] for i in ids]
        return all(s in ("done", "failed", "expired") for s in states)

    for _ in range(100):
        if await ended():
            break
        await asyncio.sleep(0.05)
    assert await ended()
    assert await eventually(lambda: st.gate.in_flight == 0)
    assert st.gate.repeat_releases == 0
    assert not tick.done(), "the jobs tick ended"
    for job_id in ids:
        view = await _state(client, job_id)
        if method == "evict" and view["state"] == "expired":
            continue  # done, then evicted (jobs.max_bytes: 1)
        assert view["state"] == "done" or view["reason"] == "storage_error", view
        async with client.get(f"{JOBS}/{job_id}/result") as r:
            if view["state"] == "done":
                assert r.status == 200
                assert len(await r.read()) == sizes[job_id]  # whole, never a .part
            else:
                assert r.status != 200, "a failed job's result was served as complete"
                await _json(r)
    # The fault is gone: the queue serves the next job to its end (a database that
    # could not be checked is asked again after dbwatch.RETRY_SECONDS).
    assert await eventually(lambda: jobs.db.detached is None, timeout=3)
    status, body = await _submit(client, 9)
    assert status == 202, body
    for _ in range(100):
        view = await _state(client, body["id"])
        if view["state"] in ("done", "expired"):
            break
        await asyncio.sleep(0.05)
    assert view["state"] == "done" or (method == "evict" and view["state"] == "expired"), view
    assert await eventually(lambda: st.gate.in_flight == 0)


async def test_a_tick_step_that_raises_does_not_end_the_tick(
    engine: TestServer, aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """``dispatch`` raising (any bug) is logged; the tick runs on and serves the queue."""
    st, client = await _box(engine, aiohttp_client, tmp_path)
    jobs = st.jobs
    assert jobs is not None and jobs._task is not None
    real = jobs.dispatch
    calls = 0

    def broken() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("a bug in dispatch")

    jobs.dispatch = broken  # type: ignore[method-assign]
    assert await eventually(lambda: calls >= 2)
    assert not jobs._task.done()
    jobs.dispatch = real  # type: ignore[method-assign]
    status, body = await _submit(client, 0)
    assert status == 202
    assert await eventually(
        lambda: jobs.find(body["id"]) is not None and jobs.find(body["id"]).state == "done"
    )  # type: ignore[union-attr]


async def test_below_the_floor_submissions_are_refused_and_accepted_again(
    engine: TestServer, aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """jobs.min_free_bytes: below it a new job gets 503 storage_full (JSON, Retry-After),
    counted under the reason; the gauge says how much is free; space back: accepted."""
    st, client = await _box(engine, aiohttp_client, tmp_path, min_free_bytes=1000)
    jobs = st.jobs
    assert jobs is not None
    free = [10]
    jobs.floor = DiskFloor(jobs.state_dir, lambda _: free[0])
    jobs.floor.sample(0.0, 1000)
    status, body = await _submit(client, 0)
    assert status == 503 and body["reason"] == "storage_full" and body["detail"], body
    assert body["retry_after"] == st.config.admission.retry_after_default
    text = st.metrics.registry.get_sample_value
    assert text("gatekeeper_state_free_bytes") == 10
    assert text("gatekeeper_rejections_total", {"route": "big", "reason": "storage_full"}) == 1
    free[0] = 10**9
    assert await eventually(lambda: not jobs.floor.below(1000), timeout=3)
    status, body = await _submit(client, 0)
    assert status == 202, body


def test_state_disk_low_follows_min_free_bytes() -> None:
    cfg = load_config("jobs:\n  min_free_bytes: 2147483648\n")
    (low,) = [r for r in cfg.alerts.rules if r.alert == "GatekeeperStateDiskLow"]
    assert (low.signal, low.op, low.threshold) == ("state_free_bytes", "<", 2147483648)


# The engine's 200 (served by aiohttp's FileResponse) and its own 4xx (streamed).
@pytest.mark.parametrize("query", ["bytes=5000", "bytes=many"])
async def test_a_result_file_deleted_is_a_json_answer_not_a_500(
    engine: TestServer, aiohttp_client: ClientFactory, tmp_path: Path, query: str
) -> None:
    """A kept result whose file went (deleted by hand, a broken disk) is answered in JSON,
    never a text/plain 500 nor a 200 with a short body."""
    st, client = await _box(engine, aiohttp_client, tmp_path)
    jobs = st.jobs
    assert jobs is not None
    async with client.get(f"/download?{query}", headers=ASYNC) as r:
        job_id = (await _json(r))["id"]
    for _ in range(100):
        if (await _state(client, job_id))["state"] in ("done", "failed"):
            break
        await asyncio.sleep(0.05)
    result = jobs.store.result_path(job_id)
    assert result is not None
    result.unlink()
    async with client.get(f"{JOBS}/{job_id}/result") as r:
        body = await _json(r)
        assert r.status == 410 and body["reason"] == "result_gone", body
        assert body["detail"] and body["state"] in ("done", "failed"), body


@pytest.mark.parametrize("method", ["recover", "queued"])
async def test_a_store_that_fails_at_start_says_so_in_one_line(
    engine: TestServer, aiohttp_client: ClientFactory, tmp_path: Path, method: str
) -> None:
    """The calls made only at start (recover, queued) raise one StorageError naming the
    call and the cause; close never raises (the store is released at any rate)."""
    st, _client = await _box(engine, aiohttp_client, tmp_path)
    jobs = st.jobs
    assert jobs is not None
    faults = Faults(_store(jobs), method, OSError(errno.EIO, "Input/output error"))
    faults.armed = True
    with pytest.raises(StorageError) as err:
        jobs.start()
    assert str(err.value) == f"the job store failed ({method}): Input/output error"
    assert err.value.status == 503 and err.value.reason == "storage_error"
    faults.armed = False
    failing = Faults(_store(jobs), "close", OSError(errno.EIO, "Input/output error"))
    failing.armed = True
    jobs.store.close()  # the guard's close never raises
    assert failing.hits == 1
    failing.armed = False  # the real close, so the lock file is not left open
