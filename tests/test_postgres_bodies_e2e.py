"""End to end: a request body over ``jobs.postgres.max_body_bytes`` is run by any box
(issue #21, "Large bodies through the relay"), on a real PostgreSQL server.

Two real ``gatekeeper run`` boxes, each in front of its own engine (one slot; the tests'
``echo_engine``, whose server never decompresses: it records the bytes that crossed
the socket), share one store. A 3 MiB gzip body is taken by box A while A's engine is
busy: idle box B claims the job, fetches the body from A's admin listener (the body
relay) and its engine receives exactly the bytes and headers the client sent; both
boxes drop the body once the job is done. A taking box killed
before the claim: the claiming box's fetch fails, the job is given back (the slot
released, nothing sent to the engine), it waits while A is dead (never run with part
of its body, never ended while the body may come back), and runs, byte for byte, once
A is back with its spool.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from echo_engine import EchoEngine, Seen
from pgserver import PgServer
from support import Proc, free_port, poll, rules, start_gatekeeper, wait_output

pytestmark = pytest.mark.usefixtures("no_traceback")

JOBS = "/_gatekeeper/jobs"
LEASE = 2.0
# 3 MiB of incompressible bytes, gzip-coded: the engine must get the coded bytes.
BODY = gzip.compress(os.urandom(3 * 1024 * 1024), compresslevel=1)
DIGEST = hashlib.sha256(BODY).hexdigest()
SENT = {
    "Content-Type": "application/json",
    "Content-Encoding": "gzip",
    "X-Trace": "kept-as-sent",
    "Prefer": "respond-async",
}


def _rules(schema: str) -> str:
    return rules(
        {
            "admission": {
                "max_in_flight": 1,
                "expected_seconds": 1,
                "sample_interval": 0.1,
                "queue": {"client_key": "header:X-User", "per_client": 20, "max_waiting": 100},
            },
            "upstream": {"probe": {"interval": 0.2}},
            "jobs": {
                "store": "postgres",
                "lease": LEASE,
                "postgres": {"dsn_env": "GK_E2E_DSN", "schema": schema},
            },
        }
    )


class Box:
    """A gatekeeper box in front of its own in-process ``EchoEngine``."""

    def __init__(self, tmp_path: Path, procs: list[Proc], name: str, text: str):
        self.where = tmp_path / name
        self.where.mkdir()
        self.engine = EchoEngine(free_port())
        self.state = self.where / "state"
        self.text, self.procs = text, procs

    async def start(self) -> Box:
        if self.engine._runner is None:
            await self.engine.serve()
        self.proc, self.url, _ = start_gatekeeper(
            self.where, self.text, self.engine.url, "--state-dir", str(self.state)
        )
        self.procs.append(self.proc)
        return self

    @property
    def id(self) -> str:
        return (self.state / "box-id").read_text().strip()

    def got_big(self) -> list[Seen]:
        """The requests carrying the large body that reached this box's engine."""
        return [s for s in self.engine.posts("/generate") if len(s.body) == len(BODY)]


@contextlib.asynccontextmanager
async def two(tmp_path: Path, procs: list[Proc], schema: str) -> AsyncIterator[tuple[Box, Box]]:
    text = _rules(schema)
    a, b = Box(tmp_path, procs, "a", text), Box(tmp_path, procs, "b", text)
    try:
        yield a, b
    finally:
        for box in (a, b):
            box.engine.hold.set()
            await box.engine.stop()


async def _submit(http: aiohttp.ClientSession, box: Box, body: Any, **hdrs: str) -> str:
    async with http.post(box.url + "/generate", data=body, headers=hdrs) as r:
        assert r.status == 202, await r.text()
        return str((await r.json())["id"])


async def _song(http: aiohttp.ClientSession, box: Box, user: str) -> str:
    """A song held by its engine (``EchoEngine.hold``) submitted to ``box``."""
    return await _submit(http, box, b"{}", **{"Prefer": "respond-async", "X-User": user})


async def _big(http: aiohttp.ClientSession, box: Box, user: str) -> str:
    return await _submit(http, box, io.BytesIO(BODY), **{**SENT, "X-User": user})


async def _row(dsn: str, schema: str, job_id: str) -> Any:
    con = await asyncpg.connect(dsn)
    try:
        return await con.fetchrow(
            f"SELECT state, reason, run_box, body_box, body_in_db FROM {schema}.jobs WHERE id = $1",
            job_id,
        )
    finally:
        await con.close()


async def _until(dsn: str, schema: str, job_id: str, *states: str, timeout: float = 30) -> Any:
    row: Any = None

    async def reached() -> bool:
        nonlocal row
        row = await _row(dsn, schema, job_id)
        return row is not None and row["state"] in states

    await poll(reached, timeout)
    return row


def _assert_identical(seen: Seen) -> None:
    """The engine got the bytes the client sent, with the head it sent them with."""
    assert seen.body == BODY and hashlib.sha256(seen.body).hexdigest() == DIGEST
    assert seen.headers["Content-Encoding"] == "gzip"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["X-Trace"] == "kept-as-sent"
    assert seen.headers["Content-Length"] == str(len(BODY))


async def test_a_large_body_runs_on_any_box_byte_for_byte_and_waits_for_a_dead_one(
    tmp_path: Path,
    procs: list[Proc],
    http: aiohttp.ClientSession,
    pg_server: PgServer,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1. A's engine is busy; a 3 MiB gzip body is submitted to A: B (idle) claims the
    job, fetches the body from A and runs it: B's engine got the exact bytes and headers
    the client sent, once, A's engine never; A serves the result (relayed from B); neither
    box keeps the body once the job is done.
    2. Both engines busy; A takes another 3 MiB body and is killed (SIGKILL); B's slot
    frees at once: B claims the job while A still looks alive, its fetch is refused, the
    job is given back (nothing sent to B's engine; B's slot free: it runs the next job).
    Past the lease the job still waits, queued (its body may come back), in A's spool.
    A restarted with its state directory: the job runs once, on either box, byte for
    byte."""
    monkeypatch.setenv("GK_E2E_DSN", pg_server.dsn)
    dsn = pg_server.dsn
    async with two(tmp_path, procs, pg_schema) as (a, b):
        a.engine.hold.clear()  # A's song runs until the test lets it end
        await a.start()
        song = await _song(http, a, "s")
        await _until(dsn, pg_schema, song, "running")
        await b.start()
        job = await _big(http, a, "u1")
        row = await _until(dsn, pg_schema, job, "done", "failed")
        assert (row["state"], row["run_box"], row["body_box"]) == ("done", b.id, a.id), row
        assert not row["body_in_db"]
        (seen,) = b.got_big()
        _assert_identical(seen)
        assert a.got_big() == []
        async with http.get(f"{a.url}{JOBS}/{job}/result") as r:  # relayed from B
            assert r.status == 200 and (await r.json())["sha256"] == DIGEST
        assert not (b.state / "bodies" / job).exists()

        async def dropped() -> bool:
            return not (a.state / "bodies" / job).exists()

        await poll(dropped, 5)

        # 2. The taking box dies before the claim.
        b.engine.hold.clear()
        other = await _song(http, b, "t")
        row = await _until(dsn, pg_schema, other, "running")
        assert row["run_box"] == b.id
        job = await _big(http, a, "u2")
        a.proc.kill()
        a.proc.wait()
        killed = time.monotonic()
        b.engine.hold.set()  # B's song ends: B claims A's job while A looks alive
        await wait_output(b.proc, "given back to the queue", 10)
        assert len(b.got_big()) == 1  # the first job's only
        small = await _submit(http, b, b"{}", **{"Prefer": "respond-async"})
        row = await _until(dsn, pg_schema, small, "done")
        assert row["run_box"] == b.id  # B's slot was released (it ran the next job)
        # Past the lease A is dead to B (its running song swept): its body is awaited.
        row = await _until(dsn, pg_schema, song, "failed", timeout=4 * LEASE)
        assert row["reason"] == "interrupted" and time.monotonic() - killed >= LEASE
        row = await _row(dsn, pg_schema, job)
        assert (row["state"], row["run_box"]) == ("queued", None)
        assert len(b.got_big()) == 1 and (a.state / "bodies" / job).exists()
        a.engine.hold.set()
        await a.start()
        row = await _until(dsn, pg_schema, job, "done", "failed")
        assert row["state"] == "done", row
        assert len(a.got_big() + b.got_big()) == 2  # run once
        _assert_identical((a.got_big() + b.got_big())[-1])
