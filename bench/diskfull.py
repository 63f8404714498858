"""Disk-full recovery time (issue #18 §1): space returns -> the next queued job running.

Needs root (it mounts an 8 MiB tmpfs for the state directory). One real
``gatekeeper run`` and ``engine-sim``; each trial: a job whose answer cannot fit
runs, another waits behind it, the file system is filled; the first job ends
``storage_error`` (slot released), the waiting one keeps its place (below
``jobs.min_free_bytes`` nothing is dispatched), then the filler is deleted and
the time until the waiting job is ``running`` is measured (polled every 10 ms)::

    sudo .venv/bin/python bench/diskfull.py [--trials 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import fill_fs, rules, small_tmpfs, start_engine, start_gatekeeper

JOBS = "/_gatekeeper/jobs"
ASYNC = {"Prefer": "respond-async"}


async def _submit(s: aiohttp.ClientSession, base: str, query: str) -> str:
    async with s.get(f"{base}/_sim/stall?{query}", headers=ASYNC) as r:
        assert r.status == 202, await r.text()
        return str((await r.json())["id"])


async def _until(
    s: aiohttp.ClientSession, base: str, job_id: str, states: tuple[str, ...]
) -> dict[str, Any]:
    while True:
        async with s.get(f"{base}{JOBS}/{job_id}") as r:
            view: dict[str, Any] = await r.json()
        if view["state"] in states:
            return view
        await asyncio.sleep(0.01)


async def trials(base: str, fs: Path, n: int) -> list[float]:
    out = []
    async with aiohttp.ClientSession() as s:
        for i in range(n):  # each trial's requests differ: none coalesces with a kept one
            big = await _submit(s, base, f"after={(1 << 20) + i}&seconds=1&tail={6 << 20}")
            await _until(s, base, big, ("running",))
            small = await _submit(s, base, f"after={1000 + i}&seconds=0&tail=0")
            filler = fill_fs(fs)
            view = await _until(s, base, big, ("failed", "done"))
            assert view["reason"] == "storage_error", view
            await asyncio.sleep(1.2)  # a free-space sample below the floor
            view = await _until(s, base, small, ("queued", "running", "done", "failed"))
            assert view["state"] == "queued", view
            filler.unlink()
            t0 = time.monotonic()
            await _until(s, base, small, ("running", "done"))
            out.append(time.monotonic() - t0)
            await _until(s, base, small, ("done",))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=10)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gatekeeper-diskfull-"))
    with small_tmpfs(tmp / "fs", "8m") as fs:
        engine, engine_url = start_engine(tmp, seconds=0.2)
        text = rules(
            {
                "jobs": {"dir": str(fs / "state"), "min_free_bytes": 2 << 20},
                "admission": {"max_in_flight": 1, "queue": {"per_client": 20}},
                "shutdown": {"linger": "0s"},
                "routes": [{"name": "big", "match": {"path": "/_sim/stall"}, "action": "queue"}],
            }
        )
        gk, base, _admin = start_gatekeeper(tmp, text, engine_url)
        try:
            times = asyncio.run(trials(base, fs, args.trials))
        finally:
            gk.stop()
            engine.stop()
    ms = sorted(t * 1000 for t in times)
    print(
        f"disk-full recovery (space returned -> next queued job running), {len(ms)} trials:"
        f" min {ms[0]:.0f} ms, median {statistics.median(ms):.0f} ms, max {ms[-1]:.0f} ms"
        " (free space sampled every 0.25 s by the jobs tick)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
