"""End to end on the PostgreSQL store (issue #21): the real ``gatekeeper run`` with
``jobs.store: postgres`` in front of the real ``gatekeeper engine-sim``, on a real
PostgreSQL server (one per session, a fresh schema per test): async jobs are submitted,
run and served; their records are PostgreSQL's; a restarted box serves them again; a
webhook destination receives a job's events and a batch of 3 completes (issue #20 on
the shared store)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from pgserver import PgServer
from support import Proc, free_port, poll, resources_file, rules, start_gatekeeper
from webhook_receiver import Receiver

pytestmark = pytest.mark.usefixtures("no_traceback")

JOBS = "/_gatekeeper/jobs"
ASYNC = {"Prefer": "respond-async"}
SECRET = "whsec_" + base64.b64encode(b"gatekeeper-webhook-test-secret!!").decode()


async def _job(s: aiohttp.ClientSession, url: str, job_id: str) -> Any:
    async with s.get(f"{url}{JOBS}/{job_id}") as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def _rows(dsn: str, schema: str) -> list[asyncpg.Record]:
    con = await asyncpg.connect(dsn)
    try:
        return list(
            await con.fetch(f"SELECT id, state, run_box, body_box FROM {schema}.jobs ORDER BY seq")
        )
    finally:
        await con.close()


async def test_one_box_on_postgres_submits_runs_and_serves_jobs(
    tmp_path: Path,
    procs: list[Proc],
    fresh_engine: tuple[Proc, str],
    http: aiohttp.ClientSession,
    pg_server: PgServer,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two async jobs through one box on jobs.store: postgres: both done, results served
    (the engine's WAV), their rows in PostgreSQL done and run by this box; after a
    restart the box serves them again from the same database and state directory."""
    monkeypatch.setenv("GK_E2E_DSN", pg_server.dsn)
    text = rules(
        {
            "admission": {"max_in_flight": 1, "expected_seconds": 1, "queue": {"per_client": 5}},
            "upstream": {"probe": {"interval": 0.5}},
            "jobs": {
                "store": "postgres",
                "postgres": {"dsn_env": "GK_E2E_DSN", "schema": pg_schema},
            },
        },
        resources_file(tmp_path / "r.json"),
    )
    state = tmp_path / "state"
    proc, url, _ = start_gatekeeper(tmp_path, text, fresh_engine[1], "--state-dir", str(state))
    procs.append(proc)
    ids = []
    for lyrics in ("one", "two"):
        body = {"lyrics": lyrics, "description": "pop", "seconds": 0.3}
        async with http.post(url + "/generate", json=body, headers=ASYNC) as r:
            assert r.status == 202, await r.text()
            ids.append((await r.json())["id"])

    for job_id in ids:

        async def done(job_id: str = job_id) -> bool:
            return bool((await _job(http, url, job_id))["state"] == "done")

        await poll(done, 30)
    results = {}
    for job_id in ids:
        async with http.get(f"{url}{JOBS}/{job_id}/result") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("audio/")
            results[job_id] = await r.read()
            assert results[job_id][:4] == b"RIFF"
    rows = await _rows(pg_server.dsn, pg_schema)
    box = (state / "box-id").read_text().strip()
    assert [(r["id"], r["state"], r["run_box"], r["body_box"]) for r in rows] == [
        (i, "done", box, box) for i in ids
    ]

    assert proc.stop() == 0
    procs.remove(proc)
    proc, url, _ = start_gatekeeper(tmp_path, text, fresh_engine[1], "--state-dir", str(state))
    procs.append(proc)
    for job_id in ids:
        assert (await _job(http, url, job_id))["state"] == "done"
        async with http.get(f"{url}{JOBS}/{job_id}/result") as r:
            assert r.status == 200 and await r.read() == results[job_id]


async def _count(dsn: str, sql: str) -> int:
    con = await asyncpg.connect(dsn)
    try:
        return int(await con.fetchval(sql))
    finally:
        await con.close()


async def test_webhooks_and_a_batch_on_postgres(
    tmp_path: Path,
    procs: list[Proc],
    fresh_engine: tuple[Proc, str],
    http: aiohttp.ClientSession,
    pg_server: PgServer,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One box on jobs.store: postgres with a webhook destination: a job's job.queued,
    job.started and job.completed arrive in order, validly signed; a batch of 3 songs
    completes, each of its jobs announced too; the outbox in PostgreSQL drains to empty
    and the batch's row is there."""
    monkeypatch.setenv("GK_E2E_DSN", pg_server.dsn)
    (tmp_path / "hook.secret").write_text(SECRET + "\n")
    receiver = Receiver(SECRET)
    hook = await receiver.start(free_port())
    try:
        text = rules(
            {
                "admission": {"max_in_flight": 1, "expected_seconds": 1, "sample_interval": 0.1},
                "upstream": {"probe": {"interval": 0.5}},
                "routes": [
                    {
                        "name": "generate",
                        "match": {"methods": ["POST"], "path": "/generate/**"},
                        "action": "queue",
                    },
                    {
                        "name": "batch-generate",
                        "match": {"methods": ["POST"], "path": "/batch-generate/**"},
                        "action": "batch",
                        "batch": {"items": "/items", "each": "/generate", "shared": ["/seconds"]},
                    },
                ],
                "jobs": {
                    "store": "postgres",
                    "postgres": {"dsn_env": "GK_E2E_DSN", "schema": pg_schema},
                    "webhooks": {
                        "destinations": [{"name": "app", "url": hook, "secret_file": "hook.secret"}]
                    },
                },
            },
            resources_file(tmp_path / "r.json"),
        )
        state = tmp_path / "state"
        proc, url, _ = start_gatekeeper(tmp_path, text, fresh_engine[1], "--state-dir", str(state))
        procs.append(proc)
        song = {"lyrics": "one", "description": "pop", "seconds": 0.3}
        async with http.post(url + "/generate", json=song, headers=ASYNC) as r:
            assert r.status == 202, await r.text()
            job_id = (await r.json())["id"]
        items = [{"lyrics": f"[verse] {i}", "description": f"b{i}"} for i in range(3)]
        async with http.post(url + "/batch-generate", json={"items": items, "seconds": 0.3}) as r:
            assert r.status == 202, await r.text()
            location = r.headers["Location"]
            batch = await r.json()

        async def complete() -> bool:
            async with http.get(url + location) as r:
                return bool((await r.json())["state"] == "complete")

        await poll(complete, 60)

        async def all_announced() -> bool:
            return len(receiver.delivered("job.completed")) >= 4

        await poll(all_announced, 30)
        mine = [x.event for x in receiver.seen if x.data["id"] == job_id]
        assert [e for e in mine if e != "job.progress"] == [
            "job.queued",
            "job.started",
            "job.completed",
        ]
        assert all(x.valid and x.status == 200 for x in receiver.seen)
        done = {x.data["id"] for x in receiver.delivered("job.completed")}
        assert done == {job_id, *(j["id"] for j in batch["jobs"])}
        assert all(x.data["state"] == "done" for x in receiver.delivered("job.completed"))

        async def drained() -> bool:
            return await _count(pg_server.dsn, f"SELECT COUNT(*) FROM {pg_schema}.outbox") == 0

        await poll(drained, 30)
        sql = f"SELECT COUNT(*) FROM {pg_schema}.batches WHERE id = '{batch['id']}'"
        assert await _count(pg_server.dsn, sql) == 1
    finally:
        await receiver.stop()
