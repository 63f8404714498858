"""The chaos driver on two boxes sharing one real PostgreSQL (issue #21; tests/chaos_boxes.py):
a short seeded run of hostile exchanges spread over both boxes, the invariants checked
across them after each phase, and both boxes drained with exit 0. Needs PostgreSQL
(skipped without it, failed without it under GATEKEEPER_REQUIRE_E2E=1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from chaos_boxes import Boxes
from pgserver import PgServer
from support import Proc

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
