"""Webhooks through the real ``gatekeeper run`` and the bundled engine (issue #20 §1).

Every delivery is verified by an aiohttp receiver with the ``standardwebhooks``
reference library (``webhook_receiver.Receiver``):

- a job's job.queued, job.started, job.progress and job.completed arrive in that
  order, validly signed, each body the job's JSON;
- a receiver down for the first attempts gets the delivery later, same webhook-id;
- ``kill -9`` with 50 undelivered deliveries, restarted: all 50 delivered;
- a receiver that sleeps 60 s delays neither another destination nor the queue;
- a request's own URL outside ``jobs.webhooks.allow`` is 400 and never contacted.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from support import Proc, free_port, poll, rules, start_engine, start_gatekeeper
from webhook_receiver import Listener, Receiver

from gatekeeper.jobs.webhooks.payload import EVENT_SCHEMA, JOB_SCHEMA

pytestmark = pytest.mark.usefixtures("no_traceback")

JOBS = "/_gatekeeper/jobs"
ASYNC = {"Prefer": "respond-async"}
SECRET = "whsec_" + base64.b64encode(b"gatekeeper-webhook-test-secret!!").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another-secret-for-the-requests").decode()
SCHEMA = {**EVENT_SCHEMA, "$defs": {"job": JOB_SCHEMA}}
SCHEMA["properties"] = {**EVENT_SCHEMA["properties"], "data": {"$ref": "#/$defs/job"}}


def base_rules(tmp_path: Path, webhooks: dict[str, Any], **admission: Any) -> str:
    (tmp_path / "hook.secret").write_text(SECRET + "\n")
    (tmp_path / "request.secret").write_text(OTHER_SECRET)
    return rules(
        {
            "admission": {
                "max_in_flight": 1,
                "expected_seconds": 1,
                "sample_interval": 0.1,
                "queue": {"per_client": 100, "max_waiting": 100},
                **admission,
            },
            "upstream": {"probe": {"interval": 0.2, "timeout": 0.5}},
            "shutdown": {"drain_timeout": "1s", "linger": "0s"},
            "jobs": {"webhooks": webhooks},
        }
    )


def dest(name: str, url: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "url": url, "secret_file": "hook.secret", **more}


async def gatekeeper(
    tmp_path: Path, procs: list[Proc], text: str, engine: str, state: Path | None = None
) -> tuple[Proc, str, str]:
    extra = ("--state-dir", str(state or tmp_path / "state"))
    proc, url, admin = await asyncio.to_thread(start_gatekeeper, tmp_path, text, engine, *extra)
    procs.append(proc)
    return proc, url, admin


async def engine(tmp_path: Path, procs: list[Proc], seconds: float) -> str:
    proc, url = await asyncio.to_thread(start_engine, tmp_path, seconds=seconds)
    procs.append(proc)
    return url


async def submit(
    http: aiohttp.ClientSession,
    url: str,
    path: str = "/generate",
    lyrics: str = "la",
    **headers: str,
) -> str:
    body = {"lyrics": lyrics}
    async with http.post(url + path, json=body, headers={**ASYNC, **headers}) as r:
        assert r.status == 202, await r.text()
        return str((await r.json())["id"])


@pytest.fixture
async def receiver() -> Any:
    r = Receiver(SECRET)
    yield r
    r.sleep = 0
    await r.stop()


async def test_events_arrive_in_order_signed(
    tmp_path: Path, procs: list[Proc], receiver: Receiver
) -> None:
    """queued -> started -> progress (throttled) -> completed, each verified, each the job's
    JSON as GET shows it, with its own webhook-id."""
    hook = await receiver.start(free_port())
    text = base_rules(tmp_path, {"destinations": [dest("app", hook)], "progress_interval": 0.5})
    eng = await engine(tmp_path, procs, 2.0)
    _, url, _ = await gatekeeper(tmp_path, procs, text, eng)
    async with aiohttp.ClientSession() as http:
        job_id = await submit(http, url, "/generate/stream")  # SSE: progress events
        await poll(_has(receiver, "job.completed"), timeout=30)
        async with http.get(f"{url}{JOBS}/{job_id}") as r:
            final = await r.json()
    events = [r.event for r in receiver.seen]
    assert events[0] == "job.queued" and events[1] == "job.started", events
    assert events[-1] == "job.completed"
    assert set(events[2:-1]) == {"job.progress"}, events
    # Throttled: a 2 s song with an engine progress every 0.2 s, at most one per 0.5 s.
    assert 1 <= len(events[2:-1]) <= 5, events
    assert all(r.valid and r.status == 200 for r in receiver.seen)
    assert len({r.msg_id for r in receiver.seen}) == len(receiver.seen)
    assert {r.data["id"] for r in receiver.seen} == {job_id}
    assert [r.data["state"] for r in receiver.seen][:2] == ["queued", "running"]
    completed = receiver.seen[-1].data
    assert completed == final  # the job's JSON as GET {jobs_path}/<id> shows it
    assert completed["state"] == "done" and completed["result"]["status"] == 200
    progress = [r.data["progress"] for r in receiver.seen[2:-1]]
    assert progress == sorted(progress) and all(0 < p <= 1 for p in progress)
    for r in receiver.seen:
        doc = {"type": r.event, "timestamp": "2026-01-01T00:00:00Z", "data": r.data}
        jsonschema.validate({**doc, "result_url": r.data["links"]["result"]}, SCHEMA)


def _has(receiver: Receiver, event: str, n: int = 1) -> Any:
    async def check() -> bool:
        return len(receiver.delivered(event)) >= n

    return check


async def test_a_receiver_down_at_first_gets_it_later_with_the_same_id(
    tmp_path: Path, procs: list[Proc], receiver: Receiver
) -> None:
    """Two failed attempts (503), then delivered: the same webhook-id every time."""
    receiver.fail_first = 2
    hook = await receiver.start(free_port())
    text = base_rules(tmp_path, {"destinations": [dest("app", hook, events=["completed"])]})
    eng = await engine(tmp_path, procs, 0.3)
    _, url, admin = await gatekeeper(tmp_path, procs, text, eng)
    async with aiohttp.ClientSession() as http:
        job_id = await submit(http, url)
        await poll(_has(receiver, "job.completed"), timeout=30)
        attempts = [r for r in receiver.seen if r.event == "job.completed"]
        assert [r.status for r in attempts] == [503, 503, 200]
        assert len({r.msg_id for r in attempts}) == 1 and all(r.valid for r in attempts)
        assert attempts[0].data["id"] == job_id
        async with http.get(admin + "/metrics") as r:
            metrics = await r.text()
    assert 'gatekeeper_webhook_deliveries_total{outcome="retry"} 2.0' in metrics
    assert 'gatekeeper_webhook_deliveries_total{outcome="delivered"} 1.0' in metrics


async def test_kill_9_with_50_undelivered_loses_none(
    tmp_path: Path, procs: list[Proc], receiver: Receiver
) -> None:
    """50 job.queued deliveries pending when gatekeeper is killed -9: after a restart, all
    50 are delivered (the outbox was written with each job), and the job that was running
    is announced job.completed, failed interrupted, by the start's recovery."""
    receiver.down = True
    hook = await receiver.start(free_port())
    hooks = [dest("app", hook, events=["queued"]), dest("ends", hook, events=["completed"])]
    text = base_rules(tmp_path, {"destinations": hooks})
    eng = await engine(tmp_path, procs, 60.0)  # the first job runs; the others wait
    state = tmp_path / "state"
    first, url, admin = await gatekeeper(tmp_path, procs, text, eng, state)
    async with aiohttp.ClientSession() as http:
        ids = [await submit(http, url, lyrics=f"song {i}") for i in range(50)]
        await poll(_attempted(receiver, 50), timeout=30)  # each tried once, refused
        async with http.get(admin + "/status") as r:
            status = await r.json()
        assert status["jobs"]["webhooks"]["backlog"] == 50
        await asyncio.to_thread(first.kill)
        assert receiver.delivered() == []
        receiver.down = False
        await gatekeeper(tmp_path, procs, text, eng, state)
        await poll(_has(receiver, "job.queued", 50), timeout=60)
        await poll(_has(receiver, "job.completed"), timeout=30)
    ended = receiver.delivered("job.completed")
    assert [(r.data["id"], r.data["state"], r.data["reason"]) for r in ended] == [
        (ids[0], "failed", "interrupted")
    ]
    delivered = receiver.delivered("job.queued")
    assert sorted(r.data["id"] for r in delivered) == sorted(ids)
    assert all(r.valid for r in receiver.seen)
    # Every retry of a delivery carried its first attempt's id.
    first_ids = {r.msg_id for r in receiver.seen if r.status == 503}
    assert {r.msg_id for r in delivered} <= first_ids | {r.msg_id for r in delivered}
    assert len({r.msg_id for r in delivered}) == 50


def _attempted(receiver: Receiver, n: int) -> Any:
    async def check() -> bool:
        return len({r.msg_id for r in receiver.seen}) >= n

    return check


async def test_a_sleeping_receiver_delays_no_other_destination_nor_the_queue(
    tmp_path: Path, procs: list[Proc], receiver: Receiver
) -> None:
    """A destination whose receiver sleeps 60 s: the other destination gets every event
    and the next job is dispatched and completed while the slow attempt is pending."""
    slow = Receiver(SECRET, sleep=60.0)
    slow_hook = await slow.start(free_port())
    fast_hook = await receiver.start(free_port())
    hooks = {
        "destinations": [dest("slow", slow_hook), dest("fast", fast_hook)],
        "concurrency": 1,
        "timeout": "90s",
    }
    eng = await engine(tmp_path, procs, 0.3)
    _, url, _ = await gatekeeper(tmp_path, procs, base_rules(tmp_path, hooks), eng)
    try:
        async with aiohttp.ClientSession() as http:
            a = await submit(http, url, lyrics="a")
            await poll(_started(slow), timeout=10)  # the slow receiver holds its first one
            b = await submit(http, url, lyrics="b")
            await poll(_has(receiver, "job.completed", 2), timeout=30)
            done = {(r.data["id"], r.data["state"]) for r in receiver.delivered("job.completed")}
            assert done == {(a, "done"), (b, "done")}
            assert slow.seen == [] and len(slow.started) == 1  # still inside its first
    finally:
        slow.sleep = 0
        await slow.stop()


def _started(r: Receiver) -> Any:
    async def check() -> bool:
        return len(r.started) >= 1

    return check


async def test_a_request_url_outside_the_allowlist_is_refused_and_never_contacted(
    tmp_path: Path, procs: list[Proc]
) -> None:
    """400 with a JSON detail for a URL outside jobs.webhooks.allow (another port, a
    userinfo trick, a sibling path); nothing connects there; an allowed one is delivered,
    signed with the request secret."""
    own = Receiver(OTHER_SECRET)
    port = free_port()
    hook = await own.start(port, "/ok")
    trap, trap_port = Listener(), free_port()
    await trap.start(trap_port)
    hooks = {
        "allow": [f"http://127.0.0.1:{port}/ok/"],
        "request_secret_file": "request.secret",
    }
    eng = await engine(tmp_path, procs, 0.3)
    _, url, _ = await gatekeeper(tmp_path, procs, base_rules(tmp_path, hooks), eng)
    refused = [
        f"http://127.0.0.1:{trap_port}/ok/x",
        f"http://127.0.0.1:{port}@127.0.0.1:{trap_port}/ok/x",
        f"http://127.0.0.1:{port}/okx",
        f"http://localhost:{trap_port}/ok/",
    ]
    try:
        async with aiohttp.ClientSession() as http:
            for bad in refused:
                async with http.post(
                    url + "/generate/x",
                    json={"lyrics": "la"},
                    headers={**ASYNC, "Gatekeeper-Webhook": bad},
                ) as r:
                    body = await r.json()
                    assert r.status == 400, body
                    assert body["reason"] == "webhook_refused" and body["detail"], body
            job_id = await submit(
                http,
                url,
                **{"Gatekeeper-Webhook": f"{hook}/x", "Gatekeeper-Webhook-Events": "completed"},
            )
            await poll(_has(own, "job.completed"), timeout=30)
            assert [r.data["id"] for r in own.seen] == [job_id] and own.seen[0].valid
            await asyncio.sleep(1.0)  # any late attempt would have come by now
        assert trap.connections == 0
    finally:
        await own.stop()
        await trap.stop()


async def test_status_shows_the_backlog(
    tmp_path: Path, procs: list[Proc], receiver: Receiver
) -> None:
    """`gatekeeper status` shows the webhook backlog and the failing destination."""
    receiver.down = True
    hook = await receiver.start(free_port())
    text = base_rules(tmp_path, {"destinations": [dest("app", hook, events=["queued"])]})
    eng = await engine(tmp_path, procs, 60.0)
    _, url, admin = await gatekeeper(tmp_path, procs, text, eng)
    async with aiohttp.ClientSession() as http:
        await submit(http, url)
        await poll(_attempted(receiver, 1), timeout=10)
    await asyncio.sleep(1.2)  # the failing streak is published with the gauges, every 1 s
    out = await asyncio.to_thread(_status, admin)
    assert "webhooks" in out and "1 undelivered" in out and "FAILING: app" in out, out


def _status(admin: str) -> str:
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "gatekeeper", "status", "--admin", admin]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False).stdout
