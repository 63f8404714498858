"""Two boxes behind the real HAProxy: the closing figures of issue #11 §2.

    .venv/bin/python bench/boxes.py            # 500-request burst
    .venv/bin/python bench/boxes.py --burst 100 --seconds 0.05

Two ``engine-sim --no-cpu`` + two ``gatekeeper run`` (``box_id`` a and b,
``agent_listen``), HAProxy from ``deploy/haproxy/haproxy.cfg`` rendered by
``deploy/haproxy/render.py`` (the shipped file, addresses changed), all on
127.0.0.1. It prints, and fails (exit 1) when a check fails:

1. **spread**: 6 held generations at once: songs per box (each engine-sim's own
   ``completed_generations``) and each engine's own peak of concurrent songs.
2. **drain**: box a runs a long song, gets SIGTERM; async submissions are sent
   every 10 ms: how long HAProxy kept offering new requests to a (the last time
   a's ``draining`` refusals grew, polled every 10 ms on a's admin ``/status``),
   how many reached the client as anything but 202 (must be 0: a's refusals are
   retried on b), and a's running song delivered (200).
3. **burst**: ``--burst`` held generations at once (distinct lyrics), songs of
   ``--seconds``: answers by status, each engine's peak (must be <= 1, its slots),
   songs completed per engine, lost (no answer) = 0.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

if __package__ in (None, ""):  # run as ``python bench/boxes.py``: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import Service, Services
from gatekeeper.cli.procs import free_port, gatekeeper_argv

ROOT = Path(__file__).resolve().parent.parent
JOBS = "/_gatekeeper/jobs"


def _render() -> Any:
    spec = importlib.util.spec_from_file_location("render", ROOT / "deploy/haproxy/render.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["render"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


RULES = """
box_id: {name}
agent_listen: 127.0.0.1:{agent}
shutdown: {{drain_timeout: 60s, linger: 0.5s}}
upstream: {{probe: {{interval: 0.5s}}}}
admission:
  expected_seconds: 1
  resources: {{source: file, file: {calm}}}
  queue: {{max_waiting: 1000, per_client: 1000}}
"""


def start(procs: Services, name: str, argv: list[str], ready: str) -> Service:
    """Start ``argv`` and wait for ``ready`` in its output (none: started is enough)."""
    svc = procs.start(name, argv)
    if ready:
        try:
            svc.wait_for_line(ready, timeout=30)
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None
    return svc


class Cluster:
    def __init__(self, procs: Services, seconds: float) -> None:
        self.procs = procs
        work = procs.workdir
        calm = work / "calm.json"
        calm.write_text('{"cpu_percent": 5, "memory_percent": 5}')
        render = _render()
        self.boxes: dict[str, dict[str, Any]] = {}
        for name in ("a", "b"):
            ep = free_port()
            engine = f"http://127.0.0.1:{ep}"
            start(
                procs,
                f"engine-{name}",
                gatekeeper_argv("engine-sim", "--listen", f"127.0.0.1:{ep}",
                                "--seconds", str(seconds), "--no-cpu", "--memory-mb", "0"),
                "listening on http://",
            )  # fmt: skip
            public, admin, agent = free_port(), free_port(), free_port()
            rules = work / f"rules-{name}.yaml"
            rules.write_text(RULES.format(name=name, agent=agent, calm=calm))
            proc = start(
                procs,
                f"gatekeeper-{name}",
                gatekeeper_argv("run", "--config", str(rules), "--upstream", engine,
                 "--listen", f"127.0.0.1:{public}", "--admin-listen", f"127.0.0.1:{admin}",
                 "--state-dir", str(work / f"state-{name}"), "--log-level", "WARNING"),
                "admin listening on http://",
            )  # fmt: skip
            self.boxes[name] = {
                "engine": engine,
                "admin": f"http://127.0.0.1:{admin}",
                "proc": proc,
                "ports": (public, admin, agent),
            }
        self.port = free_port()
        cfg = work / "haproxy.cfg"
        cfg.write_text(
            render.render(
                [render.Box(n, "127.0.0.1", 1, *b["ports"]) for n, b in self.boxes.items()],
                bind=f"127.0.0.1:{self.port}",
                guard_prefix=f"gkb-{os.getpid()}-",
            )
        )
        haproxy = "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else "haproxy"
        start(procs, "haproxy", [haproxy, "-db", "-f", str(cfg)], "")
        self.url = f"http://127.0.0.1:{self.port}"


def song(seconds: float) -> dict[str, Any]:
    return {"lyrics": f"la {uuid.uuid4().hex}", "description": "pop", "seconds": seconds}


async def get_json(s: aiohttp.ClientSession, url: str) -> Any:
    async with s.get(url) as r:
        return await r.json()


async def wait_ready(s: aiohttp.ClientSession, c: Cluster) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            async with s.get(c.url + "/_gatekeeper/status") as r:
                if r.status == 200:
                    await asyncio.sleep(1.2)  # the agents' first answers
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("HAProxy never answered")


async def held(s: aiohttp.ClientSession, url: str, seconds: float) -> int:
    try:
        async with s.post(url + "/generate", json=song(seconds)) as r:
            await r.read()
            return r.status
    except aiohttp.ClientError:
        return -1


async def peaks(s: aiohttp.ClientSession, c: Cluster) -> dict[str, dict[str, int]]:
    out = {}
    for name, b in c.boxes.items():
        st = await get_json(s, b["engine"] + "/_sim/stats")
        out[name] = {
            "peak": int(st["peak_active_generations"]),
            "completed": int(st["completed_generations"]),
        }
    return out


async def reset(s: aiohttp.ClientSession, c: Cluster) -> None:
    for b in c.boxes.values():
        async with s.post(b["engine"] + "/_sim/reset") as r:
            await r.read()


def table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
        if j == 0:
            print("  " + "  ".join("-" * w for w in widths))


async def run(args: argparse.Namespace, work: Path) -> list[str]:
    failures: list[str] = []
    procs = Services(work)
    try:
        c = Cluster(procs, args.seconds)
        conn = aiohttp.TCPConnector(limit=0, force_close=True)
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
            await wait_ready(s, c)
            # 1. spread
            codes = await asyncio.gather(*(held(s, c.url, 1.0) for _ in range(6)))
            p = await peaks(s, c)
            print("\n1. spread: 6 held generations of 1 s at once through HAProxy\n")
            table([["box", "songs", "engine's own peak"]]
                  + [[n, str(v["completed"]), str(v["peak"])] for n, v in p.items()])  # fmt: skip
            print(f"  answers: {dict(Counter(codes))}")
            if codes.count(200) != 6 or any(v["peak"] > 1 for v in p.values()):
                failures.append(f"spread: answers {codes}, peaks {p}")
            # 3. burst (before the drain: a is stopped by it)
            await reset(s, c)
            t0 = time.monotonic()
            codes = await asyncio.gather(*(held(s, c.url, args.seconds) for _ in range(args.burst)))
            wall = time.monotonic() - t0
            p = await peaks(s, c)
            print(f"\n3. burst: {args.burst} held generations of {args.seconds:g} s at once\n")
            table([["box", "songs completed", "engine's own peak (slots 1)"]]
                  + [[n, str(v["completed"]), str(v["peak"])] for n, v in p.items()])  # fmt: skip
            by = Counter(codes)
            lost = by.get(-1, 0)
            print(f"  answers: {dict(sorted(by.items()))}; lost {lost}; wall {wall:.1f} s")
            done = sum(v["completed"] for v in p.values())
            if any(v["peak"] > 1 for v in p.values()) or lost or done < by.get(200, 0):
                failures.append(f"burst: answers {dict(by)}, engines {p}")
            # 2. drain
            a = c.boxes["a"]
            long = asyncio.create_task(held(s, c.url, 3.0))
            deadline = time.monotonic() + 10
            while (await get_json(s, a["admin"] + "/status"))["in_flight"] == 0:
                if time.monotonic() > deadline:
                    break
                if (await get_json(s, c.boxes["b"]["admin"] + "/status"))["in_flight"]:
                    long.cancel()  # went to b: try again
                    long = asyncio.create_task(held(s, c.url, 3.0))
                await asyncio.sleep(0.05)
            t_term = time.monotonic()
            a["proc"].signal(signal.SIGTERM)
            last_seen, seen = 0.0, 0
            answers: Counter[int] = Counter()
            homes: Counter[str] = Counter()

            async def submit() -> None:
                async with s.post(
                    c.url + "/generate", json=song(0.01), headers={"Prefer": "respond-async"}
                ) as r:
                    answers[r.status] += 1
                    if r.status == 202:
                        homes[r.headers["Location"][len(JOBS) + 1 :].split(".")[0]] += 1

            sends: list[asyncio.Task[None]] = []
            while time.monotonic() - t_term < 2.0:
                sends.append(asyncio.create_task(submit()))
                try:
                    doc = await get_json(s, a["admin"] + "/status")
                    n = int(doc["rejections_by_reason"].get("draining", 0))
                    if n > seen:
                        seen, last_seen = n, time.monotonic() - t_term
                except (aiohttp.ClientError, ValueError):
                    pass
                await asyncio.sleep(0.01)
            await asyncio.gather(*sends)
            long_status = await long
            print(
                "\n2. drain: SIGTERM to box a while it runs a 3 s song;"
                " async submissions every 10 ms\n"
            )
            print(f"  requests HAProxy still offered to a after SIGTERM: {seen} (all retried on b)")
            print(f"  last one offered at: {last_seen * 1000:.0f} ms after SIGTERM"
                  " (agent-inter 500ms in the shipped file)")  # fmt: skip
            print(f"  client answers: {dict(answers)}; jobs by box: {dict(homes)}")
            print(f"  a's running song: {long_status}")
            if set(answers) != {202} or homes.get("a") or long_status != 200:
                failures.append(f"drain: answers {dict(answers)}, homes {dict(homes)}")
    finally:
        procs.stop_all(timeout=30)
    return failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--burst", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=0.05, help="song length in the burst")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gk-boxes-") as tmp:
        failures = asyncio.run(run(args, Path(tmp)))
    for f in failures:
        print(f"CHECK FAILED: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
