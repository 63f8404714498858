"""End to end: durable async jobs, coalescing and kept results (issue #9 §2, §3, bad input).

The real ``gatekeeper run`` process (its own ``--state-dir`` in a temp dir) in front
of the real ``gatekeeper engine-sim``; everything crosses real sockets. The engine's
WAV depends only on the lyrics, so a replayed result is compared byte for byte with
what the engine answers to the same request sent to it directly.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import Proc, free_port, poll, resources_file, rules, start_gatekeeper

# No process of a test (engine, gatekeepers) logged a traceback.
pytestmark = pytest.mark.usefixtures("no_traceback")

JOBS = "/_gatekeeper/jobs"
ASYNC = {"Prefer": "respond-async"}
JOB_ID = re.compile(r"[A-Za-z0-9_-]{24}")
CALM = '{"cpu_percent": 5, "memory_percent": 5}'
HOT = '{"cpu_percent": 99, "memory_percent": 5}'


# One generation at a time; every client one key (all come from 127.0.0.1) with room for
# many; CPU/memory from a readings file (``resources_file``: calm unless a test heats it).
BASE = {
    "admission": {
        "max_in_flight": 1,
        "expected_seconds": 1,
        "sample_interval": 0.1,
        "on_client_disconnect": "finish",
        "queue": {"per_client": 20},
    },
    "upstream": {"probe": {"interval": 0.5}},
}


def gatekeeper(
    tmp_path: Path, procs: list[Proc], engine: str, state: Path, text: str
) -> tuple[Proc, str, str]:
    proc, url, admin = start_gatekeeper(tmp_path, text, engine, "--state-dir", str(state))
    procs.append(proc)
    return proc, url, admin


def song(lyrics: str, seconds: float) -> dict[str, Any]:
    return {"lyrics": lyrics, "description": "pop", "seconds": seconds}


async def submit(
    s: aiohttp.ClientSession, url: str, body: Any, **headers: str
) -> tuple[int, Any, Any]:
    """POST /generate with Prefer: respond-async; (status, headers, JSON body)."""
    async with s.post(url + "/generate", json=body, headers={**ASYNC, **headers}) as r:
        return r.status, r.headers, await r.json()


async def job(s: aiohttp.ClientSession, url: str, job_id: str) -> Any:
    async with s.get(f"{url}{JOBS}/{job_id}") as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def until_state(
    s: aiohttp.ClientSession, url: str, job_id: str, state: str, timeout: float = 15.0
) -> Any:
    seen: list[Any] = []

    async def reached() -> bool:
        seen.append(await job(s, url, job_id))
        return bool(seen[-1]["state"] == state)

    await poll(reached, timeout)
    return seen[-1]


async def result(s: aiohttp.ClientSession, url: str, job_id: str, **headers: str) -> Any:
    async with s.get(f"{url}{JOBS}/{job_id}/result", headers=headers) as r:
        return r.status, r.headers, await r.read()


async def stats(s: aiohttp.ClientSession, engine: str) -> Any:
    async with s.get(engine + "/_sim/stats") as r:
        return await r.json()


async def generations(s: aiohttp.ClientSession, engine: str) -> int:
    """How many POST /generate requests the engine has seen."""
    return int((await stats(s, engine))["requests"].get("POST /generate", 0))


async def direct(s: aiohttp.ClientSession, engine: str, body: Any) -> tuple[Any, bytes]:
    """The engine's own answer to ``body`` (after the gatekeeper's work: it counts)."""
    async with s.post(engine + "/generate", json=body) as r:
        assert r.status == 200
        return r.headers, await r.read()


async def status(s: aiohttp.ClientSession, admin: str) -> Any:
    async with s.get(admin + "/status") as r:
        return await r.json()


async def events(s: aiohttp.ClientSession, url: str, job_id: str) -> list[Any]:
    """Every ``job`` event of the job's SSE stream, read until the server ends it."""
    out: list[Any] = []
    async with s.get(f"{url}{JOBS}/{job_id}/events") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        event = None
        async for raw in r.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "job":
                out.append(json.loads(line[6:]))
    return out


def assert_json_error(status: int, body: Any, expected: int) -> None:
    assert status == expected, body
    assert isinstance(body, dict) and isinstance(body.get("detail"), str) and body["detail"]


# --------------------------------------------------------------------------- §2 async jobs


async def test_async_job_lifecycle_events_and_result(
    tmp_path: Path, procs: list[Proc], fresh_engine: tuple[Proc, str], http: aiohttp.ClientSession
) -> None:
    engine = fresh_engine[1]  # its own engine: counts from zero
    _, url, _ = gatekeeper(
        tmp_path,
        procs,
        engine,
        tmp_path / "state",
        rules(BASE, resources_file(tmp_path / "r.json")),
    )
    first, second = song("ahead", 1.0), song("[verse] 海风吹过夏天的街", 0.5)
    code, _, ahead = await submit(http, url, first)
    assert code == 202
    code, headers, view = await submit(http, url, second)
    assert code == 202, view
    job_id = view["id"]
    assert JOB_ID.fullmatch(job_id)
    assert headers["Location"] == f"{JOBS}/{job_id}"
    assert {"id", "state", "position", "eta_seconds", "links"} <= view.keys()
    assert view["state"] == "queued" and view["position"] == 1
    assert view["eta_seconds"] > 0
    assert view["links"]["result"] == f"{JOBS}/{job_id}/result"
    watching = asyncio.create_task(events(http, url, job_id))

    assert (await job(http, url, job_id))["state"] == "queued"
    code, _, body = await result(http, url, job_id)
    assert code == 409
    assert json.loads(body)["state"] == "queued"
    running = await until_state(http, url, job_id, "running")
    assert running["position"] == 0
    done = await until_state(http, url, job_id, "done")
    assert done["result"]["status"] == 200

    async with asyncio.timeout(10):  # the stream ends by itself at the final state
        seen = await watching
    states = [e["state"] for e in seen]
    assert [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s] == [
        "queued",
        "running",
        "done",
    ]
    keys = [(e["state"], e["position"], e["progress"], e["result"]) for e in seen]
    assert all(a != b for a, b in itertools.pairwise(keys)), "one event per change"

    code, got_headers, got = await result(http, url, job_id)
    assert code == 200
    engine_headers, expected = await direct(http, engine, second)
    assert got == expected and len(got) > 100_000
    assert got_headers["Content-Length"] == engine_headers["Content-Length"] == str(len(got))
    assert got_headers["Content-Type"] == engine_headers["Content-Type"] == "audio/wav"
    assert got_headers["X-Gatekeeper-Job"] == job_id
    assert "X-Generation-Id" in got_headers
    code, part_headers, part = await result(http, url, job_id, Range="bytes=0-99")
    assert code == 206
    assert part == expected[:100]
    assert part_headers["Content-Range"] == f"bytes 0-99/{len(expected)}"
    assert (await job(http, url, ahead["id"]))["state"] == "done"


async def test_delete_queued_finished_and_unknown_jobs(
    tmp_path: Path, procs: list[Proc], fresh_engine: tuple[Proc, str], http: aiohttp.ClientSession
) -> None:
    engine = fresh_engine[1]  # its own engine: counts from zero
    _, url, admin = gatekeeper(
        tmp_path,
        procs,
        engine,
        tmp_path / "state",
        rules(BASE, resources_file(tmp_path / "r.json")),
    )
    _, _, ahead = await submit(http, url, song("ahead", 0.8))
    _, _, queued = await submit(http, url, song("never sung", 0.3))
    assert queued["state"] == "queued"
    async with http.delete(f"{url}{JOBS}/{queued['id']}") as r:
        assert r.status == 200
        assert (await r.json())["state"] == "cancelled"
    assert (await job(http, url, queued["id"]))["state"] == "cancelled"
    await until_state(http, url, ahead["id"], "done")
    # Dispatch is synchronous on the slot's release: a cancelled job started anyway
    # would be in flight now.
    st = await status(http, admin)
    assert st["in_flight"] == 0 and st["queue"]["entries"] == []
    assert await generations(http, engine) == 1  # the engine never saw the cancelled one
    code, _, body = await result(http, url, queued["id"])
    assert code == 409 and json.loads(body)["state"] == "cancelled"

    for finished, state in ((ahead["id"], "done"), (queued["id"], "cancelled")):
        async with http.delete(f"{url}{JOBS}/{finished}") as r:
            assert_json_error(r.status, await r.json(), 409)
            assert r.headers["Content-Type"].startswith("application/json")
        assert (await job(http, url, finished))["state"] == state

    unknown = "A" * 24  # the right shape, but no such job
    for path in (
        unknown,
        f"{unknown}/result",
        f"{unknown}/events",
        "abc",
        "A" * 25,
        "A" * 23 + "!",
        f"{ahead['id']}/nope",
    ):
        for method in ("GET", "DELETE"):
            async with http.request(method, f"{url}{JOBS}/{path}") as r:
                if method == "DELETE" and path.endswith(("/result", "/events")):
                    continue  # a known resource shape; 404 or 405 are both honest
                assert_json_error(r.status, await r.json(), 404)
    assert await generations(http, engine) == 1


async def test_kill_9_mid_queue_keeps_queued_and_done_jobs(
    tmp_path: Path, procs: list[Proc], fresh_engine: tuple[Proc, str], http: aiohttp.ClientSession
) -> None:
    engine = fresh_engine[1]  # its own engine: counts from zero
    state, readings = tmp_path / "state", tmp_path / "r.json"
    text = rules(BASE, resources_file(readings))
    first, url, _ = gatekeeper(tmp_path, procs, engine, state, text)
    _, _, done = await submit(http, url, song("done before", 0.2))
    await until_state(http, url, done["id"], "done")
    _, _, kept = await result(http, url, done["id"])
    _, _, long = await submit(http, url, song("a long song", 30.0))
    await until_state(http, url, long["id"], "running")
    queued = []
    for i in range(3):
        _, _, v = await submit(http, url, song(f"queued {i}", 0.3))
        assert v["state"] == "queued" and v["position"] == i + 1
        queued.append(v["id"])
    assert await generations(http, engine) == 2

    first.kill()  # SIGKILL: no drain, no cleanup
    assert first.proc.returncode == -9
    # Hot CPU at the restart holds dispatch, so the restored queue can be looked at.
    readings.write_text(HOT)
    _, url, admin = gatekeeper(tmp_path, procs, engine, state, text)
    for pos, job_id in enumerate(queued, start=1):
        v = await job(http, url, job_id)
        assert (v["state"], v["position"]) == ("queued", pos)
    assert [e["state"] for e in (await status(http, admin))["queue"]["entries"]] == ["queued"] * 3
    interrupted = await job(http, url, long["id"])
    assert (interrupted["state"], interrupted["reason"]) == ("failed", "interrupted")
    code, _, again = await result(http, url, done["id"])
    assert code == 200 and again == kept and len(kept) > 100_000

    readings.write_text(CALM)
    watches = [asyncio.create_task(events(http, url, j)) for j in queued]
    for job_id in queued:
        await until_state(http, url, job_id, "done")
    started: list[float] = []
    for w in watches:
        async with asyncio.timeout(10):
            seen = await w
        assert seen[-1]["state"] == "done"
        v = await job(http, url, seen[-1]["id"])
        started.append(v["waited_seconds"])  # created in order: waited orders the starts
    assert started == sorted(started) and len(set(started)) == 3, started
    for job_id in queued:
        code, _, body = await result(http, url, job_id)
        assert code == 200 and len(body) > 100_000
    # done + long before the kill, the three queued after it: the long one never again
    assert await generations(http, engine) == 5
    assert (await job(http, url, long["id"]))["state"] == "failed"


# --------------------------------------------------------------------------- §3 coalescing


async def test_duplicate_while_running_is_coalesced(
    tmp_path: Path, procs: list[Proc], fresh_engine: tuple[Proc, str], http: aiohttp.ClientSession
) -> None:
    engine = fresh_engine[1]  # its own engine: counts from zero
    _, url, _ = gatekeeper(
        tmp_path,
        procs,
        engine,
        tmp_path / "state",
        rules(BASE, resources_file(tmp_path / "r.json")),
    )
    body = song("sung once", 1.0)

    async def held() -> tuple[int, Any, bytes]:
        async with http.post(url + "/generate", json=body) as r:
            return r.status, r.headers, await r.read()

    one = asyncio.create_task(held())

    async def engine_busy() -> bool:
        return bool((await stats(http, engine))["active_generations"] == 1)

    await poll(engine_busy)
    two = asyncio.create_task(held())
    (s1, h1, b1), (s2, h2, b2) = await asyncio.gather(one, two)
    assert s1 == s2 == 200
    assert b1 == b2 and len(b1) > 100_000
    # One generation, a handle each (issue #18 §3): no answer carries another's id.
    assert h1["X-Gatekeeper-Job"] != h2["X-Gatekeeper-Job"]
    assert JOB_ID.fullmatch(h1["X-Gatekeeper-Job"]) and JOB_ID.fullmatch(h2["X-Gatekeeper-Job"])
    for handle in (h1["X-Gatekeeper-Job"], h2["X-Gatekeeper-Job"]):
        assert (await job(http, url, handle))["state"] == "done"
    assert "X-Gatekeeper-Coalesced" not in h1
    assert h2["X-Gatekeeper-Coalesced"] == "1"
    assert await generations(http, engine) == 1
    assert (await stats(http, engine))["completed_generations"] == 1
    # The same body to another spelling of the path is another request to the engine
    # (which does not serve /generate/): never answered from the kept result.
    async with http.post(url + "/generate/", json=body) as r:
        assert r.status == 404 and "X-Gatekeeper-Coalesced" not in r.headers

    key = {"Idempotency-Key": "order-4711"}
    c1, _, v1 = await submit(http, url, song("first words", 0.5), **key)
    c2, h, v2 = await submit(http, url, song("other words", 0.5), **key)
    assert c1 == c2 == 202
    assert v1["id"] != v2["id"]  # the same job, each request its own id on it
    assert h["X-Gatekeeper-Coalesced"] == "1" and v2["coalesced"] == 1
    await until_state(http, url, v1["id"], "done")
    await until_state(http, url, v2["id"], "done")
    assert await generations(http, engine) == 2


async def test_retry_after_client_timeout_gets_kept_result(
    tmp_path: Path, procs: list[Proc], fresh_engine: tuple[Proc, str], http: aiohttp.ClientSession
) -> None:
    engine = fresh_engine[1]  # its own engine: counts from zero
    _, url, admin = gatekeeper(
        tmp_path,
        procs,
        engine,
        tmp_path / "state",
        rules(BASE, resources_file(tmp_path / "r.json")),
    )
    body = song("[verse] the frontend gave up", 1.5)
    with pytest.raises(asyncio.TimeoutError):  # the seed's frontend timeout, shortened
        async with http.post(
            url + "/generate", json=body, timeout=aiohttp.ClientTimeout(total=0.5)
        ) as r:
            await r.read()

    async def finished() -> bool:
        st = await status(http, admin)
        return bool(st["in_flight"] == 0 and not st["queue"]["entries"])

    await poll(finished)
    assert (await stats(http, engine))["completed_generations"] == 1

    t0 = time.perf_counter()
    async with http.post(url + "/generate", json=body) as r:
        got = await r.read()
        code, headers = r.status, r.headers
    took = time.perf_counter() - t0
    print(f"retry after client timeout: kept result ({len(got)} bytes) in {took * 1000:.1f} ms")
    assert code == 200
    assert took < 1.0
    assert headers["X-Gatekeeper-Coalesced"] == "1"
    assert JOB_ID.fullmatch(headers["X-Gatekeeper-Job"])
    assert await generations(http, engine) == 1
    _, expected = await direct(http, engine, body)
    assert got == expected

    bad = {"lyrics": 7}  # the engine answers 422: reported, never kept for replay
    answers = []
    for _ in range(2):
        async with http.post(url + "/generate", json=bad) as r:
            answers.append((r.status, r.headers.get("X-Gatekeeper-Coalesced"), await r.json()))
    assert [(c, co) for c, co, _ in answers] == [(422, None), (422, None)], answers
    assert "lyrics" in answers[0][2]["detail"]
    assert await generations(http, engine) == 2 + 2  # good, direct, and both bad ones
    code, h, v = await submit(http, url, bad)
    assert code == 202 and "X-Gatekeeper-Coalesced" not in h
    failed = await until_state(http, url, v["id"], "failed")
    assert failed["reason"] == "upstream_status" and failed["result"]["status"] == 422
    code, _, replay = await result(http, url, v["id"])  # its own owner still reads it
    assert code == 422 and "lyrics" in json.loads(replay)["detail"]
    assert await generations(http, engine) == 5


async def test_tiny_max_bytes_evicts_old_results_not_a_running_one(
    tmp_path: Path, procs: list[Proc], fresh_engine: tuple[Proc, str], http: aiohttp.ClientSession
) -> None:
    engine = fresh_engine[1]  # its own engine: counts from zero
    max_bytes = 200_000  # a WAV is ~132 kB: one kept result fits, two do not
    text = rules(
        BASE,
        resources_file(tmp_path / "r.json"),
        {"admission": {"max_in_flight": 2}, "jobs": {"max_bytes": max_bytes}},
    )
    _, url, admin = gatekeeper(tmp_path, procs, engine, tmp_path / "state", text)
    # A streamed (SSE) generation: its result file grows for the whole test (held: an
    # hour's song, ended below).
    async with http.post(
        url + "/generate?stream=sse", json=song("stream", 3600.0), headers=ASYNC
    ) as r:
        assert r.status == 202
        streaming = (await r.json())["id"]
    await until_state(http, url, streaming, "running")
    finished = []
    for name in ("one", "two", "three"):
        _, _, v = await submit(http, url, song(name, 0.2))
        await until_state(http, url, v["id"], "done")
        finished.append(v["id"])
        assert (await status(http, admin))["jobs"]["results_bytes"] <= max_bytes
        assert (await job(http, url, streaming))["state"] == "running"
    for old in finished[:2]:
        assert (await job(http, url, old))["state"] == "expired"
        code, _, body = await result(http, url, old)
        assert code == 410 and json.loads(body)["state"] == "expired"
    code, _, newest = await result(http, url, finished[2])
    assert code == 200 and newest == (await direct(http, engine, song("three", 0.2)))[1]

    async def streamed_a_while() -> bool:  # progress every 0.2 s: five events and more
        async with http.get(engine + "/progress") as r:
            gens = (await r.json())["generations"]
        return any(g["state"] == "running" and g["elapsed_seconds"] >= 1.2 for g in gens)

    await poll(streamed_a_while)
    async with http.post(engine + "/_sim/finish") as r:
        assert (await r.json())["finished"] == 1
    done = await until_state(http, url, streaming, "done")
    code, headers, body = await result(http, url, streaming)
    assert code == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert len(body) == done["result"]["bytes"]
    assert body.startswith(b"event: progress") and b"event: done" in body
    assert body.count(b"event: progress") >= 5  # every event written while others expired
    st = await status(http, admin)
    assert st["jobs"]["results_bytes"] <= max_bytes and st["jobs"]["max_bytes"] == max_bytes


# --------------------------------------------------------------------------- bad input


async def test_bad_prefer_and_idempotency_key_are_400(
    tmp_path: Path, procs: list[Proc], fresh_engine: tuple[Proc, str], http: aiohttp.ClientSession
) -> None:
    engine = fresh_engine[1]  # its own engine: counts from zero
    _, url, _ = gatekeeper(
        tmp_path,
        procs,
        engine,
        tmp_path / "state",
        rules(BASE, resources_file(tmp_path / "r.json")),
    )
    body = json.dumps(song("never", 0.1))
    cases: list[list[tuple[str, str]]] = [
        [("Prefer", ", ".join(["respond-async"] + ["wait=1"] * 200))],  # > 1024 bytes
        [("Prefer", "respond-async=1")],
        [("Prefer", 'respond-async, x="unbalanced')],
        [("Idempotency-Key", "")],
        [("Idempotency-Key", "k" * 256)],
        [("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
    ]
    for headers in cases:
        async with http.post(
            url + "/generate",
            data=body,
            headers=[("Content-Type", "application/json"), *headers],
        ) as r:
            got = await r.json()
            assert_json_error(r.status, got, 400)
            name = headers[0][0]
            assert name in got["detail"], (headers, got)
    assert await generations(http, engine) == 0
    # The same headers in good shape are accepted: the 400s above were about the shape.
    good = {"Prefer": ", ".join(["respond-async"] + ["wait=1"] * 100), "Idempotency-Key": '"k"'}
    async with http.post(
        url + "/generate", data=body, headers={"Content-Type": "application/json", **good}
    ) as r:
        assert r.status == 202
        accepted = (await r.json())["id"]
    await until_state(http, url, accepted, "done")
    assert await generations(http, engine) == 1


def test_unusable_state_dir_exits_2(tmp_path: Path) -> None:
    plain = tmp_path / "a-file"
    plain.write_text("not a directory")
    state = plain / "state"
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(rules(BASE, resources_file(tmp_path / "r.json")))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "gatekeeper",
            "run",
            "--config",
            str(cfg),
            "--upstream",
            "http://127.0.0.1:9",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--admin-listen",
            f"127.0.0.1:{free_port()}",
            "--state-dir",
            str(state),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 2, run.stderr
    assert "state directory" in run.stderr and str(plain) in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
