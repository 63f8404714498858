"""Nothing is written for a request that will be refused (issue #18 §2), on real sockets.

An in-process ``Gatekeeper`` (both listeners, the edge) in front of an in-process
engine that holds each generation until told. A client already at ``per_client``
is refused from the head: no byte of its body is read (it is answered with the
body still unsent), nothing lands in the state dir, and ``Expect: 100-continue``
gets the refusal instead of ``100 Continue``. The spool budget
(``limits.max_spooled_bytes``) refuses a fourth upload while three are unfinished
and returns to 0 on every path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gatekeeper.app.process import Gatekeeper
from gatekeeper.config import load_config
from gatekeeper.proxy.handler import SPOOL_BUDGET
from gatekeeper.proxy.spool import SpoolBudget

MiB = 1024 * 1024
USER = "X-User-Id"


@dataclass
class Rig:
    gk: Gatekeeper
    host: str
    port: int
    state: Path
    release: asyncio.Event
    started: list[int]

    @property
    def budget(self) -> SpoolBudget:
        return self.gk._runners[0].app[SPOOL_BUDGET]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    release = asyncio.Event()
    started: list[int] = []

    async def generate(request: web.Request) -> web.Response:
        body = await request.read()
        started.append(len(body))
        await release.wait()
        return web.json_response({"song": len(body)})

    async def root(_: web.Request) -> web.Response:
        return web.Response(text="up")

    engine = web.Application(client_max_size=64 * MiB)
    engine.router.add_post("/generate", generate)
    engine.router.add_post("/admit", generate)
    engine.router.add_get("/", root)
    runner = web.AppRunner(engine)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state = tmp_path / "state"
    calm = tmp_path / "calm.json"
    calm.write_text('{"cpu_percent": 5, "memory_percent": 5}')
    rules = f"""
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
jobs: {{dir: {state}}}
shutdown: {{linger: 0s}}
upstream: {{url: 'http://127.0.0.1:{port}'}}
admission:
  max_in_flight: 1
  resources: {{source: file, file: {calm}}}
  queue: {{per_client: 1, client_key: 'header:{USER}'}}
limits: {{max_body_bytes: {40 * MiB}, max_spooled_bytes: {100 * MiB}}}
routes:
  - {{name: generate, match: {{methods: [POST], path: /generate/**}}, action: queue}}
  - {{name: admit, match: {{methods: [POST], path: /admit/**}}, action: admit}}
"""
    gk = Gatekeeper(load_config(rules))
    await gk.start()
    (url,) = gk.proxy_urls
    host, _, gport = url.removeprefix("http://").rpartition(":")
    try:
        yield Rig(gk, host, int(gport), state, release, started)
    finally:
        release.set()
        await gk.stop()
        await runner.cleanup()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    interim: list[bytes]  # 1xx status lines seen before the final answer

    def json(self) -> Any:
        return json.loads(self.body)


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    interim: list[bytes] = []
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        if status >= 200:
            break
        interim.append(status_line.encode())
    headers = {}
    for line in lines:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(status, headers, body, interim)


def head_bytes(path: str, user: str, length: int, **extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: gk", f"{USER}: {user}", f"Content-Length: {length}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def send(rig: Rig, path: str, user: str, body: bytes, **extra: str) -> Answer:
    """A whole request, sent at once, and its answer."""
    reader, writer = await asyncio.open_connection(rig.host, rig.port)
    try:
        writer.write(head_bytes(path, user, len(body), **extra) + body)
        await writer.drain()
        return await asyncio.wait_for(read_answer(reader), 10)
    finally:
        writer.close()


async def head_only(rig: Rig, path: str, user: str, length: int, **extra: str) -> Answer:
    """Only the head of a request with a ``length``-byte body: answered without the body,
    or the test times out."""
    reader, writer = await asyncio.open_connection(rig.host, rig.port)
    try:
        writer.write(head_bytes(path, user, length, **extra))
        await writer.drain()
        return await asyncio.wait_for(read_answer(reader), 5)
    finally:
        writer.close()


def song(name: str, size: int = 0) -> bytes:
    text = json.dumps({"lyrics": name, "pad": ""})
    return text.encode() if size == 0 else text[:-2].encode() + b"x" * (size - len(text)) + b'"}'


def state_bytes(state: Path) -> int:
    total = 0
    for root, _, files in os.walk(state):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(root, f)).st_size
    return total


def bodies_bytes(state: Path) -> int:
    return state_bytes(state / "bodies")


async def at_limit(rig: Rig, user: str = "alice") -> bytes:
    """``user`` has one async job (per_client 1); returns its body."""
    body = song(f"{user}'s first")
    r = await send(rig, "/generate", user, body, Prefer="respond-async")
    assert r.status == 202, r.body
    return body


def assert_client_limit(r: Answer) -> None:
    assert r.status == 429, r.body
    doc = r.json()
    assert doc["reason"] == "client_limit" and r.headers["x-gatekeeper-reason"] == "client_limit"
    assert int(r.headers["retry-after"]) >= 1 and doc["retry_after"] == int(
        r.headers["retry-after"]
    )
    assert doc["detail"] and "1" in doc["detail"]  # the message quotes per_client


async def test_a_client_at_its_limit_is_refused_before_its_body_is_sent(rig: Rig) -> None:
    """8 distinct 32 MiB bodies: each 429 client_limit from the head alone (nothing of
    the body was sent), the state dir does not grow, no spool byte is reserved."""
    await at_limit(rig)
    before, first_body = state_bytes(rig.state), bodies_bytes(rig.state)
    for i in range(8):
        r = await head_only(rig, "/generate", "alice", 32 * MiB + i)
        assert_client_limit(r)
        assert r.headers.get("connection", "").lower() == "close"  # the body stays unread
        assert bodies_bytes(rig.state) == first_body and rig.budget.used == 0
    assert state_bytes(rig.state) - before < 64 * 1024  # the database's own rows, no body


async def test_bodies_sent_anyway_are_never_written(rig: Rig) -> None:
    """A client that sends its 32 MiB without waiting for an answer: refused the same way,
    and the state dir, sampled all along, never holds a byte of those bodies."""
    first = await at_limit(rig)
    peak = [0, 0]

    async def sample() -> None:
        while True:
            peak[0] = max(peak[0], bodies_bytes(rig.state))
            peak[1] = max(peak[1], rig.budget.used)
            await asyncio.sleep(0.002)

    sampler = asyncio.create_task(sample())
    try:
        for i in range(8):
            reader, writer = await asyncio.open_connection(rig.host, rig.port)
            writer.write(head_bytes("/generate", "alice", 32 * MiB))

            async def upload(w: asyncio.StreamWriter, n: int) -> None:
                chunk = bytes([65 + n]) * MiB
                for _ in range(32):
                    w.write(chunk)
                    await w.drain()

            sender = asyncio.create_task(upload(writer, i))
            try:
                assert_client_limit(await asyncio.wait_for(read_answer(reader), 10))
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
                writer.close()
    finally:
        sampler.cancel()
    assert peak == [len(first), 0]  # alice's first body only


async def test_expect_100_continue_gets_the_refusal_instead(rig: Rig) -> None:
    """At its limit: the 429 and no 100 Continue. Not at its limit: 100 Continue, then
    the body, then 202. An admit route that is busy: 503 busy, no 100 Continue."""
    await at_limit(rig)
    r = await head_only(rig, "/generate", "alice", 20 * MiB, Expect="100-continue")
    assert r.interim == [] and r.status == 429

    body = song("bob's")
    reader, writer = await asyncio.open_connection(rig.host, rig.port)
    try:
        h = head_bytes("/generate", "bob", len(body), Expect="100-continue")
        writer.write(h.replace(b"\r\n\r\n", b"\r\nPrefer: respond-async\r\n\r\n"))
        await writer.drain()
        line = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert line.startswith(b"HTTP/1.1 100 Continue")
        writer.write(body)
        r = await asyncio.wait_for(read_answer(reader), 5)
        assert r.status == 202, r.body
    finally:
        writer.close()

    # The engine's one slot is alice's job: an admit route is busy from the head.
    r = await head_only(rig, "/admit", "carol", 20 * MiB, Expect="100-continue")
    assert r.interim == [] and r.status == 503 and r.json()["reason"] == "busy"


async def test_a_body_that_may_coalesce_is_still_read_and_attached(rig: Rig) -> None:
    """At its limit, a request whose length equals its live job's: the body decides. The
    same body attaches (coalesced); a different one of that length is refused after it."""
    first = await at_limit(rig)
    r = await send(rig, "/generate", "alice", first, Prefer="respond-async")
    assert r.status == 202 and r.headers["x-gatekeeper-coalesced"] == "1"
    other = first.replace(b"first", b"fir5t")
    assert len(other) == len(first)
    assert_client_limit(await send(rig, "/generate", "alice", other))
    # An Idempotency-Key no job has: the key is the head's, refused unread.
    r = await head_only(rig, "/generate", "alice", 5 * MiB, Idempotency_Key="new-one")
    assert_client_limit(r)


async def test_the_fourth_unfinished_upload_is_refused_503_spool_full(rig: Rig) -> None:
    """max_spooled_bytes 100 MiB: three 30 MiB uploads in progress; a fourth declaring
    30 MiB gets 503 spool_full with Retry-After before sending a byte, and a chunked
    one is cut off with the same 503 once it passes the budget; the three leave
    mid-upload and the budget is back at 0; then a whole one is accepted and, once
    saved into the store, holds nothing either."""
    conns = []
    for user in ("u1", "u2", "u3"):
        reader, writer = await asyncio.open_connection(rig.host, rig.port)
        writer.write(head_bytes("/generate", user, 30 * MiB) + b"x" * MiB)
        await writer.drain()
        conns.append((reader, writer))
    assert await until(lambda: rig.budget.used == 90 * MiB)
    r = await head_only(rig, "/generate", "u4", 30 * MiB)
    assert r.status == 503, r.body
    doc = r.json()
    assert doc["reason"] == "spool_full" and doc["detail"]
    assert int(r.headers["retry-after"]) == doc["retry_after"] >= 1

    reader, writer = await asyncio.open_connection(rig.host, rig.port)
    head = b"POST /generate HTTP/1.1\r\nHost: gk\r\nX-User-Id: u5\r\n"
    writer.write(head + b"Transfer-Encoding: chunked\r\n\r\n")
    with contextlib.suppress(ConnectionError):
        for _ in range(20):  # 20 MiB: past the 10 MiB left
            writer.write(b"%x\r\n" % MiB + b"y" * MiB + b"\r\n")
            await writer.drain()
    r = await asyncio.wait_for(read_answer(reader), 10)
    writer.close()
    assert r.status == 503 and r.json()["reason"] == "spool_full", r.body
    assert await until(lambda: rig.budget.used == 90 * MiB)  # its bytes freed

    for _, writer in conns:  # the three clients go away mid-upload
        writer.close()
    assert await until(lambda: rig.budget.used == 0)
    r = await send(rig, "/generate", "u4", song("u4", 3 * MiB), Prefer="respond-async")
    assert r.status == 202 and rig.budget.used == 0
    assert bodies_bytes(rig.state) >= 3 * MiB  # the body, renamed into the store
    rig.release.set()  # the job runs and ends: nothing is held after success either
    assert await until(lambda: rig.started == [3 * MiB])
    assert rig.budget.used == 0


async def until(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    for _ in range(int(timeout / 0.01)):
        if check():
            return True
        await asyncio.sleep(0.01)
    return check()


async def test_a_full_queue_is_refused_before_the_body_is_sent(rig: Rig) -> None:
    """max_waiting 20 (the default): one running and 20 waiting jobs of 21 clients; a
    22nd client gets 503 queue_full from its head, with the queue's numbers."""
    for i in range(21):
        r = await send(rig, "/generate", f"c{i}", song(f"c{i}"), Prefer="respond-async")
        assert r.status == 202, r.body
    r = await head_only(rig, "/generate", "newcomer", 20 * MiB, Expect="100-continue")
    assert r.status == 503 and r.interim == [], r.body
    doc = r.json()
    assert doc["reason"] == "queue_full" and "20" in doc["detail"]
    assert int(r.headers["retry-after"]) == doc["retry_after"] >= 1
    assert rig.budget.used == 0
