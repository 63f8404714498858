"""End to end: several engines behind one gatekeeper (issue #11 §1).

The real ``gatekeeper run`` in front of two (then three) real ``engine-sim``
processes, listed in ``upstream.engines``; the shipped ``/generate`` queue route.
Each engine-sim counts its own peak of concurrent generations
(``/_sim/stats``), so "no engine ever runs two" is what the engines saw, not what
gatekeeper believes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import yaml
from support import Proc, poll, resources_file, rules, start_engine, start_gatekeeper

JOBS = "/_gatekeeper/jobs"
ASYNC = {"Prefer": "respond-async"}


BASE = {
    "admission": {
        "expected_seconds": 2,
        "sample_interval": 0.1,
        "queue": {"per_client": 50, "max_waiting": 50},
    },
    "upstream": {"probe": {"interval": 0.3, "timeout": 1}},
}


def engines(*listed: tuple[str, str]) -> dict[str, Any]:
    """A rules layer: ``upstream.engines`` named and at the URLs given."""
    return {"upstream": {"engines": [{"name": n, "url": u} for n, u in listed]}}


async def submit(s: aiohttp.ClientSession, url: str, lyrics: str, seconds: float) -> str:
    body = {"lyrics": lyrics, "description": "pop", "seconds": seconds}
    async with s.post(url + "/generate", json=body, headers=ASYNC) as r:
        assert r.status == 202, await r.text()
        return str((await r.json())["id"])


async def view(s: aiohttp.ClientSession, url: str, job_id: str) -> Any:
    async with s.get(f"{url}{JOBS}/{job_id}") as r:
        assert r.status == 200
        return await r.json()


async def final(s: aiohttp.ClientSession, url: str, job_id: str, timeout: float = 30) -> Any:
    seen: list[Any] = []

    async def ended() -> bool:
        seen.append(await view(s, url, job_id))
        return seen[-1]["state"] in ("done", "failed", "cancelled", "expired")

    await poll(ended, timeout)
    return seen[-1]


async def stats(s: aiohttp.ClientSession, engine: str) -> Any:
    async with s.get(engine + "/_sim/stats") as r:
        return await r.json()


async def status(s: aiohttp.ClientSession, admin: str) -> Any:
    async with s.get(admin + "/status") as r:
        return await r.json()


async def metric(s: aiohttp.ClientSession, admin: str, name: str) -> dict[str, float]:
    """``{engine: value}`` of one per-engine metric, from /metrics."""
    async with s.get(admin + "/metrics") as r:
        text = await r.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('engine="', 1)[1].split('"', 1)[0]] = float(value)
    return out


def rules_of(tmp_path: Path) -> Path:
    (found,) = tmp_path.glob("rules-*.yaml")
    return found


def start_two(tmp_path: Path, procs: list[Proc], seconds: float) -> tuple[str, str, str, str]:
    a, a_url = start_engine(tmp_path, seconds=seconds)
    b, b_url = start_engine(tmp_path, seconds=seconds)
    procs += [a, b]
    text = rules(
        BASE, resources_file(tmp_path / "calm.json"), engines(("gpu0", a_url), ("gpu1", b_url))
    )
    gk, url, admin = start_gatekeeper(tmp_path, text, None, "--state-dir", str(tmp_path / "s"))
    procs.append(gk)
    return url, admin, a_url, b_url


async def test_jobs_spread_over_two_engines_and_no_engine_ever_runs_two(
    tmp_path: Path, procs: list[Proc], http: aiohttp.ClientSession
) -> None:
    """Six queued jobs over two one-slot engines: two run at once (one per engine), each
    engine runs three, neither ever runs two; status and metrics show each engine."""
    url, admin, a_url, b_url = start_two(tmp_path, procs, seconds=0.8)
    await poll(lambda: _all_up(http, admin), 10)
    ids = [await submit(http, url, f"song {i}", 0.8) for i in range(6)]

    async def two_running() -> bool:
        doc = await status(http, admin)
        return [e["in_flight"] for e in doc["engines"]] == [1, 1]

    await poll(two_running, 10)
    doc = await status(http, admin)
    assert doc["in_flight"] == 2 and doc["max_in_flight"] == 2
    assert sorted(r["engine"] for r in doc["running"]) == ["gpu0", "gpu1"]
    assert [(e["name"], e["url"], e["up"], e["max_in_flight"]) for e in doc["engines"]] == [
        ("gpu0", a_url, True, 1),
        ("gpu1", b_url, True, 1),
    ]
    ends = [await final(http, url, i) for i in ids]
    assert [e["state"] for e in ends] == ["done"] * 6
    sa, sb = await stats(http, a_url), await stats(http, b_url)
    assert sa["peak_active_generations"] == 1 and sb["peak_active_generations"] == 1
    assert sa["completed_generations"] + sb["completed_generations"] == 6
    assert min(sa["completed_generations"], sb["completed_generations"]) >= 2
    admitted = await metric(http, admin, "gatekeeper_engine_admitted_total")
    assert admitted == {
        "gpu0": sa["completed_generations"],
        "gpu1": sb["completed_generations"],
    }
    assert await metric(http, admin, "gatekeeper_engine_up") == {"gpu0": 1.0, "gpu1": 1.0}
    assert await metric(http, admin, "gatekeeper_engine_max_in_flight") == {
        "gpu0": 1.0,
        "gpu1": 1.0,
    }


async def _all_up(http: aiohttp.ClientSession, admin: str) -> bool:
    return all(e["up"] is True for e in (await status(http, admin))["engines"])


async def test_a_killed_engine_fails_only_its_job_and_gets_no_new_one(
    tmp_path: Path, procs: list[Proc], http: aiohttp.ClientSession
) -> None:
    """kill -9 of one engine mid-job: that job fails (502, never re-run on the other
    engine), the other engine's job is delivered, and every later job runs on the
    engine that is left while the dead one is reported down."""
    url, admin, _, b_url = start_two(tmp_path, procs, seconds=0.5)
    await poll(lambda: _all_up(http, admin), 10)
    # Held (an hour): both still run at the kill, however slow the box; gpu1's is ended
    # below (engine-sim /_sim/finish).
    first = [await submit(http, url, f"first {i}", 3600.0) for i in range(2)]

    async def both_running() -> bool:
        return [(await view(http, url, i))["state"] for i in first] == ["running"] * 2

    await poll(both_running, 10)
    on = {(await view(http, url, i))["engine"]: i for i in first}
    assert set(on) == {"gpu0", "gpu1"}
    procs[0].kill()  # gpu0's engine-sim: SIGKILL, a crash as far as anyone can tell
    dead = await final(http, url, on["gpu0"])
    assert dead["state"] == "failed"
    assert dead["reason"] in ("upstream_unavailable", "upstream_mid_body"), dead
    async with http.get(f"{url}{JOBS}/{on['gpu0']}/result") as r:
        assert r.status == 409  # no engine answer to replay: the failure is the answer
        assert (await r.json())["job_reason"] == dead["reason"]

    async def down() -> bool:
        return [e["up"] for e in (await status(http, admin))["engines"]] == [False, True]

    await poll(down, 10)
    assert (await view(http, url, on["gpu1"]))["state"] == "running"
    async with http.post(b_url + "/_sim/finish") as r:
        assert (await r.json())["finished"] == 1
    later = [await submit(http, url, f"later {i}", 0.5) for i in range(2)]
    assert [(await final(http, url, i))["state"] for i in later] == ["done", "done"]
    assert (await final(http, url, on["gpu1"]))["state"] == "done"
    sb = await stats(http, b_url)
    # gpu1 ran its own first job and both later ones; the failed job was not re-run there.
    assert sb["completed_generations"] == 3 and sb["peak_active_generations"] == 1
    assert (await metric(http, admin, "gatekeeper_engine_up"))["gpu0"] == 0.0


async def test_reload_adds_and_removes_engines_without_touching_a_running_job(
    tmp_path: Path, procs: list[Proc], http: aiohttp.ClientSession
) -> None:
    """A reload that removes gpu0 while it runs a job and adds gpu2: the job on gpu0 is
    delivered (status lists gpu0 as removed until then), new jobs go to gpu1 and gpu2
    only, and gpu0's metric series go."""
    url, admin, a_url, b_url = start_two(tmp_path, procs, seconds=0.5)
    c, c_url = start_engine(tmp_path, seconds=0.5)
    procs.append(c)
    await poll(lambda: _all_up(http, admin), 10)
    # Held (an hour): it runs through the reload, however slow the box; ended below.
    running = await submit(http, url, "on gpu0", 3600.0)
    await poll(lambda: _state_is(http, url, running, "running"), 10)
    assert (await view(http, url, running))["engine"] == "gpu0"

    rules_file = rules_of(tmp_path)
    doc = yaml.safe_load(rules_file.read_text())
    listed = doc["upstream"]["engines"]
    assert {"name": "gpu0", "url": a_url} in listed
    doc["upstream"]["engines"] = [e for e in listed if e["name"] != "gpu0"]
    doc["upstream"]["engines"].append({"name": "gpu2", "url": c_url})
    rules_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    async with http.post(admin + "/reload") as r:
        body = await r.json()
        assert r.status == 200, body
    keys = [c["key"] for c in body["changed"]]
    assert keys == ["upstream.engines[gpu0]", "upstream.engines[gpu2]"], keys
    doc = await status(http, admin)
    assert [(e["name"], e.get("removed", False), e["in_flight"]) for e in doc["engines"]] == [
        ("gpu1", False, 0),
        ("gpu2", False, 0),
        ("gpu0", True, 1),
    ]
    later = [await submit(http, url, f"later {i}", 0.5) for i in range(4)]
    async with http.post(a_url + "/_sim/finish") as r:
        assert (await r.json())["finished"] == 1
    assert (await final(http, url, running))["state"] == "done"
    assert [(await final(http, url, i))["state"] for i in later] == ["done"] * 4
    sa, sb, sc = [await stats(http, u) for u in (a_url, b_url, c_url)]
    assert sa["completed_generations"] == 1  # only the job it had before the reload
    assert sb["completed_generations"] + sc["completed_generations"] == 4
    assert sc["completed_generations"] >= 1
    assert all(s["peak_active_generations"] == 1 for s in (sa, sb, sc))
    assert set(await metric(http, admin, "gatekeeper_engine_up")) == {"gpu1", "gpu2"}
    assert [e["name"] for e in (await status(http, admin))["engines"]] == ["gpu1", "gpu2"]


async def _state_is(http: aiohttp.ClientSession, url: str, job_id: str, state: str) -> bool:
    return bool((await view(http, url, job_id))["state"] == state)


async def test_every_engine_down_queues_jobs_until_one_is_back(
    tmp_path: Path, procs: list[Proc], http: aiohttp.ClientSession
) -> None:
    """Both engines stopped: a queued job waits (reason engine_down in /status) instead
    of failing on a dead engine; an engine back on its port runs it."""
    url, admin, _, b_url = start_two(tmp_path, procs, seconds=0.5)
    await poll(lambda: _all_up(http, admin), 10)
    for p in procs[:2]:
        p.stop()

    async def all_down() -> bool:
        doc = await status(http, admin)
        return doc["reasons"] == ["engine_down"] and doc["upstream_up"] is False

    await poll(all_down, 10)
    waiting = await submit(http, url, "patient", 0.5)

    async def waited_a_second() -> bool:  # three probe intervals by the server's clock
        return bool((await view(http, url, waiting))["waited_seconds"] >= 1.0)

    await poll(waited_a_second)
    assert (await view(http, url, waiting))["state"] == "queued"
    port = b_url.rsplit(":", 1)[1]
    back = Proc(
        ["engine-sim", "--listen", f"127.0.0.1:{port}", "--seconds", "0.5", "--no-cpu"],
        tmp_path / "engine-back.log",
        ready=r"listening on http://",
    )
    procs.append(back)
    done = await final(http, url, waiting)
    assert done["state"] == "done"
    assert (await stats(http, b_url))["completed_generations"] == 1


async def test_an_engine_that_refuses_a_connection_is_down_before_its_next_probe(
    tmp_path: Path, procs: list[Proc], http: aiohttp.ClientSession
) -> None:
    """gpu0 crashes between two probes (interval 30 s): the first job sent there fails to
    connect (502) and gpu0 is down from that moment, so the next job runs on gpu1 instead
    of failing on gpu0 too (before: every job until the next probe went to gpu0, the
    least loaded, and failed in milliseconds while gpu1 idled)."""
    a, a_url = start_engine(tmp_path, seconds=0.3)
    b, b_url = start_engine(tmp_path, seconds=0.3)
    procs += [a, b]
    text = rules(
        BASE,
        resources_file(tmp_path / "calm.json"),
        engines(("gpu0", a_url), ("gpu1", b_url)),
        {"upstream": {"probe": {"interval": 30}}},  # no probe between the crash and the jobs
    )
    gk, url, admin = start_gatekeeper(tmp_path, text, None, "--state-dir", str(tmp_path / "s"))
    procs.append(gk)
    await poll(lambda: _all_up(http, admin), 10)
    a.kill()
    first = await final(http, url, await submit(http, url, "refused", 0.3))
    assert first["state"] == "failed" and first["reason"] == "upstream_unavailable", first
    assert [e["up"] for e in (await status(http, admin))["engines"]] == [False, True]
    nxt = await final(http, url, await submit(http, url, "on gpu1", 0.3))
    assert nxt["state"] == "done", nxt
    assert (await stats(http, b_url))["completed_generations"] == 1  # it ran on gpu1


async def test_an_engine_that_dies_mid_song_is_down_before_its_next_probe(
    tmp_path: Path, procs: list[Proc], http: aiohttp.ClientSession
) -> None:
    """gpu0 crashes while it computes a song (probe interval 30 s): the connection it had
    accepted is dropped, its job fails, and gpu0 is down from that moment (a dropped
    connection is a verdict on the engine, as a refused one is), so the next job runs on
    gpu1. Before: only a refused connection was; gpu0, idle and first in the file, was
    sent the next job, which failed to connect (CI: bench section h)."""
    a, a_url = start_engine(tmp_path, seconds=0.3)
    b, b_url = start_engine(tmp_path, seconds=0.3)
    procs += [a, b]
    text = rules(
        BASE,
        resources_file(tmp_path / "calm.json"),
        engines(("gpu0", a_url), ("gpu1", b_url)),
        {"upstream": {"probe": {"interval": 30}}},  # no probe between the crash and the jobs
    )
    gk, url, admin = start_gatekeeper(tmp_path, text, None, "--state-dir", str(tmp_path / "s"))
    procs.append(gk)
    await poll(lambda: _all_up(http, admin), 10)
    long_job = await submit(http, url, "killed mid-song", 600)

    async def running_on_gpu0() -> bool:
        v = await view(http, url, long_job)
        return bool(v["state"] == "running" and v["engine"] == "gpu0")

    await poll(running_on_gpu0, 10)
    a.kill()
    dead = await final(http, url, long_job)
    assert dead["state"] == "failed", dead
    assert [e["up"] for e in (await status(http, admin))["engines"]] == [False, True]
    nxt = await final(http, url, await submit(http, url, "on gpu1", 0.3))
    assert nxt["state"] == "done", nxt
    assert (await stats(http, b_url))["completed_generations"] == 1  # it ran on gpu1
