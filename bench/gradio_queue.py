"""Gradio joins waiting in gatekeeper's queue (issue #19): the figures of the closing note.

Run with the project's virtualenv from the repository root (needs the ``gradio-test``
extra)::

    .venv/bin/python bench/gradio_queue.py                 # 4 s songs, 5 to learn, 4 at once
    .venv/bin/python bench/gradio_queue.py --song 2 --burst 6 --keep

The real test Gradio app (``tests/gradio_app.py``: one generation at a time, like
SongGeneration's) behind ``gatekeeper run`` with a ``gradio`` route. Each client speaks
Gradio's queue protocol as its clients do (a join, then the session's ``queue/data``
stream), reading every frame with its arrival time. First ``--learn`` songs one after
another (the estimator learns the song's length), then ``--burst`` clients join at once.

Figures: the app's own peak of generations at once (must be 1); for each waiting event,
the wait shown (the first ``estimation`` frame's ``rank_eta``: seconds until done)
against the real wait (join to ``process_completed``), as an error in %; the time from a
slot freeing (an event's ``process_completed``) to the next event's ``process_starts``.
Exit status 0 when the peak stayed 1 and every song was made, 1 otherwise, 130
interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.procs import Services
from gatekeeper.cli.procs import free_port, gatekeeper_argv

APP = Path(__file__).resolve().parent.parent / "tests" / "gradio_app.py"
RULES = """
upstream:
  url: {app}
  passthrough: {{limits: {{max_connections: 64}}}}
admission:
  expected_seconds: 30
  queue: {{max_waiting: 20, per_client: 2, client_key: "header:X-Client"}}
  resources: {{source: file, file: {readings}}}
shutdown: {{linger: 0s}}
jobs: {{dir: {state}}}
routes:
  - name: song
    match: {{path: /**, api_name: [generate_song, generate_song_1]}}
    action: gradio
"""


@dataclass
class Song:
    client: str
    joined: float = 0.0
    frames: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def first(self, msg: str) -> tuple[float, dict[str, Any]] | None:
        return next(((t, m) for t, m in self.frames if m.get("msg") == msg), None)


async def sing(s: aiohttp.ClientSession, proxy: str, song: Song) -> None:
    """One client: join, read the session's stream to the event's end."""
    session = f"bench-{song.client}-{time.monotonic_ns()}"
    body = {
        "data": ["[verse] la", "pop", None, "Pop", None],
        "fn_index": 0,
        "session_hash": session,
    }
    headers = {"X-Client": song.client}
    song.joined = time.monotonic()
    async with s.post(proxy + "/gradio_api/queue/join", json=body, headers=headers) as r:
        assert r.status == 200, await r.text()
        ours = (await r.json())["event_id"]
    url = proxy + f"/gradio_api/queue/data?session_hash={session}"
    async with s.get(url, headers=headers) as r:
        buf = b""
        async for chunk in r.content.iter_any():
            buf += chunk
            while b"\n\n" in buf:
                raw, buf = buf.split(b"\n\n", 1)
                if not raw.startswith(b"data: {"):
                    continue
                msg = json.loads(raw[6:])
                song.frames.append((time.monotonic(), msg))
                if msg.get("msg") == "process_completed" and msg.get("event_id") == ours:
                    return


async def run(args: argparse.Namespace, svcs: Services) -> int:
    work = svcs.workdir
    port = free_port()
    app = svcs.start(
        "gradio-app",
        [
            sys.executable,
            str(APP),
            "--port",
            str(port),
            "--seconds",
            str(args.song),
            "--out-dir",
            str(work / "out"),
        ],
    )
    app.wait_for_line(r"gradio-app listening on http://", timeout=90)
    app_url = f"http://127.0.0.1:{port}"
    readings = work / "readings.json"
    readings.write_text('{"cpu_percent": 5, "memory_percent": 5}')
    rules = work / "rules.yaml"
    rules.write_text(RULES.format(app=app_url, readings=readings, state=work / "state"))
    gport, aport = free_port(), free_port()
    gk = svcs.start(
        "gatekeeper",
        gatekeeper_argv(
            "run",
            "--config",
            str(rules),
            "--listen",
            f"127.0.0.1:{gport}",
            "--admin-listen",
            f"127.0.0.1:{aport}",
        ),
    )
    gk.wait_for_line(r"proxy listening on http://")
    proxy = f"http://127.0.0.1:{gport}"
    async with aiohttp.ClientSession() as s:
        for i in range(args.learn):
            await sing(s, proxy, Song(f"learn{i}"))
        async with s.post(app_url + "/_app/reset") as r:
            assert r.status == 200
        burst = [Song(f"c{i}") for i in range(args.burst)]
        tasks = []
        for song in burst:  # joined in this order, a few ms apart
            tasks.append(asyncio.create_task(sing(s, proxy, song)))
            await asyncio.sleep(0.05)
        await asyncio.gather(*tasks)
        async with s.get(app_url + "/_app/stats") as r:
            stats = await r.json()
    order = sorted(burst, key=lambda x: x.first("process_starts")[0])  # type: ignore[index]
    print(f"\n  app: {stats}  (peak must be 1)")
    print(f"  learned from {args.learn} song(s) of {args.song:g} s; {args.burst} joined at once")
    errors, handoffs = [], []
    for k, song in enumerate(order):
        done = song.first("process_completed")
        shown = next(
            (
                m
                for _, m in song.frames
                if m.get("msg") == "estimation"
                and str(m.get("event_id", "")).startswith("gatekeeper-")
            ),
            None,
        )
        assert done is not None
        real = done[0] - song.joined
        line = f"  #{k + 1} {song.client}: real wait {real:6.2f} s"
        if shown is not None and shown.get("rank_eta") is not None:
            eta = float(shown["rank_eta"])
            err = abs(eta - real) / real
            errors.append(err)
            line += f", shown {eta:6.1f} s (rank {shown['rank']}), error {err * 100:5.1f} %"
        else:
            line += ", ran at once (no wait shown)"
        if k > 0:
            prev = order[k - 1].first("process_completed")
            starts = song.first("process_starts")
            assert prev is not None and starts is not None
            handoffs.append(starts[0] - prev[0])
            line += f"; slot free -> process_starts {(starts[0] - prev[0]) * 1000:6.1f} ms"
        print(line)
    if errors:
        print(
            f"  ETA error: mean {statistics.mean(errors) * 100:.1f} %,"
            f" max {max(errors) * 100:.1f} %"
        )
    if handoffs:
        ms = [h * 1000 for h in handoffs]
        print(
            f"  slot free -> next process_starts: median {statistics.median(ms):.1f} ms, "
            f"max {max(ms):.1f} ms"
        )
    ok = stats["peak"] == 1 and stats["completed"] == args.burst
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--song", type=float, default=4.0, help="seconds per song")
    p.add_argument("--learn", type=int, default=5, help="songs run first, one at a time")
    p.add_argument("--burst", type=int, default=4, help="clients joining at once")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, rules)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gk-bench-gradio-"))
    svcs = Services(work)
    try:
        rc = asyncio.run(run(args, svcs))
    except KeyboardInterrupt:
        rc = 130
    finally:
        svcs.stop_all()
    if args.keep or rc:
        print(f"  kept {work}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
