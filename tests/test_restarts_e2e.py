"""Restarts and reloads never double the engine (issue #18 §5), end to end.

The real ``gatekeeper run`` in front of the real ``engine-sim``, whose own peak of
generations running at once (``/_sim/stats``) is the judge:

- ``kill -9`` of gatekeeper during a long song, restarted with jobs queued: the
  engine is still computing the orphaned song, so nothing more is sent to it
  until it is known idle — by its busy signal (``upstream.probe.busy`` over
  engine-sim's ``/healthz``; the duration estimate is set far too short to
  cover the song, so only the signal can hold it), or, without one, by the
  grace of the song's expected remaining time;
- a reload that renames the busy engine keeping its URL: its running song still
  counts against its slot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from support import Proc, poll, rules, start_engine, start_gatekeeper

# No process of a test (engine, gatekeepers) logged a traceback.
pytestmark = pytest.mark.usefixtures("no_traceback")

JOBS = "/_gatekeeper/jobs"
ASYNC = {"Prefer": "respond-async"}
LONG = 3.0  # the orphaned song, seconds


def _rules(expected: float, busy: bool, engines: list[dict[str, Any]] | None = None) -> str:
    probe: dict[str, Any] = {"path": "/healthz", "interval": 0.2}
    if busy:
        probe["busy"] = {"pointer": "/busy", "equals": True}
    upstream: dict[str, Any] = {"probe": probe}
    admission: dict[str, Any] = {
        "expected_seconds": expected,
        "sample_interval": 0.1,
        "on_client_disconnect": "finish",
        "queue": {"per_client": 20},
    }
    if engines is None:
        admission["max_in_flight"] = 1
    else:
        upstream["engines"] = engines
    return rules({"admission": admission, "upstream": upstream})


async def _submit(s: aiohttp.ClientSession, url: str, lyrics: str, seconds: float) -> str:
    body = {"lyrics": lyrics, "description": "pop", "seconds": seconds}
    async with s.post(url + "/generate", json=body, headers=ASYNC) as r:
        assert r.status == 202, await r.text()
        return str((await r.json())["id"])


async def _job(s: aiohttp.ClientSession, url: str, job_id: str) -> Any:
    async with s.get(f"{url}{JOBS}/{job_id}") as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def _until(
    s: aiohttp.ClientSession, url: str, job_id: str, state: str, timeout: float = 20.0
) -> None:
    async def reached() -> bool:
        return bool((await _job(s, url, job_id))["state"] == state)

    await poll(reached, timeout)


def _rename_engine(config: Path, name: str) -> None:
    """The same rules file (its calm resources too), the engine renamed, its URL kept."""
    data = yaml.safe_load(config.read_text())
    data["upstream"]["engines"][0]["name"] = name
    config.write_text(yaml.safe_dump(data))


async def _sim(s: aiohttp.ClientSession, engine: str) -> Any:
    async with s.get(engine + "/_sim/stats") as r:
        return await r.json()


@pytest.mark.parametrize(
    ("expected", "busy"),
    [(0.5, True), (LONG + 2.0, False)],  # grace: 2 s more than the song takes
    ids=["busy-signal", "grace"],
)
async def test_kill_9_restart_waits_for_the_orphaned_generation(
    tmp_path: Path, procs: list[Proc], http: aiohttp.ClientSession, expected: float, busy: bool
) -> None:
    proc, engine = start_engine(tmp_path)
    procs.append(proc)
    state = tmp_path / "state"
    text = _rules(expected, busy)
    first, url, _ = start_gatekeeper(tmp_path, text, engine, "--state-dir", str(state))
    procs.append(first)
    long = await _submit(http, url, "the orphaned song", LONG)
    await _until(http, url, long, "running")
    queued = [await _submit(http, url, f"queued {i}", 0.3) for i in range(2)]
    first.kill()  # SIGKILL: the engine keeps computing the long song
    assert (await _sim(http, engine))["active_generations"] == 1

    second, url, _ = start_gatekeeper(tmp_path, text, engine, "--state-dir", str(state))
    procs.append(second)
    for job_id in queued:
        await _until(http, url, job_id, "done", timeout=LONG + 15)
    sim = await _sim(http, engine)
    assert sim["peak_active_generations"] == 1, sim  # never two at once on a 1-slot engine
    assert sim["completed_generations"] == 3  # the orphan, then the queue, each once
    assert (await _job(http, url, long))["state"] == "failed"
    assert "was running on engine default at the last stop" in second.output()


async def test_a_reload_renaming_the_busy_engine_keeps_its_slot(
    tmp_path: Path, procs: list[Proc], http: aiohttp.ClientSession
) -> None:
    proc, engine = start_engine(tmp_path)
    procs.append(proc)
    state = tmp_path / "state"
    first = [{"name": "gpu0", "url": engine, "max_in_flight": 1}]
    gk, url, admin = start_gatekeeper(
        tmp_path, _rules(4.0, False, first), None, "--state-dir", str(state)
    )
    procs.append(gk)
    # Held (an hour): it runs through the reload, however slow the box; ended below.
    long = await _submit(http, url, "a song under the old name", 3600.0)
    await _until(http, url, long, "running")
    _rename_engine(Path(gk.args[gk.args.index("--config") + 1]), "renamed")
    async with http.post(admin + "/reload") as r:
        assert r.status == 200, await r.text()
    nxt = await _submit(http, url, "the next song", 0.3)
    view = await _job(http, url, nxt)
    assert view["state"] == "queued", view  # the renamed engine's slot is still taken
    async with http.get(admin + "/status") as r:
        status = await r.json()
    if (await _job(http, url, long))["state"] == "running":  # one engine, its one job
        seen = [(e["name"], e["in_flight"]) for e in status["engines"]]
        assert seen == [("renamed", 1)], status["engines"]
    async with http.post(engine + "/_sim/finish") as r:
        assert r.status == 200 and (await r.json())["finished"] == 1
    await _until(http, url, nxt, "done", timeout=15)
    sim = await _sim(http, engine)
    assert sim["peak_active_generations"] == 1, sim
    assert (await _job(http, url, long))["state"] == "done"
