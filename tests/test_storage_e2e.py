"""A full disk under the real ``gatekeeper`` and engine-sim (issue #18 §1).

The state directory sits on a real 8 MiB tmpfs the test mounts (root only: it
skips without the privilege, and fails under ``GATEKEEPER_REQUIRE_E2E=1``). A
job runs whose answer cannot fit, and the test fills the file system while the
engine is still computing it. Then: the slot is released (in-flight 0), the job
is ``failed``/``storage_error`` and its result is never a 200; the job queued
behind it waits (it is not failed) and new submissions get ``503 storage_full``
(JSON, Retry-After); once the space returns, the queued job runs and new jobs
are accepted, by themselves; SIGTERM with the disk full again exits at once.
The time from "space returned" to "the queued job is running" is printed.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import Proc, fill_fs, metric, rules, small_tmpfs, start_engine, start_gatekeeper

JOBS = "/_gatekeeper/jobs"
ASYNC = {"Prefer": "respond-async"}
MIN_FREE = 2 * 1024**2
FIRST, TAIL = 1024**2, 6 * 1024**2  # the big job: 1 MiB, a pause, then 6 MiB that cannot fit
ENGINE_SECONDS = 0.2


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs mounted for this test, unmounted after it."""
    with small_tmpfs(tmp_path / "fs", "8m") as mnt:
        yield mnt


async def _json(r: aiohttp.ClientResponse) -> dict[str, Any]:
    assert r.content_type == "application/json", (r.status, await r.text())
    body: dict[str, Any] = await r.json()
    return body


async def _submit(s: aiohttp.ClientSession, base: str, query: str) -> aiohttp.ClientResponse:
    return await s.get(f"{base}/_sim/stall?{query}", headers=ASYNC)


async def _view(s: aiohttp.ClientSession, base: str, job_id: str) -> dict[str, Any]:
    async with s.get(f"{base}{JOBS}/{job_id}") as r:
        return await _json(r)


async def _until(s: aiohttp.ClientSession, base: str, job_id: str, *states: str) -> dict[str, Any]:
    for _ in range(400):
        view = await _view(s, base, job_id)
        if view["state"] in states:
            return view
        await asyncio.sleep(0.025)
    raise AssertionError(f"job {job_id} never became {states}: {view}")


async def test_a_full_disk_releases_the_slot_and_recovers_by_itself(
    small_fs: Path, procs: list[Proc], tmp_path: Path
) -> None:
    engine, engine_url = start_engine(tmp_path, seconds=ENGINE_SECONDS)
    procs.append(engine)
    text = rules(
        {
            "jobs": {"dir": str(small_fs / "state"), "min_free_bytes": MIN_FREE},
            "admission": {"max_in_flight": 1, "queue": {"per_client": 20}},
            "shutdown": {"drain_timeout": "120s", "linger": "0s"},
            "routes": [{"name": "big", "match": {"path": "/_sim/stall"}, "action": "queue"}],
        }
    )
    gk, base, admin = start_gatekeeper(tmp_path, text, engine_url)
    procs.append(gk)
    async with aiohttp.ClientSession() as s:
        async with await _submit(s, base, f"after={FIRST}&seconds=1.5&tail={TAIL}") as r:
            big = (await _json(r))["id"]
            assert r.status == 202
        await _until(s, base, big, "running")
        async with await _submit(s, base, "after=1000&seconds=0&tail=0") as r:
            small = (await _json(r))["id"]
            assert r.status == 202
        assert (await _view(s, base, small))["state"] == "queued"
        filler = fill_fs(small_fs)

        # The big job's answer cannot be written: failed storage_error, slot released.
        view = await _until(s, base, big, "failed", "done")
        assert (view["state"], view["reason"]) == ("failed", "storage_error"), view
        async with s.get(f"{admin}/metrics") as r:
            assert metric(await r.text(), "gatekeeper_in_flight") == 0
        async with s.get(f"{base}{JOBS}/{big}/result") as r:
            assert r.status != 200, "a truncated result was served as complete"
            await _json(r)
        # Below the floor: the queued job keeps waiting, a new one is refused.
        await asyncio.sleep(1.5)  # a tick and a free-space sample later
        assert (await _view(s, base, small))["state"] == "queued"
        async with await _submit(s, base, "after=10&seconds=0") as r:
            body = await _json(r)
            assert (r.status, body["reason"]) == (503, "storage_full"), body
            assert body["detail"] and int(r.headers["Retry-After"]) > 0
        async with s.get(f"{admin}/metrics") as r:
            page = await r.text()
        assert metric(page, "gatekeeper_state_free_bytes") < MIN_FREE
        assert metric(page, 'gatekeeper_rejections_total{reason="storage_full",route="big"}') == 1

        # Space returns: the queued job runs by itself, new jobs are accepted.
        filler.unlink()
        returned = time.monotonic()
        await _until(s, base, small, "running", "done")
        recovery = time.monotonic() - returned
        print(f"\ndisk-full recovery: space returned -> queued job running in {recovery:.2f} s")
        view = await _until(s, base, small, "done")
        async with s.get(f"{base}{JOBS}/{small}/result") as r:
            assert r.status == 200 and len(await r.read()) == 1000
        async with await _submit(s, base, "after=10&seconds=0") as r:
            assert r.status == 202, await r.text()
            await _until(s, base, (await _json(r))["id"], "done")
        async with s.get(f"{admin}/metrics") as r:
            assert metric(await r.text(), "gatekeeper_in_flight") == 0

        # The disk full again: SIGTERM still ends the process at once (nothing is held).
        fill_fs(small_fs)
    stopped = time.monotonic()
    gk.signal(signal.SIGTERM)
    assert gk.wait(timeout=30) == 0
    print(f"SIGTERM with the disk full: exited in {time.monotonic() - stopped:.2f} s")
