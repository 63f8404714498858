"""Repeated ``kill -9`` of gatekeeper mid-song: the engine's own peak stays at its slots.

Run with the project's virtualenv from the repository root::

    .venv/bin/python bench/restarts.py                        # 20 trials, 3 s songs, both modes
    .venv/bin/python bench/restarts.py --trials 50 --song 8 --modes busy
    .venv/bin/python bench/restarts.py --keep                 # keep the logs and rules

Issue #18 §5. One ``gatekeeper engine-sim`` (one generation at a time: its
``max_in_flight`` is 1) behind ``gatekeeper run`` with a ``queue`` route and one
state directory kept across the trials. Each trial: an async song of
``--song`` seconds (± 25 %) starts; ``--queued`` short songs queue behind it;
gatekeeper is killed with SIGKILL at a random point of the song and started
again on the same state directory while the engine is still computing the
orphaned song. The trial ends when every queued job has ended.

Two modes (``--modes``): ``busy``, the engine's busy signal
(``upstream.probe.busy`` over engine-sim's ``/healthz``) with a duration
estimate far too short to cover the song (so only the signal can hold the
engine); ``grace``, no busy rule and ``admission.expected_seconds`` = the song's
nominal length (the hold is the orphan's expected remaining time).

Figures per mode: trials, jobs submitted, jobs lost (a queued job that did not
end ``done``), jobs run twice (the engine's own count of generations against the
jobs), the engine's own peak of generations at once (``/_sim/stats``:
``peak_active_generations``; it must stay 1), and how long the queue waited after
the restart against the orphan's remaining time. Exit status: 0 nothing was
lost or run twice and the engine's peak stayed 1 (in ``grace`` mode: in the
trials whose song was not longer than the estimate, the grace's documented
limit), 1 otherwise (the temp dir is kept), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import Service, Services
from bench.report import median, table
from gatekeeper.cli.procs import free_port, gatekeeper_argv

JOBS = "/_gatekeeper/jobs"
ASYNC = {"Prefer": "respond-async"}
QUEUED_SONG = 0.3
PROBE_INTERVAL = 0.2

RULES = """\
upstream:
  url: {engine}
  probe:
    path: /healthz
    interval: {probe}s
    timeout: 1s
{busy}admission:
  max_in_flight: 1
  expected_seconds: {expected}
  on_client_disconnect: finish
  queue: {{per_client: 50, max_waiting: 50}}
  resources: {{source: file, file: {readings}}}
shutdown:
  drain_timeout: 0s
  linger: 0s
routes:
  - name: generate
    match: {{methods: [POST], path: /generate/**}}
    action: queue
"""
BUSY = "    busy: {pointer: /busy, equals: true}\n"


@dataclass
class Trial:
    song: float  # the orphaned song's length
    killed_at: float  # seconds into it
    held: float  # restart (ready) -> first queued job seen running
    remaining: float  # the orphan's remaining time at the restart, by the engine
    peak: int  # the engine's own peak of generations at once
    generations: int  # POST /generate the engine received in the trial
    done: int  # queued jobs that ended done
    queued: int


async def get_json(s: aiohttp.ClientSession, url: str) -> Any:
    async with s.get(url) as r:
        r.raise_for_status()
        return await r.json()


async def submit(s: aiohttp.ClientSession, proxy: str, lyrics: str, seconds: float) -> str:
    body = {"lyrics": lyrics, "description": "bench", "seconds": seconds}
    async with s.post(proxy + "/generate", json=body, headers=ASYNC) as r:
        if r.status != 202:
            raise RuntimeError(f"{lyrics!r}: {r.status} {await r.text()}")
        return str((await r.json())["id"])


async def state_of(s: aiohttp.ClientSession, proxy: str, job_id: str) -> str:
    return str((await get_json(s, f"{proxy}{JOBS}/{job_id}"))["state"])


async def until(s: aiohttp.ClientSession, proxy: str, job_id: str, states: set[str]) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = await state_of(s, proxy, job_id)
        if st in states:
            return st
        await asyncio.sleep(0.02)
    raise RuntimeError(f"job {job_id} never reached {states}")


class Rig:
    """The engine, the rules, the state directory; gatekeeper started again and again."""

    def __init__(self, svcs: Services, mode: str, song: float) -> None:
        self.svcs, self.mode = svcs, mode
        work = svcs.workdir / mode
        work.mkdir()
        port = free_port()
        self.engine = f"http://127.0.0.1:{port}"
        argv = ["engine-sim", "--listen", f"127.0.0.1:{port}", "--no-cpu", "--memory-mb", "1"]
        svc = svcs.start(f"engine-{mode}", gatekeeper_argv(*argv))
        svc.wait_for_line(r"listening on http://")
        readings = work / "readings.json"
        readings.write_text('{"cpu_percent": 5, "memory_percent": 5}')
        self.rules = work / "rules.yaml"
        self.rules.write_text(
            RULES.format(
                engine=self.engine,
                probe=PROBE_INTERVAL,
                busy=BUSY if mode == "busy" else "",
                expected=0.5 if mode == "busy" else song,
                readings=readings,
            )
        )
        self.state = work / "state"
        self.gk: Service | None = None
        self.proxy = ""

    def start(self) -> float:
        """gatekeeper started; returns the monotonic time it said it listens."""
        port, admin = free_port(), free_port()
        argv = gatekeeper_argv(
            "run",
            "--config",
            str(self.rules),
            "--listen",
            f"127.0.0.1:{port}",
            "--admin-listen",
            f"127.0.0.1:{admin}",
            "--state-dir",
            str(self.state),
            "--log-level",
            "WARNING",
        )
        self.gk = self.svcs.start(f"gatekeeper-{self.mode}", argv)
        self.gk.wait_for_line(r"admin listening on http://")
        self.proxy = f"http://127.0.0.1:{port}"
        return time.monotonic()

    async def engine_idle(self, s: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if not (await get_json(s, self.engine + "/_sim/stats"))["active_generations"]:
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("the engine never went idle")

    async def trial(self, s: aiohttp.ClientSession, i: int, song: float, n: int) -> Trial:
        await self.engine_idle(s)  # the last trial's songs are over
        async with s.post(self.engine + "/_sim/reset") as r:
            r.raise_for_status()
        if self.gk is None:
            self.start()
        length = song * random.uniform(0.75, 1.25)
        orphan = await submit(s, self.proxy, f"{self.mode} trial {i} orphan", length)
        await until(s, self.proxy, orphan, {"running"})
        began = time.monotonic()
        queued = [
            await submit(s, self.proxy, f"{self.mode} {i} q{k}", QUEUED_SONG) for k in range(n)
        ]
        await asyncio.sleep(
            max(0.0, random.uniform(0.05, 0.9) * length - (time.monotonic() - began))
        )
        assert self.gk is not None
        self.gk.kill()  # SIGKILL: no drain; the engine keeps computing the song
        killed_at = time.monotonic() - began
        ready = self.start()
        remaining = max(0.0, length - (ready - began))
        first_running = None
        for job_id in queued:
            while True:
                st = await state_of(s, self.proxy, job_id)
                if first_running is None and st != "queued":
                    first_running = time.monotonic()
                if st in ("done", "failed", "cancelled", "expired"):
                    break
                await asyncio.sleep(0.02)
        stats = await get_json(s, self.engine + "/_sim/stats")
        done = sum([await state_of(s, self.proxy, j) == "done" for j in queued])
        return Trial(
            song=length,
            killed_at=killed_at,
            held=(first_running or ready) - ready,
            remaining=remaining,
            peak=int(stats["peak_active_generations"]),
            generations=int(stats["requests"].get("POST /generate", 0)),
            done=done,
            queued=n,
        )


def figures(mode: str, trials: list[Trial], estimate: float) -> tuple[list[str], bool]:
    jobs = sum(t.queued + 1 for t in trials)
    lost = sum(t.queued - t.done for t in trials)
    twice = sum(max(0, t.generations - (t.queued + 1)) for t in trials)
    peak = max(t.peak for t in trials)
    over = [t.held - t.remaining for t in trials]
    # The grace is the estimate: a song longer than it may overlap the next one (documented);
    # the check holds the trials whose song the estimate covered, and every busy-mode trial.
    checked = [t for t in trials if mode == "busy" or t.song <= estimate]
    row = [
        mode,
        str(len(trials)),
        str(jobs),
        str(lost),
        str(twice),
        str(peak),
        f"{sum(t.peak > 1 for t in trials)}/{len(trials)}",
        str(sum(t.song > estimate for t in trials)),
        f"{median([t.remaining for t in trials]):.2f}",
        f"{median([t.held for t in trials]):.2f}",
        f"{median(over):+.2f} / {max(over):+.2f}",
    ]
    return row, max(t.peak for t in checked) <= 1 and lost == 0 and twice == 0


async def run(args: argparse.Namespace, svcs: Services) -> int:
    random.seed(args.seed)
    rows, ok = [], True
    async with aiohttp.ClientSession() as s:
        for mode in args.modes.split(","):
            rig = Rig(svcs, mode, args.song)
            trials = []
            for i in range(args.trials):
                t = await rig.trial(s, i, args.song, args.queued)
                trials.append(t)
                print(
                    f"{mode} trial {i + 1}: song {t.song:.2f} s, killed at {t.killed_at:.2f} s,"
                    f" queue held {t.held:.2f} s (orphan had {t.remaining:.2f} s left),"
                    f" engine peak {t.peak}, {t.done}/{t.queued} queued done",
                    flush=True,
                )
            row, held = figures(mode, trials, args.song)
            rows.append(row)
            ok = ok and held
    head = ["mode", "trials", "jobs", "lost", "run twice", "engine peak", "trials peak>1"]
    head += ["songs > estimate"]
    head += ["orphan left (p50 s)", "queue held (p50 s)", "held - left (p50 / max s)"]
    print()
    print(table(head, rows))
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20, help="trials per mode (default: 20)")
    p.add_argument("--song", type=float, default=3.0, help="orphaned song, seconds (default: 3)")
    p.add_argument("--queued", type=int, default=3, help="jobs queued behind it (default: 3)")
    p.add_argument("--modes", default="busy,grace", help="busy, grace or both (default)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, rules)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gatekeeper-restarts-"))
    svcs = Services(tmp)
    code = 1
    try:
        code = asyncio.run(run(args, svcs))
    except KeyboardInterrupt:
        code = 130
    finally:
        svcs.stop_all()
        if code == 0 and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs kept in {tmp}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
