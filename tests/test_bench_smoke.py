"""``bench/run.py --smoke``: every section runs end to end and prints its rows.

Figures are not asserted (speed is measured, not asserted in timed tests): only that
the bench starts nginx, HAProxy, the bare proxy, engine-sim, cpu_engine and gatekeeper,
measures each section (f: the waiting room, 20 waiters; h: two engines, 4 jobs), prints
the summary against the issue's targets and exits 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import find_binary, stop_process

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parent.parent
EXPECTED_ROWS = (
    "## a. passthrough",
    "nginx direct",
    "via HAProxy (1 thread)",
    "via bare aiohttp proxy",
    "via gatekeeper, log WARNING",
    "via gatekeeper, log INFO",
    "## b. rejection",
    "gatekeeper (busy)",
    "nginx return 503",
    "HAProxy return 503",
    "## c. exact admission",
    "check: exactly 1 forwarded",
    "## d. streaming and memory",
    "check: gatekeeper peak RSS growth <= 20 MiB",
    "## e. a 0.5 s generation",
    "engine-sim  gatekeeper, wrk -c 1000",
    "cpu_engine  gatekeeper, wrk -c 1000",
    "cpu_engine  nginx return 503, wrk -c 1000",
    "## f. waiting room (20 waiters)",
    "pop_next (until empty)",
    "async submissions (202)",
    "dispatch: queue drained (0 s songs)",
    "held drained, every client its 200",
    "callbacks, probing",
    "## h. several engines (4 async jobs, 0.5 s songs)",
    "two engines  gpu1",
    "one engine   gpu0",
    "next job seen running on gpu1",
    "## summary",
    "passthrough req/s, 32 conn, log WARNING",
    "rejections/s, 32 conns",
    "MiB stream",
    "generation time, cpu_engine, flood at gatekeeper, wrk -c 1000",
    "added p50 latency at 1 conn",
    "RSS growth during the stream",
    "all checks held",
)


def test_bench_smoke_runs_every_section(tmp_path: Path) -> None:
    """The smoke run exits 0 and prints every section's rows and the summary."""
    for tool in ("nginx", "haproxy", "wrk", "hey"):
        find_binary(tool, f"/usr/sbin/{tool}")
    log = tmp_path / "bench.txt"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            code = proc.wait(timeout=150)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            stop_process(proc)  # SIGTERM: the bench stops everything it started
    text = log.read_text(errors="replace")
    assert code == 0, f"bench exited {code}:\n{text[-6000:]}"
    missing = [row for row in EXPECTED_ROWS if row not in text]
    assert not missing, f"rows missing {missing}:\n{text[-6000:]}"


def test_boxes_bench_runs_and_its_checks_hold(tmp_path: Path) -> None:
    """``bench/boxes.py`` (two boxes behind the real HAProxy) runs small and exits 0: the
    spread, burst and drain checks held, and it prints each section's figures."""
    find_binary("haproxy", "/usr/sbin/haproxy")
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "boxes.py"), "--burst", "20", "--seconds", "0.01"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    for heading in ("1. spread", "3. burst: 20 held", "2. drain"):
        assert heading in out.stdout
    assert "answers: {200: 20}; lost 0" in out.stdout
