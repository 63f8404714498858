"""``/events`` watchers hear progress and ETA changes within a second (issue #18 §6).

The real ``gatekeeper run`` in front of the real ``engine-sim`` (its SSE answer on
``POST /generate/stream`` carries ``progress`` every 0.2 s). Before: a watcher woke
only on queue changes, so a running job's progress and a waiter's ETA never
reached it on an idle queue (up to the 15 s keep-alive). Now: every change within
a second, coalesced to at most two events a second per job.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
from support import Proc, resources_file, rules, start_gatekeeper

JOBS = "/_gatekeeper/jobs"
ASYNC = {"Prefer": "respond-async"}
BASE = {
    "admission": {
        "max_in_flight": 1,
        "sample_interval": 0.1,
        "on_client_disconnect": "finish",
        "queue": {"per_client": 20},
    },
    "upstream": {"probe": {"interval": 0.5}},
}


def song(lyrics: str, seconds: float) -> dict[str, Any]:
    return {"lyrics": lyrics, "description": "pop", "seconds": seconds}


async def submit(s: aiohttp.ClientSession, url: str, path: str, body: Any) -> str:
    async with s.post(url + path, json=body, headers=ASYNC) as r:
        assert r.status == 202, await r.text()
        return str((await r.json())["id"])


async def watch(s: aiohttp.ClientSession, url: str, job_id: str) -> list[tuple[float, Any]]:
    """(arrival time, view) of every ``job`` event until the server ends the stream."""
    out: list[tuple[float, Any]] = []
    async with s.get(f"{url}{JOBS}/{job_id}/events") as r:
        assert r.status == 200
        event = None
        async for raw in r.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "job":
                out.append((time.monotonic(), json.loads(line[6:])))
    return out


def at_most_two_a_second(seen: list[tuple[float, Any]]) -> None:
    # The server spaces events by >= 0.5 s; the client's arrival times jitter a little.
    for (t0, _), _, (t2, _) in zip(seen, seen[1:], seen[2:], strict=False):
        assert t2 - t0 >= 0.9, [(round(t - seen[0][0], 2), v["state"]) for t, v in seen]


async def test_progress_reaches_the_watcher_within_a_second(
    tmp_path: Path, procs: list[Proc], fresh_engine: tuple[Proc, str], http: aiohttp.ClientSession
) -> None:
    """A 4 s song on an idle queue: its watcher hears the rising progress at least once a
    second from the first running event to the end, and never more than twice a second."""
    layer = {"admission": {"expected_seconds": 4}}
    proc, url, _ = start_gatekeeper(
        tmp_path,
        rules(BASE, layer, resources_file(tmp_path / "r.json")),
        fresh_engine[1],
        "--state-dir",
        str(tmp_path / "state"),
    )
    procs.append(proc)
    job_id = await submit(http, url, "/generate/stream", song("progress", 4.0))
    async with asyncio.timeout(30):
        seen = await watch(http, url, job_id)
    assert seen[-1][1]["state"] == "done", seen[-1]
    running = [(t, v) for t, v in seen if v["state"] == "running"]
    progress = [v["progress"] for _, v in running if v["progress"] is not None]
    assert len(progress) >= 5, seen  # ~4 s of progress, one event at least every second
    assert progress == sorted(progress) and progress[-1] > progress[0]
    first = running[0][0]
    arrivals = [t for t, _ in seen if t >= first]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert max(gaps) <= 1.25, gaps
    at_most_two_a_second(seen)


async def test_a_waiters_eta_change_reaches_its_watcher(
    tmp_path: Path, procs: list[Proc], fresh_engine: tuple[Proc, str], http: aiohttp.ClientSession
) -> None:
    """A 4 s song runs where 1 s was expected: from 1 s on, the job waiting behind it
    will not start when it was told, and its watcher hears its ETA again each second,
    with nothing else changing in the queue."""
    layer = {"admission": {"expected_seconds": 1}}
    proc, url, _ = start_gatekeeper(
        tmp_path,
        rules(BASE, layer, resources_file(tmp_path / "r.json")),
        fresh_engine[1],
        "--state-dir",
        str(tmp_path / "state"),
    )
    procs.append(proc)
    await submit(http, url, "/generate", song("overrun", 4.0))
    waiter = await submit(http, url, "/generate", song("behind", 0.2))
    async with asyncio.timeout(30):
        seen = await watch(http, url, waiter)
    queued = [(t, v) for t, v in seen if v["state"] == "queued"]
    # 4 s queued behind a 1 s estimate: the first event, then an ETA change each second.
    assert len(queued) >= 3, [(round(t - seen[0][0], 2), v) for t, v in seen]
    assert all(v["position"] == 1 for _, v in queued)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(queued)]
    assert max(gaps[1:], default=0) <= 1.6, gaps
    assert seen[-1][1]["state"] == "done"
    at_most_two_a_second(seen)
