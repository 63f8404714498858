"""A result deleted under its download (issue #18 §1), made to happen at the exact step.

``GET <id>/result`` opens the result file, then serves that descriptor only
(``jobs.replay``). The test replaces the ``open`` the result API calls with one
that deletes the file right after (or right before) opening it: deleted after
the open, the answer is still the whole result (a 200, and a 206 for a Range);
deleted before, a JSON 410 ``result_gone`` with its detail, never a bodiless 404.
"""

from __future__ import annotations

import asyncio
import builtins
import errno
from pathlib import Path
from typing import IO, Any

import pytest
from aiohttp.test_utils import TestServer
from test_storage_faults import ASYNC, JOBS, ClientFactory, _box, _json, _state

import gatekeeper.jobs.api as api
from gatekeeper.enginesim import SimConfig, create_app

ANSWER = 5000


@pytest.fixture
async def engine(aiohttp_server: Any) -> TestServer:
    server: TestServer = await aiohttp_server(
        create_app(SimConfig(seconds=0.05, burn_cpu=False, memory_mb=0, progress_interval=0.05))
    )
    return server


async def _done_job(engine: TestServer, aiohttp_client: ClientFactory, tmp_path: Path) -> Any:
    st, client = await _box(engine, aiohttp_client, tmp_path)
    async with client.get(f"/download?bytes={ANSWER}", headers=ASYNC) as r:
        job_id = (await _json(r))["id"]
    for _ in range(200):
        if (await _state(client, job_id))["state"] == "done":
            break
        await asyncio.sleep(0.05)
    assert st.jobs is not None
    path = st.jobs.store.result_path(job_id)
    assert path is not None and path.stat().st_size == ANSWER
    return client, job_id, path


def _deleting_open(monkeypatch: pytest.MonkeyPatch, path: Path, *, before: bool) -> list[int]:
    """The result API's ``open`` deletes ``path`` just before or just after opening it."""
    calls: list[int] = []

    def open_(file: Any, *args: Any, **kwargs: Any) -> IO[Any]:
        if Path(file) != path:
            return builtins.open(file, *args, **kwargs)
        calls.append(1)
        if before:
            path.unlink()
        f = builtins.open(file, *args, **kwargs)  # noqa: SIM115
        path.unlink(missing_ok=True)
        return f

    monkeypatch.setattr(api, "open", open_, raising=False)
    return calls


@pytest.mark.parametrize(
    ("headers", "status", "size"),
    [({}, 200, ANSWER), ({"Range": "bytes=100-199"}, 206, 100)],
)
async def test_a_result_deleted_after_its_open_is_still_served_whole(
    engine: TestServer,
    aiohttp_client: ClientFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    headers: dict[str, str],
    status: int,
    size: int,
) -> None:
    """Deleted between the open and the send: the answer reads the open descriptor, so
    it is the whole stored answer (or the asked range of it), not aiohttp's bodiless 404."""
    client, job_id, path = await _done_job(engine, aiohttp_client, tmp_path)
    calls = _deleting_open(monkeypatch, path, before=False)
    async with client.get(f"{JOBS}/{job_id}/result", headers=headers) as r:
        body = await r.read()
        assert (r.status, len(body)) == (status, size), (r.status, body[:200])
        assert int(r.headers["Content-Length"]) == size
    assert calls == [1] and not path.exists()


async def test_a_result_deleted_before_its_open_is_a_json_410(
    engine: TestServer,
    aiohttp_client: ClientFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Deleted just before the open (after every check that it is there): a JSON 410
    ``result_gone`` with a detail and the job's state, never a bodiless 404 or a 500."""
    client, job_id, path = await _done_job(engine, aiohttp_client, tmp_path)
    calls = _deleting_open(monkeypatch, path, before=True)
    async with client.get(f"{JOBS}/{job_id}/result") as r:
        body = await _json(r)
        assert (r.status, body["reason"], body["state"]) == (410, "result_gone", "done"), body
        assert "gone" in body["detail"], body
    assert calls == [1]


async def test_a_result_that_cannot_be_read_is_a_json_503_storage_error(
    engine: TestServer,
    aiohttp_client: ClientFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An I/O error opening the result (a failing disk): 503 storage_error in JSON with a
    detail (messages.storage_error) and a Retry-After, never a 500."""
    client, job_id, path = await _done_job(engine, aiohttp_client, tmp_path)

    def failing(file: Any, *args: Any, **kwargs: Any) -> IO[Any]:
        if Path(file) == path:
            raise OSError(errno.EIO, "Input/output error", str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(api, "open", failing, raising=False)
    async with client.get(f"{JOBS}/{job_id}/result") as r:
        body = await _json(r)
        assert (r.status, body["reason"]) == (503, "storage_error"), body
        assert body["detail"] and int(r.headers["Retry-After"]) > 0


async def test_a_client_that_leaves_during_a_result_download_ends_it_quietly(
    engine: TestServer,
    aiohttp_client: ClientFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client reads the head of an 8 MiB result and closes its socket: the answer
    ends there, no "Error handling request" traceback is logged (the result is sent
    inside the handler, where a ConnectionError used to escape to aiohttp's error log),
    and the next download is whole."""
    size = 8 * 1024 * 1024
    _st, client = await _box(engine, aiohttp_client, tmp_path)
    async with client.get(f"/download?bytes={size}", headers=ASYNC) as r:
        job_id = (await _json(r))["id"]
    for _ in range(400):
        if (await _state(client, job_id))["state"] == "done":
            break
        await asyncio.sleep(0.05)
    url = client.make_url(f"{JOBS}/{job_id}/result")
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(f"GET {url.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
    writer.transport.abort()  # gone without reading the body
    await asyncio.sleep(0.5)
    async with client.get(f"{JOBS}/{job_id}/result") as r:
        assert r.status == 200 and len(await r.read()) == size
    assert not [r for r in caplog.records if "Error handling request" in r.getMessage()]
