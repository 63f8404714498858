"""Several boxes, one queue (issue #21): real ``gatekeeper run`` boxes, each in front of its
own ``engine-sim`` (one slot), sharing one real PostgreSQL schema. Jobs submitted to one
box run on every engine in the fair order; a box killed with SIGKILL while it runs a job
loses no work (its job ends ``interrupted`` within ``jobs.lease``, or is queued again
under ``retry_interrupted``); a PostgreSQL restart mid-run loses nothing and every box
recovers by itself. Results are read from the database here: serving them from any box
is the relay's (docs/postgres.md)."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from pgserver import PgServer
from support import Proc, poll, rules, start_engine, start_gatekeeper, wait_output

pytestmark = pytest.mark.usefixtures("no_traceback")

ASYNC = {"Prefer": "respond-async"}
JOBS = "/_gatekeeper/jobs"
LEASE = 2.0


@dataclass
class Box:
    proc: Proc
    url: str
    engine: Proc
    engine_url: str
    state: Path

    @property
    def id(self) -> str:
        return (self.state / "box-id").read_text().strip()


def _rules(schema: str, *, seconds: float, retry: bool = False) -> str:
    return rules(
        {
            "admission": {
                "max_in_flight": 1,
                "expected_seconds": seconds,
                "sample_interval": 0.1,
                "queue": {"client_key": "header:X-User", "per_client": 20, "max_waiting": 100},
            },
            "upstream": {"probe": {"interval": 0.2}},
            # Nothing is fetched after a box stops: its teardown waits for no linger.
            "shutdown": {"linger": "0s"},
            "jobs": {
                "store": "postgres",
                "lease": LEASE,
                "retry_interrupted": retry,
                "postgres": {"dsn_env": "GK_E2E_DSN", "schema": schema},
            },
        }
    )


def _box(tmp_path: Path, procs: list[Proc], name: str, text: str, seconds: float) -> Box:
    where = tmp_path / name
    where.mkdir()
    engine, engine_url = start_engine(where, seconds=seconds)
    procs.append(engine)
    state = where / "state"
    proc, url, _ = start_gatekeeper(where, text, engine_url, "--state-dir", str(state))
    procs.append(proc)
    return Box(proc, url, engine, engine_url, state)


async def _submit(
    http: aiohttp.ClientSession, box: Box, user: str, n: int, seconds: float | None = None
) -> str:
    body: dict[str, Any] = {"lyrics": f"{user}{n}", "description": "pop"}
    if seconds is not None:  # this song's length (engine-sim), else the engine's own
        body["seconds"] = seconds
    async with http.post(box.url + "/generate", json=body, headers={**ASYNC, "X-User": user}) as r:
        assert r.status == 202, await r.text()
        return str((await r.json())["id"])


async def _rows(dsn: str, schema: str) -> list[asyncpg.Record]:
    con = await asyncpg.connect(dsn)
    try:
        return list(
            await con.fetch(
                f"SELECT id, client, state, reason, run_box, body_box, started, seq"
                f" FROM {schema}.jobs ORDER BY seq"
            )
        )
    finally:
        await con.close()


async def _all_final(dsn: str, schema: str, n: int, timeout: float) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = []

    async def final() -> bool:
        nonlocal rows
        rows = await _rows(dsn, schema)
        return len(rows) == n and all(r["state"] not in ("queued", "running") for r in rows)

    await poll(final, timeout)
    return rows


async def _finished(
    http: aiohttp.ClientSession, boxes: tuple[Box, ...], dsn: str, schema: str, n: int
) -> list[asyncpg.Record]:
    """``_all_final``, ending the held songs (engine-sim's ``/_sim/finish``) that run on
    the boxes' engines meanwhile, instead of waiting for them."""
    rows: list[asyncpg.Record] = []

    async def final() -> bool:
        nonlocal rows
        for box in boxes:
            async with http.post(box.engine_url + "/_sim/finish") as r:
                assert r.status == 200
        rows = await _rows(dsn, schema)
        return len(rows) == n and all(r["state"] not in ("queued", "running") for r in rows)

    await poll(final, 30)
    return rows


async def _stats(http: aiohttp.ClientSession, box: Box) -> Any:
    async with http.get(box.engine_url + "/_sim/stats") as r:
        return await r.json()


def _fair(arrivals: list[tuple[str, str]], first: int) -> list[str]:
    """The claim order of the fairness rule when the first ``first`` jobs were claimed as
    they arrived and the rest waited together (round-robin across clients in the order
    they joined, FIFO within one)."""
    order = [job for job, _ in arrivals[:first]]
    queues: dict[str, list[str]] = {}
    for job, client in arrivals[first:]:
        queues.setdefault(client, []).append(job)
    while any(queues.values()):
        for q in queues.values():
            if q:
                order.append(q.pop(0))
    return order


async def test_three_boxes_run_one_boxs_jobs_on_every_engine_in_the_fair_order(
    tmp_path: Path,
    procs: list[Proc],
    http: aiohttp.ClientSession,
    pg_server: PgServer,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three idle boxes; 12 async jobs of 3 clients (a's 4, then b's, then c's), all
    submitted to box A: the first three (held songs) start at once, one per box (B and C
    woken by the notification), the others wait and are pulled by whichever box frees a
    slot. Every job is done exactly once, every engine ran some and never two at once,
    and the claims follow the fair order (round-robin across a, b, c, FIFO within each),
    not the arrival order."""
    monkeypatch.setenv("GK_E2E_DSN", pg_server.dsn)
    text = _rules(pg_schema, seconds=0.6)
    a, b, c = (_box(tmp_path, procs, name, text, 0.6) for name in "abc")
    ids: list[tuple[str, str]] = []
    for user in ("a", "b", "c"):
        for n in range(4):
            # The first three held (an hour) until all have arrived: the rest wait.
            seconds = 3600.0 if len(ids) < 3 else None
            ids.append((await _submit(http, a, user, n, seconds), user))
    for box in (a, b, c):  # each engine runs one held song: end it

        async def ended(box: Box = box) -> bool:
            async with http.post(box.engine_url + "/_sim/finish") as r:
                return bool((await r.json())["finished"] == 1)

        await poll(ended)
    ran: set[str] = set()
    while len(ran) < 12:  # box A answers for its jobs wherever they run
        for job_id, _ in ids:
            async with http.get(f"{a.url}{JOBS}/{job_id}") as r:
                assert r.status == 200, await r.text()
                view = await r.json()
            if view["state"] == "done":
                ran.add(job_id)
        await asyncio.sleep(0.2)
    rows = await _all_final(pg_server.dsn, pg_schema, 12, 60)
    assert {r["state"] for r in rows} == {"done"}
    assert {r["body_box"] for r in rows} == {a.id}
    by_box = {box.id: sum(r["run_box"] == box.id for r in rows) for box in (a, b, c)}
    assert all(by_box.values()), by_box
    stats = [await _stats(http, box) for box in (a, b, c)]
    assert [s["peak_active_generations"] for s in stats] == [1, 1, 1]
    assert [s["completed_generations"] for s in stats] == [by_box[x.id] for x in (a, b, c)]
    # Claimed in the fair order (``started`` is each claimer's clock: two claims within
    # a moment on two boxes may swap, never move further).
    started = [r["id"] for r in sorted(rows, key=lambda r: r["started"])]
    expected = _fair(ids, 3)
    who = dict(ids)
    assert all(abs(started.index(j) - expected.index(j)) <= 1 for j in expected), (
        [who[j] + str([i for i, _ in ids].index(j)) for j in started],
        [who[j] + str([i for i, _ in ids].index(j)) for j in expected],
    )
    for user in ("a", "b", "c"):  # FIFO within a client, exactly
        mine = [j for j in started if dict(ids)[j] == user]
        assert mine == [j for j, u in ids if u == user]


async def _running_on(dsn: str, schema: str, box: Box, timeout: float) -> str:
    found = ""

    async def running() -> bool:
        nonlocal found
        rows = await _rows(dsn, schema)
        hits = [r["id"] for r in rows if r["state"] == "running" and r["run_box"] == box.id]
        found = hits[0] if hits else ""
        return bool(found)

    await poll(running, timeout)
    return found


@pytest.mark.parametrize("retry", [False, True], ids=["interrupted", "retry_interrupted"])
async def test_a_box_killed_mid_job_loses_no_work(
    tmp_path: Path,
    procs: list[Proc],
    http: aiohttp.ClientSession,
    pg_server: PgServer,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
    retry: bool,
) -> None:
    """Boxes A and B share the queue; 4 async jobs are submitted to A; B is killed with
    SIGKILL while it runs one. Within jobs.lease (2 s) plus a sweep A ends B's job
    ``interrupted`` (or, with retry_interrupted, queues it again and runs it); A runs the
    rest: every other job done once on A's engine, nothing lost, nothing run twice."""
    monkeypatch.setenv("GK_E2E_DSN", pg_server.dsn)
    text = _rules(pg_schema, seconds=1.0, retry=retry)
    a = _box(tmp_path, procs, "a", text, 1.0)
    b = _box(tmp_path, procs, "b", text, 1.0)
    ids = [await _submit(http, a, "u", n) for n in range(4)]
    victim = await _running_on(pg_server.dsn, pg_schema, b, 20)
    b.proc.kill()
    b.proc.wait()
    killed = time.monotonic()

    async def swept() -> bool:
        rows = {r["id"]: r for r in await _rows(pg_server.dsn, pg_schema)}
        return rows[victim]["state"] != "running"

    await poll(swept, 4 * LEASE)
    assert time.monotonic() - killed < 2.5 * LEASE
    rows = await _all_final(pg_server.dsn, pg_schema, 4, 30)
    state = {r["id"]: (r["state"], r["reason"], r["run_box"]) for r in rows}
    if retry:
        assert state[victim] == ("done", None, a.id)
    else:
        assert state[victim] == ("failed", "interrupted", b.id)
    others = [i for i in ids if i != victim]
    done_on_b = [i for i in others if state[i][2] == b.id]
    assert all(state[i][0] == "done" for i in others), state
    done_on_a = sum(1 for i in ids if state[i] == ("done", None, a.id))
    stats = await _stats(http, a)
    assert stats["completed_generations"] == done_on_a  # none run twice on A
    assert stats["peak_active_generations"] == 1
    assert len(done_on_b) + done_on_a + (0 if retry else 1) == 4


async def test_postgres_restarted_mid_run_loses_nothing(
    tmp_path: Path,
    procs: list[Proc],
    http: aiohttp.ClientSession,
    pg_server: PgServer,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two boxes run 6 async jobs; PostgreSQL is stopped while each box runs one (2 s
    songs) and started again 3 s later (longer than those songs and than jobs.lease).
    Every job ends done: the generations that ended while the store was away keep their
    results and are recorded when it is back, and no box is taken for dead after the
    outage (no job interrupted); both boxes take jobs again by themselves afterwards."""
    monkeypatch.setenv("GK_E2E_DSN", pg_server.dsn)
    text = _rules(pg_schema, seconds=0.8)
    a = _box(tmp_path, procs, "a", text, 0.8)
    b = _box(tmp_path, procs, "b", text, 0.8)
    ids = [await _submit(http, a, u, 0, seconds=2.0) for u in ("x", "y")]  # one per box

    async def both_running() -> bool:
        rows = await _rows(pg_server.dsn, pg_schema)
        return sum(r["state"] == "running" for r in rows) == 2

    await poll(both_running, 20)
    ids += [await _submit(http, a, u, n) for n in range(1, 3) for u in ("x", "y")]
    await asyncio.to_thread(pg_server.restart, 3.0)  # both songs end while it is down
    rows = await _all_final(pg_server.dsn, pg_schema, 6, 60)
    assert [(r["state"], r["reason"]) for r in rows] == [("done", None)] * 6
    logs = a.proc.output() + b.proc.output()
    assert logs.count("could not be stored as done") == 2  # the two ended in the outage
    assert logs.count("stored as done (None)") == 2
    more = [await _submit(http, a, "w", n) for n in range(2)]
    rows = await _all_final(pg_server.dsn, pg_schema, 8, 30)
    assert {r["id"] for r in rows} == {*ids, *more}
    assert {r["state"] for r in rows} == {"done"}
    stats = [await _stats(http, box) for box in (a, b)]
    assert sum(s["completed_generations"] for s in stats) >= 8
    assert [s["peak_active_generations"] for s in stats] == [1, 1]


async def test_identical_requests_on_two_boxes_make_one_generation(
    tmp_path: Path,
    procs: list[Proc],
    http: aiohttp.ClientSession,
    pg_server: PgServer,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same request (same client, same body) submitted to box A and then to box B while
    it runs (on either): B's create is refused by the database's unique key over live jobs and B
    attaches to A's job, as to a twin on one box: two job ids (handles), one row, one
    generation."""
    monkeypatch.setenv("GK_E2E_DSN", pg_server.dsn)
    text = _rules(pg_schema, seconds=1.0)
    a = _box(tmp_path, procs, "a", text, 1.0)
    b = _box(tmp_path, procs, "b", text, 1.0)
    first = await _submit(http, a, "u", 1)
    runs = {box.id: box for box in (a, b)}

    async def running() -> bool:
        return any(r["state"] == "running" for r in await _rows(pg_server.dsn, pg_schema))

    await poll(running, 20)
    second = await _submit(http, b, "u", 1)
    assert second != first
    rows = await _all_final(pg_server.dsn, pg_schema, 1, 30)
    assert [(r["id"], r["state"]) for r in rows] == [(first, "done")]
    ran = runs[rows[0]["run_box"]]
    stats = {box.id: (await _stats(http, box))["completed_generations"] for box in (a, b)}
    assert stats == {box.id: int(box is ran) for box in (a, b)}


@pytest.mark.parametrize("retry", [False, True], ids=["interrupted", "retry_interrupted"])
async def test_a_box_swept_while_stopped_discards_its_generation(
    tmp_path: Path,
    procs: list[Proc],
    http: aiohttp.ClientSession,
    pg_server: PgServer,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
    retry: bool,
) -> None:
    """Box B is stopped (SIGSTOP) while it runs a job, for longer than jobs.lease: A fails
    the job ``interrupted`` (with retry_interrupted: queues it again and runs it). B
    continued (SIGCONT) finds the job taken (its heartbeat no longer lists it, its writes
    are fenced): it stops that generation, keeps no result of it and records nothing over
    it (a job queued again is never ended by B); then it takes new jobs as before."""
    monkeypatch.setenv("GK_E2E_DSN", pg_server.dsn)
    text = _rules(pg_schema, seconds=1.0, retry=retry)
    a = _box(tmp_path, procs, "a", text, 1.0)
    b = _box(tmp_path, procs, "b", text, 1.0)
    for n in range(2):  # one runs on each box, held: A's still runs when B's is swept
        await _submit(http, a, "u", n, seconds=600)
    victim = await _running_on(pg_server.dsn, pg_schema, b, 20)
    b.proc.signal(signal.SIGSTOP)

    async def swept() -> bool:
        rows = {r["id"]: r for r in await _rows(pg_server.dsn, pg_schema)}
        return rows[victim]["run_box"] != b.id or rows[victim]["state"] == "failed"

    try:
        await poll(swept, 4 * LEASE)
    finally:
        b.proc.signal(signal.SIGCONT)
    await wait_output(b.proc, "was taken from this box", 10)
    again = await _submit(http, a, "v", 0)
    rows = {r["id"]: r for r in await _finished(http, (a, b), pg_server.dsn, pg_schema, 3)}
    if retry:  # queued again while A was busy: B, back, never ended it; it ran again
        assert rows[victim]["state"] == "done"
    else:
        assert (rows[victim]["state"], rows[victim]["reason"]) == ("failed", "interrupted")
    assert rows[again]["state"] == "done"
    results = b.state / "results"
    if rows[victim]["run_box"] != b.id:  # (B may have run it again itself, as a new claim)
        assert not any(p.name.startswith(victim) for p in results.iterdir())


async def test_a_held_request_gets_the_answer_another_box_produced(
    tmp_path: Path,
    procs: list[Proc],
    http: aiohttp.ClientSession,
    pg_server: PgServer,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The frontend's plain (held) POST /generate reaches the box whose engine is busy;
    the other box claims its job from the shared queue and runs it; the held client, still
    on the first box, gets the engine's answer relayed (200 and the song, its own job id),
    not an error. Before: 503 internal (the answer's bytes were on the other box)."""
    monkeypatch.setenv("GK_E2E_DSN", pg_server.dsn)
    text = _rules(pg_schema, seconds=0.5)
    a = _box(tmp_path, procs, "a", text, 0.5)
    b = _box(tmp_path, procs, "b", text, 0.5)
    long_job = await _submit(http, a, "busy", 1, seconds=600)
    runs = {box.id: box for box in (a, b)}

    async def running() -> bool:
        return any(r["state"] == "running" for r in await _rows(pg_server.dsn, pg_schema))

    await poll(running, 20)
    (row,) = [r for r in await _rows(pg_server.dsn, pg_schema) if r["id"] == long_job]
    busy = runs[row["run_box"]]
    idle = b if busy is a else a
    body = {"lyrics": "held", "description": "pop", "seconds": 0.5}
    async with http.post(busy.url + "/generate", json=body, headers={"X-User": "held"}) as r:
        song = await r.read()
        assert r.status == 200, song[:300]
        assert r.headers["Content-Type"].startswith("audio/")
        held_id = r.headers["X-Gatekeeper-Job"]
    assert song[:4] == b"RIFF"
    (held,) = [r for r in await _rows(pg_server.dsn, pg_schema) if r["id"] == held_id]
    assert held["state"] == "done" and runs[held["run_box"]] is idle
    assert (await _stats(http, idle))["completed_generations"] == 1
    async with http.post(busy.engine_url + "/_sim/finish") as r:  # the long song: no drain wait
        assert r.status == 200
