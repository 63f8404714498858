"""The engine gets exactly the bytes the client sent (issue #18 §4).

A compressed request body (``Content-Encoding: gzip`` or ``deflate``) must reach
the engine byte for byte with the head that names its encoding, on every route
kind: admit, pass, queue (held and async) and a Gradio join; the coalescing key
hashes those same bytes. Before the fix aiohttp's server decompressed the body
(``auto_decompress``) and gatekeeper forwarded the plain bytes still labelled
gzip: the engine answered 500 through gatekeeper and 200 directly.

gatekeeper's proxy app runs here on a test server in this process, in front of
``echo_engine.EchoEngine`` (whose own server never decompresses).
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer
from echo_engine import EchoEngine, Seen
from support import ProductionLikeServer, eventually

from gatekeeper.app.state import AppState
from gatekeeper.app.wiring import build_proxy_app, create_state
from gatekeeper.config import load_config

PLAIN = json.dumps({"lyrics": "la " * 200, "description": "pop", "fn_index": 0}).encode()
JOIN = json.dumps({"fn_index": 0, "session_hash": "s-raw", "data": ["la " * 100]}).encode()

ENCODINGS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda b: gzip.compress(b, mtime=0),
    "deflate": zlib.compress,  # HTTP "deflate" is the zlib format (RFC 9110 §8.4.1.2)
}

RULES: dict[str, Any] = {
    "listen": "127.0.0.1:0",
    "admin_listen": "127.0.0.1:1",
    "jobs_path": "/jobs",
    "admission": {"max_in_flight": 1, "expected_seconds": 1},
    "routes": [
        {"name": "song", "match": {"path": "/admit/**"}, "action": "admit"},
        {"name": "queued", "match": {"path": "/queue/**"}, "action": "queue"},
        {"name": "app", "match": {"path": "/app/**", "fn_index": [0]}, "action": "gradio"},
        {"name": "rest", "match": {"path": "/**"}, "action": "pass"},
    ],
}


@dataclass
class Rig:
    engine: EchoEngine
    state: AppState
    base: str
    http: aiohttp.ClientSession

    def only(self, prefix: str) -> Seen:
        posts = self.engine.posts(prefix)
        assert len(posts) == 1, posts
        return posts[0]


@pytest.fixture
async def rig(aiohttp_server: Any) -> AsyncIterator[Rig]:
    engine = EchoEngine()
    upstream: TestServer = await aiohttp_server(engine.app())
    doc = {**RULES, "upstream": {"url": str(upstream.make_url("")).rstrip("/")}}
    st = await create_state(load_config(yaml.safe_dump(doc)))
    st.set_upstream_up(True)  # what the probe says of a live engine (no probe runs here)
    server = ProductionLikeServer(build_proxy_app(st, monitor=False, probe=False))
    await server.start_server()
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        try:
            yield Rig(engine, st, str(server.make_url("")).rstrip("/"), http)
        finally:
            await server.close()


def sent_as(encoding: str, raw: bytes) -> dict[str, str]:
    return {
        "Content-Encoding": encoding,
        "Content-Type": "application/json",
        "Content-Length": str(len(raw)),
        "X-Song": "raw-1",
    }


def assert_exact(seen: Seen, raw: bytes, encoding: str) -> None:
    """The engine read ``raw`` itself, under the head that says what it is."""
    assert seen.body == raw, (len(seen.body), len(raw))
    assert seen.headers["Content-Encoding"] == encoding
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["Content-Length"] == str(len(raw))
    assert seen.headers["X-Song"] == "raw-1"


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
async def test_admit_route_forwards_the_compressed_bytes(rig: Rig, encoding: str) -> None:
    raw = ENCODINGS[encoding](PLAIN)
    async with rig.http.post(rig.base + "/admit/x", data=raw, headers=sent_as(encoding, raw)) as r:
        assert r.status == 200, await r.text()
    assert_exact(rig.only("/admit/"), raw, encoding)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
async def test_pass_route_forwards_the_compressed_bytes(rig: Rig, encoding: str) -> None:
    raw = ENCODINGS[encoding](PLAIN)
    async with rig.http.post(rig.base + "/else/x", data=raw, headers=sent_as(encoding, raw)) as r:
        assert r.status == 200, await r.text()
    assert_exact(rig.only("/else/"), raw, encoding)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
async def test_held_queue_job_forwards_the_compressed_bytes(rig: Rig, encoding: str) -> None:
    raw = ENCODINGS[encoding](PLAIN)
    async with rig.http.post(rig.base + "/queue/x", data=raw, headers=sent_as(encoding, raw)) as r:
        assert r.status == 200, await r.text()
        assert r.headers["X-Gatekeeper-Job"]
    assert_exact(rig.only("/queue/"), raw, encoding)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
async def test_async_queue_job_forwards_the_compressed_bytes(rig: Rig, encoding: str) -> None:
    raw = ENCODINGS[encoding](PLAIN)
    headers = {**sent_as(encoding, raw), "Prefer": "respond-async"}
    async with rig.http.post(rig.base + "/queue/x", data=raw, headers=headers) as r:
        assert r.status == 202, await r.text()
        job = await r.json()
    jobs = rig.state.jobs
    assert jobs is not None
    assert await eventually(lambda: (j := jobs.find(job["id"])) is not None and j.final)
    found = jobs.find(job["id"])
    assert found is not None and found.state == "done", found
    assert found.record.body_size == len(raw)
    assert_exact(rig.only("/queue/"), raw, encoding)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
async def test_gradio_join_is_understood_and_forwarded_compressed(rig: Rig, encoding: str) -> None:
    """A compressed join is read for its function (a copy is decompressed) and gated;
    the Gradio app gets the bytes the browser sent."""
    raw = ENCODINGS[encoding](JOIN)
    path = "/app/gradio_api/queue/join"
    async with rig.http.post(rig.base + path, data=raw, headers=sent_as(encoding, raw)) as r:
        assert r.status == 200, await r.text()
        event = json.loads(await r.read())["event_id"]
    assert event.startswith("event-")  # the app's own answer, not a refusal
    assert rig.state.gate.in_flight == 1  # fn 0 is gated: the join took the slot
    assert_exact(rig.only("/app/"), raw, encoding)


async def test_gradio_join_whose_compression_is_broken_is_a_400(rig: Rig) -> None:
    bad = gzip.compress(JOIN, mtime=0)[:-12]  # cut off: no valid gzip stream
    path = "/app/gradio_api/queue/join"
    async with rig.http.post(rig.base + path, data=bad, headers=sent_as("gzip", bad)) as r:
        assert r.status == 400
        doc = await r.json()
    assert doc["reason"] == "bad_gradio_request"
    assert "gzip" in doc["detail"]
    assert rig.engine.seen == [] and rig.state.gate.in_flight == 0


async def test_gradio_join_in_an_unreadable_encoding_is_a_415(rig: Rig) -> None:
    """A join in a coding gatekeeper cannot read (``br``) cannot name its function, so
    it could not be gated: refused with a precise 415 (no Gradio client compresses a
    join), before it reaches the app or takes a slot."""
    raw = b"\x1b\x07\x00not-really-brotli"
    path = "/app/gradio_api/queue/join"
    async with rig.http.post(rig.base + path, data=raw, headers=sent_as("br", raw)) as r:
        assert r.status == 415
        doc = await r.json()
    assert doc["reason"] == "bad_gradio_request"
    assert "'br'" in doc["detail"] and "gzip" in doc["detail"]
    assert rig.engine.seen == [] and rig.state.gate.in_flight == 0


async def test_coalescing_hashes_the_bytes_as_sent(rig: Rig) -> None:
    """Two gzip bodies of the same plain text but different bytes are two requests to
    the engine (it may read the gzip header): never coalesced. The same bytes again are."""
    first, second = gzip.compress(PLAIN, mtime=1), gzip.compress(PLAIN, mtime=2)
    assert first != second and gzip.decompress(first) == gzip.decompress(second)
    rig.engine.hold.clear()  # the first job keeps running: a twin would attach to it
    ids, coalesced = [], []
    for raw in (first, second, first):
        headers = {**sent_as("gzip", raw), "Prefer": "respond-async"}
        async with rig.http.post(rig.base + "/queue/x", data=raw, headers=headers) as r:
            assert r.status == 202, await r.text()
            ids.append((await r.json())["id"])
            coalesced.append(r.headers.get("X-Gatekeeper-Coalesced"))
    rig.engine.hold.set()
    assert ids[0] != ids[1], "different bytes were coalesced"
    # The same bytes again attach to the first job, under an id of their own (each
    # submitter holds its own handle: issue #18 §3).
    assert coalesced == [None, None, "1"] and len(set(ids)) == 3
    jobs = rig.state.jobs
    assert jobs is not None
    held = [jobs.find_handle(i) for i in ids]
    assert all(h is not None for h in held)
    assert held[2] is not None and held[0] is not None and held[2][0].id == held[0][0].id
    assert await eventually(
        lambda: all((h := jobs.find_handle(i)) is not None and h[0].final for i in ids)
    )
    assert sorted(s.body for s in rig.engine.posts("/queue/")) == sorted([first, second])
