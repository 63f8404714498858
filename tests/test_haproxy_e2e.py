"""Several boxes behind the real HAProxy (issue #11 §2), with the shipped haproxy.cfg.

Two engine-sims, two ``gatekeeper run`` (each with ``box_id`` and ``agent_listen``),
and ``haproxy -db`` running ``deploy/haproxy/haproxy.cfg`` rendered for them by
``deploy/haproxy/render.py`` (addresses only: the directives are the shipped ones).
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from support import Proc, find_binary, free_port, poll, start_engine

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parent.parent
JOBS = "/_gatekeeper/jobs"


def _render_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render", ROOT / "deploy/haproxy/render.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["render"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


render = _render_module()


def test_shipped_haproxy_cfg_is_valid(tmp_path: Path) -> None:
    """haproxy -c accepts the shipped file as it is, and rendered for three boxes."""
    haproxy = find_binary("haproxy", "/usr/sbin/haproxy")
    shipped = ROOT / "deploy/haproxy/haproxy.cfg"
    three = tmp_path / "three.cfg"
    boxes = [
        render.Box("a", "10.0.0.11"),
        render.Box("b", "10.0.0.12"),
        render.Box("c", "10.0.0.13", 2),
    ]
    three.write_text(render.render(boxes))
    for cfg in (shipped, three):
        out = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    text = three.read_text()
    assert "server c abns@gk-guard-c maxconn 2 " in text and "backend be_job_c" in text
    for directive in ("retry-on conn-failure 503", "option redispatch", "timeout queue"):
        assert directive in text


def song(seconds: float) -> dict[str, Any]:
    """A distinct song each time: identical requests would be coalesced into one job."""
    return {"lyrics": f"la {uuid.uuid4().hex}", "description": "pop", "seconds": seconds}


@dataclass
class Box:
    name: str
    engine: str
    public: int
    admin: int
    agent: int
    state: Path
    rules: Path
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.public}"


RULES = """
box_id: {name}
agent_listen: 127.0.0.1:{agent}
shutdown: {{drain_timeout: 30s, linger: 0.5s}}
upstream: {{probe: {{interval: 0.5s}}}}
admission:
  resources: {{source: file, file: {calm}}}
  queue: {{max_waiting: {max_waiting}}}
"""


def start_box(box: Box, tmp_path: Path) -> Proc:
    box.proc = Proc(
        [
            "run",
            "--config",
            str(box.rules),
            "--upstream",
            box.engine,
            "--listen",
            f"127.0.0.1:{box.public}",
            "--admin-listen",
            f"127.0.0.1:{box.admin}",
            "--state-dir",
            str(box.state),
        ],
        tmp_path / f"gatekeeper-{box.name}-{uuid.uuid4().hex[:6]}.log",
        ready=r"admin listening on http://",
    )
    return box.proc


class Cluster:
    def __init__(self, tmp_path: Path, procs: list[Proc], engines: list[str], max_waiting: int):
        self.tmp = tmp_path
        self.boxes: list[Box] = []
        calm = tmp_path / "calm.json"
        calm.write_text('{"cpu_percent": 5, "memory_percent": 5}')
        for name, engine in zip(("a", "b"), engines, strict=True):
            b = Box(name, engine, free_port(), free_port(), free_port(), tmp_path / name, Path())
            b.rules = tmp_path / f"rules-{name}.yaml"
            b.rules.write_text(
                RULES.format(name=name, agent=b.agent, calm=calm, max_waiting=max_waiting)
            )
            procs.append(start_box(b, tmp_path))
            self.boxes.append(b)
        self.port = free_port()
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(
            render.render(
                [
                    render.Box(b.name, "127.0.0.1", 1, b.public, b.admin, b.agent)
                    for b in self.boxes
                ],
                bind=f"127.0.0.1:{self.port}",
                guard_prefix=f"gk-{os.getpid()}-{uuid.uuid4().hex[:8]}-",
            )
        )
        haproxy = find_binary("haproxy", "/usr/sbin/haproxy")
        self.haproxy = Proc(
            ["-db", "-f", str(cfg)], tmp_path / "haproxy.log", ready="", program=[haproxy]
        )
        procs.append(self.haproxy)
        self.url = f"http://127.0.0.1:{self.port}"

    async def ready(self, s: aiohttp.ClientSession) -> None:
        """HAProxy answers, and every box's agent has said ready at least once."""

        async def up() -> bool:
            try:
                async with s.get(self.url + "/_gatekeeper/status") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await poll(up, 10)
        await asyncio.sleep(1.2)  # two agent-inter periods: the weights are the boxes' own

    def __getitem__(self, name: str) -> Box:
        return next(b for b in self.boxes if b.name == name)


async def stats(s: aiohttp.ClientSession, engine: str) -> Any:
    async with s.get(engine + "/_sim/stats") as r:
        return await r.json()


async def generate(s: aiohttp.ClientSession, url: str, seconds: float) -> tuple[int, Any]:
    try:
        async with s.post(url + "/generate", json=song(seconds)) as r:
            await r.read()
            return r.status, r.headers
    except aiohttp.ClientError as exc:
        return 0, exc


async def running_on(s: aiohttp.ClientSession, c: Cluster, among: str = "ab") -> str:
    """The box whose engine runs a generation now (waits for one)."""
    found: list[str] = []

    async def any_running() -> bool:
        for b in c.boxes:
            if b.name in among and (await stats(s, b.engine))["active_generations"] > 0:
                found.append(b.name)
                return True
        return False

    await poll(any_running, 10)
    return found[0]


# A song that runs until the test ends it with ``finish`` (engine-sim's /_sim/finish): it
# still runs while the test acts, however slow the box.
HELD = 3600.0


async def finish(s: aiohttp.ClientSession, engine: str) -> None:
    """End the songs running in ``engine`` now (each answers with its WAV)."""
    async with s.post(engine + "/_sim/finish") as r:
        assert r.status == 200


async def occupy_a(s: aiohttp.ClientSession, c: Cluster) -> asyncio.Task[tuple[int, Any]]:
    """A held generation through HAProxy running on box a (one that lands on b is refused
    by b's engine at once; then send another); ``finish(s, c["a"].engine)`` ends it."""
    for _ in range(10):
        task = asyncio.create_task(generate(s, c.url, HELD))

        async def started(task: asyncio.Task[tuple[int, Any]] = task) -> bool:
            return task.done() or (await stats(s, c["a"].engine))["active_generations"] > 0

        await poll(started, 10)
        if not task.done():
            return task
    raise AssertionError("no generation reached box a")


@pytest.fixture
def engines(tmp_path: Path, procs: list[Proc]) -> Iterator[list[str]]:
    urls = []
    for _ in range(2):
        p, url = start_engine(tmp_path, seconds=1.0)
        procs.append(p)
        urls.append(url)
    yield urls


async def test_generations_spread_and_async_jobs_come_home(
    tmp_path: Path, procs: list[Proc], engines: list[str]
) -> None:
    """6 held generations run on both boxes, never two on one engine, all 200; an async
    job's id names its box, and its state and result come back through HAProxy from it."""
    c = Cluster(tmp_path, procs, engines, max_waiting=16)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        await c.ready(s)
        answers = await asyncio.gather(*(generate(s, c.url, 0.8) for _ in range(6)))
        assert [a[0] for a in answers] == [200] * 6, answers
        for b in c.boxes:
            st = await stats(s, b.engine)
            assert st["peak_active_generations"] == 1, (b.name, st)
            assert st["completed_generations"] >= 1, (b.name, st)
        assert sum([(await stats(s, b.engine))["completed_generations"] for b in c.boxes]) == 6

        async with s.post(
            c.url + "/generate", json=song(0.3), headers={"Prefer": "respond-async"}
        ) as r:
            assert r.status == 202, await r.text()
            location = r.headers["Location"]
        job_id = location.rsplit("/", 1)[1]
        box, _, token = job_id.partition(".")
        assert box in ("a", "b") and len(token) == 24

        async def done() -> bool:
            async with s.get(c.url + location) as r:
                assert r.status == 200, await r.text()  # always the owning box: never a 404
                return bool((await r.json())["state"] == "done")

        await poll(done, 15)
        async with s.get(c.url + location + "/result") as r:
            assert r.status == 200 and len(await r.read()) > 0
        other = "b" if box == "a" else "a"
        async with s.get(c[other].url + location) as r:
            # The other box does not have it (routing is what found it), and says whose it is.
            assert r.status == 421
            assert (await r.json())["box"] == box


async def _ended(s: aiohttp.ClientSession, url: str) -> bool:
    async with s.get(url) as r:
        return bool((await r.json())["state"] in ("done", "failed"))


async def test_engine_503_is_not_retried_gatekeepers_refusal_is(
    tmp_path: Path, procs: list[Proc], engines: list[str]
) -> None:
    """An engine's own 503 relayed by gatekeeper reaches the client once, unretried (it may
    have started work); gatekeeper's own refusal (queue_full) is resent to the other box."""
    seen: list[str] = []

    async def refuse(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"detail": "engine overloaded"}, status=503)

    async def healthy(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/generate", refuse)
    app.router.add_get("/{tail:.*}", healthy)
    async with TestServer(app, host="127.0.0.1") as refusing:
        engine_b = str(refusing.make_url("")).rstrip("/")
        c = Cluster(tmp_path, procs, [engines[0], engine_b], max_waiting=0)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
            await c.ready(s)
            long = await occupy_a(s, c)
            status, headers = await generate(s, c.url, 0.1)  # a is full: to b, whose engine 503s
            assert status == 503 and "X-Gatekeeper-Reason" not in headers
            assert "X-Gatekeeper-Engine-Status" not in headers
            assert seen == ["/generate"]  # once: a retry would have gone to a and got 200
            assert (await stats(s, engines[0]))["completed_generations"] == 0
            await finish(s, engines[0])
            assert (await long)[0] == 200
            # Async submissions: a (max_waiting 0, busy) refuses with queue_full, which
            # HAProxy resends to b; b's gatekeeper takes the job (its engine then 503s).
            long = await occupy_a(s, c)
            for _ in range(4):
                async with s.post(
                    c.url + "/generate", json=song(0.1), headers={"Prefer": "respond-async"}
                ) as r:
                    assert r.status == 202, (r.status, await r.text())
                    assert r.headers["Location"].startswith(f"{JOBS}/b.")
                    location = r.headers["Location"]
                # b has no waiting room either (max_waiting 0): let its job end (its engine
                # 503s at once) before the next, or b too would refuse queue_full, rightly.
                await poll(functools.partial(_ended, s, c.url + location), 10)
            await finish(s, engines[0])
            assert (await long)[0] == 200


async def test_a_draining_box_gets_no_new_work_and_delivers_its_job(
    tmp_path: Path, procs: list[Proc], engines: list[str]
) -> None:
    """SIGTERM on the box running a job: that job's 200 comes through HAProxy, and every
    generation sent meanwhile runs on the other box."""
    c = Cluster(tmp_path, procs, engines, max_waiting=16)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        await c.ready(s)
        running = asyncio.create_task(generate(s, c.url, HELD))
        name = await running_on(s, c)
        draining, other = c[name], c["b" if name == "a" else "a"]
        assert draining.proc is not None
        draining.proc.signal(signal.SIGTERM)
        later = [await generate(s, c.url, 0.2) for _ in range(3)]
        assert [a[0] for a in later] == [200] * 3, later
        assert not running.done()  # the draining box still runs its job
        await finish(s, draining.engine)
        assert (await running)[0] == 200
        assert (await stats(s, other.engine))["completed_generations"] == 3
        assert (await stats(s, draining.engine))["completed_generations"] == 1
        assert draining.proc.wait(20) == 0


async def test_a_killed_box_fails_its_job_only(
    tmp_path: Path, procs: list[Proc], engines: list[str]
) -> None:
    """kill -9 of the box running a job: that client gets an error, the next generations run
    on the other box, and a job URL of the dead box is HAProxy's 503, not a 404."""
    c = Cluster(tmp_path, procs, engines, max_waiting=16)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        await c.ready(s)
        running = asyncio.create_task(generate(s, c.url, HELD))
        name = await running_on(s, c)
        dead, other = c[name], c["b" if name == "a" else "a"]
        assert dead.proc is not None
        dead.proc.kill()
        status, _ = await running
        assert status != 200  # 502 from HAProxy, or a cut connection: an error, not a song
        later = [await generate(s, c.url, 0.2) for _ in range(3)]
        assert [a[0] for a in later] == [200] * 3, later
        assert (await stats(s, other.engine))["completed_generations"] == 3

        async def down() -> bool:
            async with s.get(f"{c.url}{JOBS}/{dead.name}.{'A' * 24}") as r:
                return r.status == 503

        await poll(down, 10)
        async with s.get(f"{c.url}{JOBS}/{other.name}.{'A' * 24}") as r:
            assert r.status == 404  # the live box answers for its own ids
