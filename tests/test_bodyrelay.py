"""The body relay's two ends in process (issue #21, ``jobs.bodyrelay``): the endpoint on a
taking box's admin listener serves a kept body byte for byte to a box showing the
store's secret only, names what it does not have; the fetch streams into a body file
that is committed by its caller only when whole, and reports a body broken off
mid-stream or a box that does not answer as such (never as a body)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import socket
from pathlib import Path
from typing import Any

from aiohttp import web

from gatekeeper.jobs.bodyplan import Step, judge
from gatekeeper.jobs.bodyrelay import AUTH_SCHEME, BODY_PATH, body_endpoint, fetch
from gatekeeper.jobs.files import BodyWriter
from gatekeeper.jobs.guard import GuardedWriter

SECRET = "s3cret"
JOB = "J" * 24
BODY = gzip.compress(os.urandom(3 * 1024 * 1024), compresslevel=1)  # gzip stays gzip


def _authorized(request: web.BaseRequest) -> bool:
    return request.headers.get("Authorization") == f"{AUTH_SCHEME} {SECRET}"


def _app(bodies: Path) -> web.Application:
    def body_path(job_id: str) -> Path | None:
        path = bodies / job_id
        return path if path.is_file() else None

    app = web.Application()
    app.router.add_get(f"{BODY_PATH}/{{box}}/{{job}}", body_endpoint("a", _authorized, body_path))
    return app


async def _served(aiohttp_server: Any, tmp_path: Path) -> str:
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / JOB).write_bytes(BODY)
    server = await aiohttp_server(_app(kept))
    return f"http://127.0.0.1:{server.port}"


def _writer(tmp_path: Path) -> tuple[GuardedWriter, Path]:
    target = tmp_path / "fetched" / JOB
    target.parent.mkdir(exist_ok=True)
    return GuardedWriter(BodyWriter(target), "body"), target


async def test_the_endpoint_serves_a_kept_body_only_to_a_box_and_names_what_it_lacks(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    """Without the secret: 403 forbidden; for another box: 404 not_this_box; no such body:
    410 body_gone (JSON with reason); the body: 200, its length, the stored bytes even to
    a caller that accepts gzip (never re-coded)."""
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / JOB).write_bytes(BODY)
    client = await aiohttp_client(_app(kept), auto_decompress=False)
    auth = {"Authorization": f"{AUTH_SCHEME} {SECRET}", "Accept-Encoding": "gzip"}
    async with client.get(f"{BODY_PATH}/a/{JOB}") as r:
        assert r.status == 403 and (await r.json())["reason"] == "forbidden"
    async with client.get(f"{BODY_PATH}/b/{JOB}", headers=auth) as r:
        assert r.status == 404 and (await r.json())["reason"] == "not_this_box"
    async with client.get(f"{BODY_PATH}/a/{'K' * 24}", headers=auth) as r:
        assert r.status == 410 and (await r.json())["reason"] == "body_gone"
    async with client.get(f"{BODY_PATH}/a/..%2Fetc", headers=auth) as r:
        assert r.status == 410
    async with client.get(f"{BODY_PATH}/a/{JOB}", headers=auth) as r:
        assert r.status == 200 and r.content_length == len(BODY)
        assert "Content-Encoding" not in r.headers
        assert await r.read() == BODY


async def test_a_fetch_streams_the_whole_body_into_a_file(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    """A fetch of a kept body: 200, all its bytes, whole; judged RUN; committed, the file
    is the body byte for byte."""
    base = await _served(aiohttp_server, tmp_path)
    writer, target = _writer(tmp_path)
    got = await fetch(base, "a", JOB, SECRET, writer, "rid")
    assert got.status == 200 and got.whole and got.received == len(BODY)
    assert judge(got, len(BODY)) is Step.RUN
    writer.commit()
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(BODY).digest()


async def test_a_fetch_of_a_gone_body_is_lost_and_a_wrong_secret_gives_back(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    """The taking box has no such body: LOST; a secret it does not know: GIVE_BACK (an
    address that now serves another store); nothing is written either way."""
    base = await _served(aiohttp_server, tmp_path)
    writer, target = _writer(tmp_path)
    got = await fetch(base, "a", "K" * 24, SECRET, writer, "rid")
    assert (got.status, got.reason, judge(got, len(BODY))) == (410, "body_gone", Step.LOST)
    got = await fetch(base, "a", JOB, "wrong", writer, "rid")
    assert got.status == 403 and judge(got, len(BODY)) is Step.GIVE_BACK
    writer.abort()
    assert not target.exists() and not list(target.parent.iterdir())


async def test_a_fetch_broken_off_mid_body_is_never_a_body(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    """A taking box that announces the body's length, sends half, and drops the
    connection: the fetch is not whole, judged GIVE_BACK, and its partial file is
    deleted by the abort (no file under the body's name)."""

    async def half(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Length": str(len(BODY))})
        await out.prepare(request)
        await out.write(BODY[: len(BODY) // 2])
        assert request.transport is not None
        request.transport.abort()
        return out

    app = web.Application()
    app.router.add_get(f"{BODY_PATH}/{{box}}/{{job}}", half)
    server = await aiohttp_server(app)
    writer, target = _writer(tmp_path)
    got = await fetch(f"http://127.0.0.1:{server.port}", "a", JOB, SECRET, writer, "rid")
    assert got.status == 200 and not got.whole and 0 < got.received < len(BODY)
    assert judge(got, len(BODY)) is Step.GIVE_BACK
    writer.abort()
    assert not target.exists() and not list(target.parent.iterdir())


async def test_a_fetch_from_a_box_that_does_not_answer_gives_back(tmp_path: Path) -> None:
    """Nobody listens at the taking box's address: no status, GIVE_BACK, fast."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    writer, _ = _writer(tmp_path)
    got = await asyncio.wait_for(
        fetch(f"http://127.0.0.1:{port}", "a", JOB, SECRET, writer, "rid"), 10
    )
    writer.abort()
    assert got.status is None and judge(got, len(BODY)) is Step.GIVE_BACK
