"""The chaos driver on two boxes sharing one real PostgreSQL (issue #21; tests/chaos_boxes.py):
a short seeded run of hostile exchanges spread over both boxes, the invariants checked
across them after each phase, and both boxes drained with exit 0. Needs PostgreSQL
(skipped without it, failed without it under GATEKEEPER_REQUIRE_E2E=1)."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import pytest
from chaos_boxes import Boxes
from pgserver import PgServer
from support import Proc, poll
from test_postgres_boxes import Box, _box, _rows, _rules, _stats, _submit

pytestmark = pytest.mark.usefixtures("no_traceback")


async def test_chaos_two_boxes_fast_run(
    tmp_path: Path, procs: list[Proc], pg_server: PgServer, pg_schema: str
) -> None:
    seed = int(os.environ.get("GATEKEEPER_CHAOS_SEED", "21"))
    async with Boxes(tmp_path, seed, pg_server.dsn, pg_schema) as b:
        for box in b.boxes:
            procs += [box.proc, box.engine]
        result = await b.phase(40)
        # The checker sees a handle lost and a bare 500 (it is not vacuous).
        b.handles["lost-handle"] = "alice"
        b.problems.append("POST /generate 500: oops")
        bad, _ = await b.check({})
        assert any("not in the database: ['lost-handle']" in s for s in bad), bad
        assert any("not JSON detail+reason" in s for s in bad), bad
        del b.handles["lost-handle"]
        drain = await b.sigterm()
    print(b.summary())
    assert sum(sum(c.values()) for c in result.outcomes.values()) == 40
    assert result.checks["jobs_final"] > 0
    assert drain == {"a": 0, "b": 0}


async def test_a_box_answers_for_a_job_it_took_as_the_database_says_at_once(
    tmp_path: Path,
    procs: list[Proc],
    http: aiohttp.ClientSession,
    pg_server: PgServer,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by the two-box chaos run (seed 21): box A took a job, box B ran it, and right
    after the database said ``done`` box A still answered ``queued`` (its own view, until
    its tick read the job back). A's engine is busy with a long song, so each short job A
    takes is queued on A and run by idle B; the moment the database has it done, A's
    ``GET`` says done too."""
    monkeypatch.setenv("GK_E2E_DSN", pg_server.dsn)
    text = _rules(pg_schema, seconds=0.3)
    boxes = [_box(tmp_path, procs, name, text, 0.3) for name in "ab"]
    await _submit(http, boxes[0], "long", 0, 3.0)  # one box's one slot, busy
    busy: list[Box] = []

    async def running() -> bool:
        busy[:] = [x for x in boxes if int((await _stats(http, x))["active_generations"])]
        return bool(busy)

    await poll(running, 5)
    a = busy[0]  # takes the jobs; the other, idle, runs them
    b = boxes[1 - boxes.index(a)]
    for n in range(4):
        job = await _submit(http, a, "u", n, 0.2)

        async def done(job: str = job) -> bool:
            rows = await _rows(pg_server.dsn, pg_schema)
            return any(r["id"] == job and r["state"] == "done" for r in rows)

        await poll(done, 10)
        async with http.get(f"{a.url}/_gatekeeper/jobs/{job}", headers={"X-User": "u"}) as r:
            assert (await r.json())["state"] == "done", n
    rows = await _rows(pg_server.dsn, pg_schema)
    assert {r["run_box"] for r in rows if r["client"].endswith("u")} == {b.id}
    async with http.post(a.engine_url + "/_sim/finish") as r:  # the long song: ended
        assert r.status == 200
