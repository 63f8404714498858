"""The job database deleted under the real ``gatekeeper`` (issue #18 §1).

``rm jobs.sqlite3`` while gatekeeper runs with a kept result: within a tick
the database is back at its path (a WARNING says so, and
``gatekeeper_state_db_rehomed_total`` counts it), new jobs are accepted and
kept, and after a restart every result is still there (without the check, SQLite
would have written on into the deleted inode and the restart found nothing).
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
from support import Proc, metric, rules, start_engine, start_gatekeeper, wait_metrics

JOBS = "/_gatekeeper/jobs"
ASYNC = {"Prefer": "respond-async"}


async def _done_job(s: aiohttp.ClientSession, base: str, size: int) -> str:
    async with s.get(f"{base}/_sim/stall?after={size}&seconds=0", headers=ASYNC) as r:
        assert r.status == 202, await r.text()
        job_id: str = (await r.json())["id"]
    for _ in range(400):
        async with s.get(f"{base}{JOBS}/{job_id}") as r:
            view: dict[str, Any] = await r.json()
        if view["state"] == "done":
            return job_id
        await asyncio.sleep(0.025)
    raise AssertionError(f"job {job_id} never done: {view}")


async def _result(s: aiohttp.ClientSession, base: str, job_id: str) -> tuple[int, int]:
    async with s.get(f"{base}{JOBS}/{job_id}/result") as r:
        return r.status, len(await r.read())


async def test_a_deleted_database_is_put_back_and_every_job_survives_a_restart(
    procs: list[Proc], tmp_path: Path
) -> None:
    engine, engine_url = start_engine(tmp_path, seconds=0.05)
    procs.append(engine)
    state = tmp_path / "state"
    text = rules(
        {
            "jobs": {"dir": str(state), "min_free_bytes": 0},
            "shutdown": {"linger": "0s"},
            "routes": [{"name": "gen", "match": {"path": "/_sim/stall"}, "action": "queue"}],
        }
    )
    gk, base, admin = start_gatekeeper(tmp_path, text, engine_url)
    procs.append(gk)
    async with aiohttp.ClientSession() as s:
        first = await _done_job(s, base, 1000)
        (state / "jobs.sqlite3").unlink()
        deleted = time.monotonic()
        page = await wait_metrics(
            admin, lambda t: metric(t, "gatekeeper_state_db_rehomed_total", 0) == 1
        )
        print(f"\njob database deleted -> put back within {time.monotonic() - deleted:.2f} s")
        assert metric(page, "gatekeeper_state_db_detached") == 0
        assert (state / "jobs.sqlite3").exists()
        second = await _done_job(s, base, 2000)
        assert await _result(s, base, first) == (200, 1000)
    assert "put back at its path" in gk.output()
    gk.signal(signal.SIGTERM)
    assert gk.wait(timeout=30) == 0

    again, base, _ = start_gatekeeper(tmp_path, text, engine_url)
    procs.append(again)
    async with aiohttp.ClientSession() as s:
        assert await _result(s, base, first) == (200, 1000)
        assert await _result(s, base, second) == (200, 2000)
