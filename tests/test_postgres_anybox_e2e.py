"""End to end: every box answers for every job (issue #21), on a real PostgreSQL server.

Two real ``gatekeeper run`` boxes share one store (``jobs.store: postgres``), in
front of the real ``engine-sim``; jobs are submitted to box A and run there. Box B
shows them (status, ``/events``), serves their result (relayed from A, streamed,
``Range`` included) and lists them for their own identity only; a ``DELETE`` on B
of a job running on A stops its generation on A; an unknown id is a 404 on B (never
421: ids name no box with this store); the relay endpoint refuses whoever is not a
box of the store; ``/status`` on either box shows both boxes and the whole queue,
and ``/metrics`` the boxes' gauges.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from pgserver import PgServer
from support import Proc, poll, resources_file, rules, start_gatekeeper

pytestmark = pytest.mark.usefixtures("no_traceback")

JOBS = "/_gatekeeper/jobs"
RELAY = "/relay/result"
VICTIM = {"X-User-Id": "victim", "Prefer": "respond-async"}
ATTACKER = {"X-User-Id": "attacker", "Prefer": "respond-async"}


def song(lyrics: str, seconds: float) -> dict[str, Any]:
    return {"lyrics": lyrics, "description": "pop", "seconds": seconds}


def box_rules(tmp_path: Path, schema: str) -> str:
    return rules(
        {
            "admission": {
                "max_in_flight": 1,
                "expected_seconds": 1,
                "on_client_disconnect": "cancel",
                "queue": {"per_client": 5, "client_key": "header:X-User-Id"},
            },
            "upstream": {"probe": {"interval": 0.5}},
            "jobs": {"store": "postgres", "postgres": {"dsn_env": "GK_E2E_DSN", "schema": schema}},
        },
        resources_file(tmp_path / "r.json"),
    )


def two_boxes(
    tmp_path: Path, procs: list[Proc], engine: str, schema: str
) -> tuple[tuple[str, str], tuple[str, str]]:
    """Boxes A and B on one store (each with its box_id, as behind HAProxy): their
    (proxy, admin) URLs."""
    text = box_rules(tmp_path, schema)
    out = []
    for name in ("a", "b"):
        state = tmp_path / f"state-{name}"
        proc, url, admin = start_gatekeeper(
            tmp_path, text, engine, "--state-dir", str(state), "--box-id", name
        )
        procs.append(proc)
        out.append((url, admin))
    return out[0], out[1]


async def submit(s: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str]) -> Any:
    async with s.post(url + "/generate", json=body, headers=headers) as r:
        assert r.status == 202, await r.text()
        return await r.json()


async def view(s: aiohttp.ClientSession, url: str, job_id: str) -> Any:
    async with s.get(f"{url}{JOBS}/{job_id}") as r:
        assert r.status == 200, await r.text()
        assert r.headers["X-Gatekeeper-Job"] == job_id
        return await r.json()


async def until(s: aiohttp.ClientSession, url: str, job_id: str, *states: str) -> Any:
    seen: list[Any] = []

    async def reached() -> bool:
        seen.append(await view(s, url, job_id))
        return bool(seen[-1]["state"] in states)

    await poll(reached, 20.0)
    return seen[-1]


async def events(s: aiohttp.ClientSession, url: str, job_id: str) -> list[Any]:
    """Every ``job`` event of ``/events`` until the stream ends (the job's final state)."""
    out = []
    async with s.get(f"{url}{JOBS}/{job_id}/events") as r:
        assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
        async for line in r.content:
            if line.startswith(b"data: "):
                out.append(json.loads(line[6:]))
    return out


async def status(s: aiohttp.ClientSession, admin: str) -> Any:
    async with s.get(admin + "/status") as r:
        assert r.status == 200
        return await r.json()


async def runner_of(
    dsn: str, schema: str, job_id: str, boxes: list[tuple[str, str]]
) -> tuple[tuple[str, str], tuple[str, str]]:
    """(the box that runs or ran ``job_id``, the other one), each as (proxy, admin) URLs:
    the job's ``run_box`` and that box's registered address (its admin listener). Which
    box runs a job is the shared queue's business; the tests only need to know it."""
    con = await asyncpg.connect(dsn)
    try:
        address = await con.fetchval(
            f"SELECT b.address FROM {schema}.jobs j JOIN {schema}.boxes b ON b.id = j.run_box"
            " WHERE j.id = $1",
            job_id,
        )
    finally:
        await con.close()
    (ran,) = [x for x in boxes if x[1] == address]
    (other,) = [x for x in boxes if x[1] != address]
    return ran, other


async def relay_secret(dsn: str, schema: str) -> str:
    con = await asyncpg.connect(dsn)
    try:
        return str(await con.fetchval(f"SELECT secret FROM {schema}.relay_secret"))
    finally:
        await con.close()


async def test_any_box_shows_streams_serves_lists_and_cancels_a_job_of_another(
    tmp_path: Path,
    procs: list[Proc],
    fresh_engine: tuple[Proc, str],
    http: aiohttp.ClientSession,
    pg_server: PgServer,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job submitted on A: B shows it and streams its events to the end; the box that
    did not run it serves its result (the same bytes as the one that did, a Range too);
    B lists it for its own identity only; another identity's guess is a 404 on B, not a
    421; a running job deleted on the box that does not run it is stopped on the one
    that does within a second or two."""
    monkeypatch.setenv("GK_E2E_DSN", pg_server.dsn)
    (a, a_admin), (b, b_admin) = two_boxes(tmp_path, procs, fresh_engine[1], pg_schema)
    both = [(a, a_admin), (b, b_admin)]

    job = await submit(http, a, song("one", 0.6), VICTIM)
    assert "." not in job["id"]  # no box prefix: any box answers for it
    watched = asyncio.create_task(events(http, b, job["id"]))
    assert (await view(http, b, job["id"]))["state"] in ("queued", "running")
    told = await asyncio.wait_for(watched, 20)
    assert told[-1]["state"] == "done" and told[-1]["id"] == job["id"]
    assert [e["state"] for e in told].count("done") == 1

    (ran, _), (other, _) = await runner_of(pg_server.dsn, pg_schema, job["id"], both)
    async with http.get(f"{ran}{JOBS}/{job['id']}/result") as r:
        assert r.status == 200
        mine = await r.read()
    async with http.get(f"{other}{JOBS}/{job['id']}/result") as r:  # relayed
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("audio/")
        assert r.headers["X-Gatekeeper-Job"] == job["id"]
        assert await r.read() == mine and mine[:4] == b"RIFF"
    ranged = {"Range": "bytes=4-99"}
    async with http.get(f"{other}{JOBS}/{job['id']}/result", headers=ranged) as r:
        assert r.status == 206
        assert r.headers["Content-Range"] == f"bytes 4-99/{len(mine)}"
        assert await r.read() == mine[4:100]

    async with http.get(f"{b}{JOBS}", headers={"X-User-Id": "victim"}) as r:
        assert r.status == 200
        assert [j["id"] for j in (await r.json())["jobs"]] == [job["id"]]
    async with http.get(f"{b}{JOBS}", headers={"X-User-Id": "attacker"}) as r:
        assert r.status == 200 and (await r.json())["jobs"] == []
    guessed = "a." + "A" * 24  # an id as box A named them under SQLite
    for bad in (guessed, "A" * 24):
        async with http.get(f"{b}{JOBS}/{bad}", headers=ATTACKER) as r:
            assert r.status == 404, await r.text()

    long = await submit(http, a, song("long", 30.0), VICTIM)
    await until(http, b, long["id"], "running")
    (ran, _), (other, _) = await runner_of(pg_server.dsn, pg_schema, long["id"], both)
    async with http.delete(f"{other}{JOBS}/{long['id']}") as r:
        assert r.status == 200, await r.text()
        deleted = await r.json()
    assert deleted["state"] == "cancelled" or deleted["cancel_requested"] is True
    ended = await until(http, ran, long["id"], "cancelled")
    assert ended["elapsed_seconds"] < 10  # stopped where it ran, long before its 30 s song
    assert (await view(http, other, long["id"]))["state"] == "cancelled"
    # The engine computes the cancelled song on (engine-sim ignores a closed connection):
    # end it, so that the boxes' stops and the engine's need not wait for it.
    async with http.post(fresh_engine[1] + "/_sim/finish") as r:
        assert r.status == 200


async def test_operators_see_one_system_and_the_relay_admits_only_boxes(
    tmp_path: Path,
    procs: list[Proc],
    fresh_engine: tuple[Proc, str],
    http: aiohttp.ClientSession,
    pg_server: PgServer,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With two jobs submitted to A, one running: /status on either box lists both boxes
    (with what each runs) and the whole queue, /metrics the boxes' gauges, gatekeeper
    status the same; the relay endpoint on the producing box's admin listener refuses a
    caller without the store's secret (403), and with it serves only a handle it knows
    (404 for a guess); the producing box stopped, the other answers 503 box_unreachable
    for its result."""
    monkeypatch.setenv("GK_E2E_DSN", pg_server.dsn)
    (a, a_admin), (b, b_admin) = two_boxes(tmp_path, procs, fresh_engine[1], pg_schema)
    both = [(a, a_admin), (b, b_admin)]
    first = await submit(http, a, song("first", 2.5), VICTIM)
    second = await submit(http, a, song("second", 2.5), ATTACKER)  # both run: two boxes
    await until(http, b, first["id"], "running")
    (ran, ran_admin), (other, _) = await runner_of(pg_server.dsn, pg_schema, first["id"], both)

    for admin in (a_admin, b_admin):

        async def whole(admin: str = admin) -> bool:
            doc = await status(http, admin)
            boxes = {x["address"]: x for x in doc.get("boxes", [])}
            q = doc.get("shared_queue") or {}
            return (
                set(boxes) == {a_admin, b_admin}
                and (q.get("waiting") or 0) + (q.get("running") or 0) == 2
                and boxes[ran_admin]["running"] >= 1
            )

        await poll(whole, 10.0)
    doc = await status(http, b_admin)
    by_addr = {x["address"]: x for x in doc["boxes"]}
    assert sum(x["running"] for x in doc["boxes"]) == doc["shared_queue"]["running"]
    assert by_addr[b_admin]["this"] is True and by_addr[a_admin]["this"] is False
    assert "generate" in [j["route"] for j in by_addr[ran_admin]["jobs"]]
    assert all(x["seen_age_seconds"] < 5 for x in doc["boxes"])
    assert first["id"] not in json.dumps(doc)  # ids are capabilities: never in /status
    shown = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gatekeeper", "status", "--admin", b_admin],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert shown.returncode == 0, shown.stderr
    # The counts move as the song ends (status_view's own tests pin the lines).
    assert re.search(r"all boxes +\d+ waiting, \d+ running on 2 box\(es\)", shown.stdout)
    assert f"at {a_admin}: seen" in shown.stdout and "(this box)" in shown.stdout
    async with http.get(b_admin + "/metrics") as r:
        text = await r.text()
    ran_id = by_addr[ran_admin]["id"]
    assert f'gatekeeper_box_heartbeat_age_seconds{{box="{ran_id}"}}' in text
    assert re.search(rf'gatekeeper_box_running_jobs{{box="{ran_id}"}} [12]\.0', text)
    assert re.search(r"gatekeeper_shared_queue_depth [01]\.0", text)

    await until(http, b, first["id"], "done")
    url = f"{ran_admin}{RELAY}/{first['id']}"
    async with http.get(url) as r:
        assert r.status == 403 and (await r.json())["reason"] == "forbidden"
    async with http.get(url, headers={"Authorization": "Gatekeeper-Box wrong"}) as r:
        assert r.status == 403
    async with http.get(f"{ran}{RELAY}/{first['id']}") as r:  # never on the public port
        assert r.status != 200
    secret = await relay_secret(pg_server.dsn, pg_schema)
    box = {"Authorization": f"Gatekeeper-Box {secret}"}
    async with http.get(url, headers=box) as r:
        assert r.status == 200 and (await r.read())[:4] == b"RIFF"
    async with http.get(f"{ran_admin}{RELAY}/{'A' * 24}", headers=box) as r:
        assert r.status == 404
    await until(http, b, second["id"], "done")

    # The box that kept a result is gone: the result cannot be had now, and the other says so.
    gone = next(p for p in procs if ran_admin.rsplit(":", 1)[1] in " ".join(p.argv))
    assert gone.stop() == 0
    procs.remove(gone)
    async with http.get(f"{other}{JOBS}/{first['id']}/result") as r:
        assert r.status == 503 and r.headers["Retry-After"] == "5", await r.text()
        assert (await r.json())["reason"] == "box_unreachable"
