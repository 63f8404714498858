"""Places and limits over the whole shared queue, end to end (issue #21): two real
``gatekeeper run`` boxes on one PostgreSQL schema, each in front of its own engine-sim
(one slot, held busy by a long song until the test ends it with ``POST /_sim/finish``).
Jobs submitted on both boxes show, from either box, the same place: their place in the
whole queue by the fairness rule; a client at ``per_client`` on box A is refused on box B;
``max_waiting`` counts both boxes' waiting jobs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pgserver import PgServer
from support import Proc, poll, rules, start_engine, start_gatekeeper
from test_postgres_boxes import ASYNC, JOBS, _all_final, _stats

pytestmark = pytest.mark.usefixtures("no_traceback")


def _rules(schema: str) -> str:
    return rules(
        {
            "admission": {
                "max_in_flight": 1,
                "expected_seconds": 30,
                "sample_interval": 0.1,
                "queue": {"client_key": "header:X-User", "per_client": 2, "max_waiting": 6},
            },
            "upstream": {"probe": {"interval": 0.2}},
            "jobs": {
                "store": "postgres",
                "lease": 5.0,
                "postgres": {"dsn_env": "GK_E2E_DSN", "schema": schema},
            },
        }
    )


@dataclass
class Box:
    url: str
    admin: str
    engine_url: str


def _box(tmp_path: Path, procs: list[Proc], name: str, text: str) -> Box:
    where = tmp_path / name
    where.mkdir()
    engine, engine_url = start_engine(where, seconds=30.0)
    procs.append(engine)
    state = str(where / "state")
    proc, url, admin = start_gatekeeper(where, text, engine_url, "--state-dir", state)
    procs.append(proc)
    return Box(url, admin, engine_url)


async def _post(
    http: aiohttp.ClientSession, box: Box, user: str, seconds: float, song: str = ""
) -> Any:
    body = {"lyrics": song or user, "description": "pop", "seconds": seconds}
    headers = {**ASYNC, "X-User": user}
    async with http.post(box.url + "/generate", json=body, headers=headers) as r:
        return r.status, dict(r.headers), await r.json()


async def _view(http: aiohttp.ClientSession, box: Box, job: str, user: str) -> Any:
    async with http.get(f"{box.url}{JOBS}/{job}", headers={"X-User": user}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_places_and_limits_are_the_whole_queues_on_every_box(
    tmp_path: Path,
    procs: list[Proc],
    http: aiohttp.ClientSession,
    pg_server: PgServer,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both engines busy; a1 and a2 submitted on A, b1 and c1 on B, b2 on A: from either
    box the places are a1 1, b1 2, c1 3, a2 4, b2 5 (round-robin across clients in the
    order they joined, FIFO within one: the order claims take) with the same ETAs; user a
    (2 waiting on A, per_client 2) is refused 429 client_limit on B; the sixth waiting job
    is admitted on B and a seventh refused 503 queue_full on A (max_waiting 6 over both),
    each with a Retry-After; the status documents count the whole queue."""
    monkeypatch.setenv("GK_E2E_DSN", pg_server.dsn)
    text = _rules(pg_schema)
    a, b = (_box(tmp_path, procs, name, text) for name in "ab")
    for box, user in ((a, "x"), (b, "y")):  # each box's one slot, busy until finished
        assert (await _post(http, box, user, 30.0))[0] == 202

    async def busy() -> bool:
        return all([int((await _stats(http, x))["active_generations"]) == 1 for x in (a, b)])

    await poll(busy, 10)
    jobs: dict[str, tuple[str, str]] = {}  # name -> (id, user)
    for name, box in (("a1", a), ("a2", a), ("b1", b), ("c1", b), ("b2", a)):
        status, _, view = await _post(http, box, name[0], 0.3, song=name)
        assert status == 202, view
        jobs[name] = (view["id"], name[0])
    expected = {"a1": 1, "b1": 2, "c1": 3, "a2": 4, "b2": 5}
    seen: dict[str, dict[str, Any]] = {}

    async def agreed() -> bool:
        for box in (a, b):
            for name, (job, user) in jobs.items():
                seen[f"{name}@{box.url}"] = await _view(http, box, job, user)
        places = {k: v["position"] for k, v in seen.items()}
        return all(places[f"{n}@{x.url}"] == p for n, p in expected.items() for x in (a, b))

    try:
        await poll(agreed, 8)
    except AssertionError:
        raise AssertionError({k: v["position"] for k, v in seen.items()}) from None
    for name in expected:
        etas = [seen[f"{name}@{x.url}"]["starts_in_seconds"] for x in (a, b)]
        assert abs(etas[0] - etas[1]) < 2.5, (name, etas)
    assert seen[f"a2@{a.url}"]["starts_in_seconds"] > seen[f"a1@{b.url}"]["starts_in_seconds"]

    status, headers, body = await _post(http, b, "a", 0.3)
    assert (status, body["reason"]) == (429, "client_limit"), body
    assert int(headers["Retry-After"]) >= 1
    assert (await _post(http, b, "d", 0.3))[0] == 202  # six waiting over both boxes
    status, headers, body = await _post(http, a, "e", 0.3)
    assert (status, body["reason"]) == (503, "queue_full"), body
    assert int(headers["Retry-After"]) >= 1

    async def counted() -> bool:
        docs = []
        for box in (a, b):
            async with http.get(box.admin + "/status") as r:
                docs.append(await r.json())
        return all(d["queue"]["waiting"] == 6 for d in docs)

    await poll(counted, 5)
    for box in (a, b):  # the long songs end; the short ones run
        async with http.post(box.engine_url + "/_sim/finish") as r:
            assert r.status == 200
    rows = await _all_final(pg_server.dsn, pg_schema, 8, 20)
    assert {r["state"] for r in rows} == {"done"}
