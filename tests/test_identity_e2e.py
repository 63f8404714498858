"""End to end: a shared job never crosses identities (issue #18 §3).

The real ``gatekeeper run`` in front of the real ``engine-sim``. Coalescing joins
only requests of one identity (the client key and the ``jobs.coalesce_vary``
headers, ``Authorization`` and ``Cookie`` by default); each submitter holds its own
id (a handle) on the shared generation, a ``DELETE`` detaches only that handle, the
generation is cancelled when its last handle is gone, and no answer ever carries
another submitter's id. Handles are stored: they survive ``kill -9``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import Proc, poll, resources_file, rules, start_gatekeeper

# No process of a test (engine, gatekeepers) logged a traceback.
pytestmark = pytest.mark.usefixtures("no_traceback")

JOBS = "/_gatekeeper/jobs"
ASYNC = {"Prefer": "respond-async"}
HOT = '{"cpu_percent": 99, "memory_percent": 5}'
CALM = '{"cpu_percent": 5, "memory_percent": 5}'
VICTIM = {"Authorization": "Bearer VICTIM"}
ATTACKER = {"Authorization": "Bearer ATTACKER"}

BASE = {
    "admission": {
        "max_in_flight": 1,
        "expected_seconds": 1,
        "sample_interval": 0.1,
        "on_client_disconnect": "cancel",
        "queue": {"per_client": 20},
    },
    "upstream": {"probe": {"interval": 0.5}},
}


def song(lyrics: str, seconds: float) -> dict[str, Any]:
    return {"lyrics": lyrics, "description": "pop", "seconds": seconds}


def start(tmp_path: Path, procs: list[Proc], engine: str, *layers: Any) -> tuple[Proc, str, str]:
    text = rules(BASE, resources_file(tmp_path / "r.json"), *layers)
    proc, url, admin = start_gatekeeper(
        tmp_path, text, engine, "--state-dir", str(tmp_path / "state")
    )
    procs.append(proc)
    return proc, url, admin


async def submit(
    s: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str]
) -> tuple[int, Any, str]:
    """POST /generate with Prefer: respond-async: (status, headers, raw JSON text)."""
    async with s.post(url + "/generate", json=body, headers={**ASYNC, **headers}) as r:
        return r.status, r.headers, await r.text()


async def view(s: aiohttp.ClientSession, url: str, job_id: str) -> Any:
    async with s.get(f"{url}{JOBS}/{job_id}") as r:
        assert r.status == 200, await r.text()
        assert r.headers["X-Gatekeeper-Job"] == job_id
        return await r.json()


async def delete(s: aiohttp.ClientSession, url: str, job_id: str) -> tuple[int, Any]:
    async with s.delete(f"{url}{JOBS}/{job_id}") as r:
        return r.status, await r.json()


async def until(s: aiohttp.ClientSession, url: str, job_id: str, state: str) -> Any:
    seen: list[Any] = []

    async def reached() -> bool:
        seen.append(await view(s, url, job_id))
        return bool(seen[-1]["state"] == state)

    await poll(reached, 20.0)
    return seen[-1]


async def engine_stats(s: aiohttp.ClientSession, engine: str) -> Any:
    async with s.get(engine + "/_sim/stats") as r:
        return await r.json()


async def generations(s: aiohttp.ClientSession, engine: str) -> int:
    return int((await engine_stats(s, engine))["requests"].get("POST /generate", 0))


async def finish(s: aiohttp.ClientSession, engine: str) -> None:
    """End the engine's running (held) song now: it ran through every step before."""

    async def ended() -> bool:
        async with s.post(engine + "/_sim/finish") as r:
            return bool((await r.json())["finished"] == 1)

    await poll(ended)


def never_shows(foreign: str, *answers: Any) -> None:
    """No part of any answer (headers, body) carries ``foreign``."""
    for a in answers:
        text = a if isinstance(a, str) else json.dumps(dict(a) if hasattr(a, "items") else a)
        assert foreign not in text, text


async def test_different_authorization_never_shares_a_job(
    tmp_path: Path, procs: list[Proc], fresh_engine: tuple[Proc, str], http: aiohttp.ClientSession
) -> None:
    """The attack of the issue: the same body with another Authorization is another job;
    the attacker never learns the victim's id and cannot cancel the victim's generation."""
    engine = fresh_engine[1]
    _, url, admin = start(tmp_path, procs, engine)
    body = song("the victim's song", 3600.0)  # held: ended below, after every step
    code, _, vtext = await submit(http, url, body, VICTIM)
    assert code == 202, vtext
    victim = json.loads(vtext)["id"]
    await until(http, url, victim, "running")

    code, ah, atext = await submit(http, url, body, ATTACKER)
    assert code == 202, atext
    attacker = json.loads(atext)
    assert attacker["id"] != victim and "X-Gatekeeper-Coalesced" not in ah
    assert attacker["state"] == "queued"  # its own generation, waiting for the slot
    never_shows(victim, atext, ah)
    # A Cookie is an identity too (the default coalesce_vary), as is the held form.
    code, ch, ctext = await submit(http, url, body, {**VICTIM, "Cookie": "session=x"})
    assert code == 202 and "X-Gatekeeper-Coalesced" not in ch
    never_shows(victim, ctext, ch)
    cookie_job = json.loads(ctext)["id"]
    assert (await delete(http, url, cookie_job))[0] == 200

    # The attacker deletes what it holds, and guesses: the victim's job is untouched.
    code, gone = await delete(http, url, attacker["id"])
    assert code == 200 and gone["state"] == "cancelled"
    code, guessed = await delete(http, url, "A" * 24)
    assert code == 404, guessed
    assert (await view(http, url, victim))["state"] == "running"
    async with http.get(url + "/_gatekeeper/status") as r:
        never_shows(victim, await r.text())
    async with http.get(admin + "/status") as r:
        never_shows(victim, await r.text())
    await finish(http, engine)
    done = await until(http, url, victim, "done")
    assert done["result"]["status"] == 200
    # One generation: the victim's; the others were deleted while they waited.
    assert await generations(http, engine) == 1
    assert (await view(http, url, attacker["id"]))["state"] == "cancelled"


async def test_one_identity_shares_but_each_submitter_holds_its_own_handle(
    tmp_path: Path, procs: list[Proc], fresh_engine: tuple[Proc, str], http: aiohttp.ClientSession
) -> None:
    """Same identity: one generation, a handle each; DELETE detaches only that handle;
    the last handle gone cancels the generation."""
    engine = fresh_engine[1]
    _, url, _ = start(tmp_path, procs, engine)
    body = song("sung for one user", 2.5)
    code, _, text = await submit(http, url, body, VICTIM)
    assert code == 202
    first = json.loads(text)["id"]
    await until(http, url, first, "running")
    code, h2, text2 = await submit(http, url, body, VICTIM)
    second = json.loads(text2)
    assert code == 202 and h2["X-Gatekeeper-Coalesced"] == "1"
    assert second["id"] != first and h2["X-Gatekeeper-Job"] == second["id"]
    assert h2["Location"] == f"{JOBS}/{second['id']}"
    assert second["state"] == "running" and second["coalesced"] == 1
    never_shows(first, text2, h2)

    # A held request of the same identity joins too, under a third id.
    async with http.post(url + "/generate", json=body, headers=VICTIM) as r:
        assert r.status == 200 and r.headers["X-Gatekeeper-Coalesced"] == "1"
        third = r.headers["X-Gatekeeper-Job"]
        held_answer = await r.read()
    assert third not in (first, second["id"]) and len(held_answer) > 100_000
    assert await generations(http, engine) == 1
    assert (await view(http, url, third))["state"] == "done"
    # The events of a handle name that handle only.
    async with http.get(f"{url}{JOBS}/{second['id']}/events") as r:
        assert r.headers["X-Gatekeeper-Job"] == second["id"]
        stream = (await r.read()).decode()
    assert f'"id": "{second["id"]}"' in stream and '"state": "done"' in stream
    never_shows(first, stream)
    never_shows(third, stream)

    # The second submitter lets go: only its handle is gone.
    code, body2 = await delete(http, url, second["id"])
    assert code == 409 and body2["state"] == "done"  # too late: the song is done
    async with http.get(f"{url}{JOBS}/{first}/result") as r:
        assert r.status == 200 and r.headers["X-Gatekeeper-Job"] == first
        assert await r.read() == held_answer
    async with http.get(f"{url}{JOBS}/{second['id']}/result") as r:
        assert r.status == 200 and r.headers["X-Gatekeeper-Job"] == second["id"]

    # Another song, detached while running: the other holder keeps the generation.
    # Held (an hour): it still runs through every step below, however slow the box.
    long = song("sung for one user, longer", 3600.0)
    _, _, t = await submit(http, url, long, VICTIM)
    a = json.loads(t)["id"]
    await until(http, url, a, "running")
    _, _, t = await submit(http, url, long, VICTIM)
    b = json.loads(t)["id"]
    code, detached = await delete(http, url, b)
    assert code == 200 and (detached["id"], detached["state"]) == (b, "cancelled")
    assert (await view(http, url, a))["state"] == "running"
    async with http.get(f"{url}{JOBS}/{b}/result") as r:
        assert r.status == 409
    code, again = await delete(http, url, b)
    assert code == 409, again
    assert (await view(http, url, a))["state"] == "running"
    # The last handle gone: the generation is cancelled (cancel mode).
    code, last = await delete(http, url, a)
    assert code == 200 and last["id"] == a
    ended = await until(http, url, a, "cancelled")
    assert ended["reason"] == "deleted"
    async with http.post(engine + "/_sim/finish") as r:  # the engine's abandoned song
        assert r.status == 200

    async def engine_idle() -> bool:
        return bool((await engine_stats(http, engine))["active_generations"] == 0)

    await poll(engine_idle, 10.0)
    assert await generations(http, engine) == 2


async def test_handles_survive_kill_9(
    tmp_path: Path, procs: list[Proc], fresh_engine: tuple[Proc, str], http: aiohttp.ClientSession
) -> None:
    """Handles are stored: after kill -9 and a restart each id still reads its job, a
    handle deleted before the kill stays detached, and the generation is cancelled only
    when the last handle that held it is deleted."""
    engine = fresh_engine[1]
    readings = tmp_path / "r.json"
    readings.write_text(HOT)  # nothing is dispatched: the jobs stay queued
    first_proc, url, _ = start(tmp_path, procs, engine)
    body = song("waits across a kill", 0.3)
    ids = []
    for _ in range(3):
        code, _, text = await submit(http, url, body, VICTIM)
        assert code == 202, text
        ids.append(json.loads(text)["id"])
    a, b, c = ids
    assert len(set(ids)) == 3
    assert (await delete(http, url, c))[0] == 200
    # Another job held by a held request only, once its async creator let go: nobody
    # holds it after the kill, so it must not come back queued (and run for no one).
    orphan = song("held only by a held request", 0.3)
    _, _, text = await submit(http, url, orphan, VICTIM)
    creator = json.loads(text)["id"]

    async def held() -> None:
        async with http.post(url + "/generate", json=orphan, headers=VICTIM) as r:
            await r.read()

    holding = asyncio.create_task(held())

    async def joined() -> bool:
        return bool((await view(http, url, creator))["coalesced"] == 1)

    await poll(joined, 10.0)
    code, let_go = await delete(http, url, creator)
    assert code == 200 and let_go["state"] == "cancelled"  # this id only: the held one stays
    first_proc.kill()
    with contextlib.suppress(aiohttp.ClientError):
        await holding
    assert first_proc.proc.returncode == -9

    _, url, _ = start(tmp_path, procs, engine)
    assert (await view(http, url, a))["state"] == "queued"
    assert (await view(http, url, b))["state"] == "queued"
    assert (await view(http, url, c))["state"] == "cancelled"  # deleted before the kill
    assert (await view(http, url, creator))["state"] == "cancelled"
    code, gone = await delete(http, url, b)
    assert code == 200 and gone["state"] == "cancelled"
    assert (await view(http, url, a))["state"] == "queued"  # a still holds it
    code, gone = await delete(http, url, a)
    assert code == 200 and gone["state"] == "cancelled"
    readings.write_text(CALM)
    await asyncio.sleep(1.0)  # the monitor sees calm: a job still queued would start now
    assert await generations(http, engine) == 0


async def test_sharing_across_identities_only_when_configured(
    tmp_path: Path, procs: list[Proc], fresh_engine: tuple[Proc, str], http: aiohttp.ClientSession
) -> None:
    """coalesce_vary: [] (and coalesce_across_clients): other credentials share the job,
    yet each holds its own id, and one's DELETE does not cancel the other's generation."""
    engine = fresh_engine[1]
    shared = {"jobs": {"coalesce_vary": [], "coalesce_across_clients": True}}
    _, url, _ = start(tmp_path, procs, engine, shared)
    body = song("one answer for everyone", 3600.0)  # held: ended below, after the DELETE
    _, _, text = await submit(http, url, body, VICTIM)
    victim = json.loads(text)["id"]
    await until(http, url, victim, "running")
    code, h, text = await submit(http, url, body, ATTACKER)
    attacker = json.loads(text)["id"]
    assert code == 202 and h["X-Gatekeeper-Coalesced"] == "1" and attacker != victim
    never_shows(victim, text, h)
    code, gone = await delete(http, url, attacker)
    assert code == 200 and (gone["id"], gone["state"]) == (attacker, "cancelled")
    assert (await view(http, url, victim))["state"] == "running"
    await finish(http, engine)
    done = await until(http, url, victim, "done")
    assert done["result"]["status"] == 200
    assert await generations(http, engine) == 1
