"""`gatekeeper status [--admin URL] [--watch]` (issue #3 §2): the status for a person."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live import Live, start_live
from support import ADMIT_ROUTES, Proc, free_port

from gatekeeper.cli.status import DEFAULT_ADMIN_URL, default_admin_url
from gatekeeper.cli.status_view import status_line, status_report

BASE: dict[str, Any] = {
    "accepting": True,
    "reasons": [],
    "in_flight": 0,
    "max_in_flight": 1,
    "running": [],
    "retry_after": None,
    "expected_seconds": 600.0,
    "expected_samples": 0,
    "cpu_percent": 12.0,
    "memory_percent": 40.0,
    "overloaded": {"cpu": False, "memory": False},
    "thresholds": {
        "cpu_percent": {"reject_above": 90.0, "recover_below": 75.0},
        "memory_percent": {"reject_above": 90.0, "recover_below": 80.0},
    },
    "upstream_up": True,
    "draining": False,
    "counts": {"admitted": 0, "passed": 0, "rejected": 0, "blocked": 0},
    "rejections_by_reason": {},
    "uptime_seconds": 75.0,
}


def doc(**over: Any) -> dict[str, Any]:
    return {**BASE, **over}


BUSY = doc(
    accepting=False,
    reasons=["busy"],
    in_flight=1,
    running=[{"route": "generate", "elapsed_seconds": 150.0, "expected_seconds": 600.0}],
    retry_after=450,
    expected_samples=3,
    counts={"admitted": 4, "passed": 9, "rejected": 2, "blocked": 1},
    rejections_by_reason={"busy": 2, "blocked": 1},
)


@pytest.mark.parametrize(
    ("status", "expected_lines"),
    [
        (
            doc(),
            [
                "gatekeeper at http://gk:9090: accepting generations",
                "generation  idle",
                "in-flight   0/1",
                "initial estimate (admission.expected_seconds)",
                "engine      up",
                "uptime      1m15s",
            ],
        ),
        (
            BUSY,
            [
                "NOT accepting: busy",
                "generate    generating [#####---------------]  25% 2m30s/10m00s ~7m30s left",
                "in-flight   1/1   (a new request now gets Retry-After: 450)",
                "expected    10m00s per generation, median of the last 3 generation(s)",
                "requests    admitted 4  passed 9  rejected 2  blocked 1",
                "turned away busy 2, blocked 1",
            ],
        ),
        (
            doc(
                accepting=False,
                reasons=["cpu", "upstream_unavailable"],
                cpu_percent=96.0,
                overloaded={"cpu": True, "memory": False},
                upstream_up=False,
            ),
            [
                "NOT accepting: cpu, upstream_unavailable",
                "cpu          96.0% [###################-] reject >90% recover <75%  OVERLOADED",
                "memory       40.0% [########------------] reject >90% recover <80%",
                "engine      DOWN (probe failed)",
            ],
        ),
        (doc(upstream_up=None), ["engine      unknown (no probe answered yet)"]),
        (  # issue #11 §3: a PSI threshold in force, the GPU absent
            doc(
                accepting=False,
                reasons=["memory_pressure"],
                memory_pressure=25.0,
                cpu_pressure=3.0,
                overloaded={"cpu": False, "memory": False, "memory_pressure": True},
                thresholds={
                    **BASE["thresholds"],
                    "memory_pressure": {"reject_above": 20, "recover_below": 10, "line": "full"},
                },
                signals={
                    "psi": {"live": True, "source": "/proc/pressure"},
                    "gpu": {"live": False, "reason": "nvidia-ml-py not installed"},
                },
            ),
            [
                "NOT accepting: memory_pressure",
                "memory psi   25.0% [#####---------------] reject >20% recover <10%  OVERLOADED",
                "absent      gpu (nvidia-ml-py not installed)",
            ],
        ),
        (  # several engines (issue #11 §1): one line each
            doc(
                engines=[
                    {"name": "gpu0", "up": True, "in_flight": 1, "max_in_flight": 1},
                    {"name": "gpu1", "up": False, "in_flight": 0, "max_in_flight": 2},
                    {
                        "name": "old",
                        "up": True,
                        "in_flight": 1,
                        "max_in_flight": 0,
                        "removed": True,
                    },
                ]
            ),
            [
                "engine      gpu0: 1/1 running, up",
                "engine      gpu1: 0/2 running, DOWN (probe failed)",
                "engine      old: 1/0 running, removed, finishing its job",
            ],
        ),
        (doc(draining=True), ["draining    shutting down, waiting for running generations"]),
        (doc(alerts=[]), ["alerts      none firing"]),
        (
            doc(alerts=[{"alertname": "EngineDown", "severity": "critical", "summary": "gone"}]),
            ["ALERT       [critical] EngineDown: gone"],
        ),
    ],
)
def test_status_report(status: dict[str, Any], expected_lines: list[str]) -> None:
    """The one-shot summary: state and reasons, progress bar with ETA, in-flight and
    Retry-After, the estimate's basis, resources against thresholds, engine, counts."""
    text = "\n".join(status_report(status, "http://gk:9090", width=20))
    for line in expected_lines:
        assert line in text


def test_status_report_without_alerts_key_has_no_alert_line() -> None:
    """A gatekeeper without the alerts feature shows no alerts line at all."""
    assert "alert" not in "\n".join(status_report(doc())).lower()


QUEUED = doc(
    accepting=False,
    reasons=["busy"],
    in_flight=1,
    counts={"admitted": 1, "passed": 0, "rejected": 0, "blocked": 0, "queued": 3, "coalesced": 2},
    queue={
        "waiting": 2,
        "max_waiting": 2,
        "max_wait_seconds": 1800,
        "per_client": 2,
        "retry_after": 540,
        "entries": [
            {
                "position": 0,
                "state": "running",
                "route": "generate",
                "client": "3fa2c1d9",
                "held": True,
                "waited_seconds": 12.0,
                "elapsed_seconds": 100.2,
                "eta_seconds": 499.8,
                "coalesced": 1,
            },
            {
                "position": 1,
                "state": "queued",
                "route": "generate",
                "client": "9b1e0a77",
                "held": False,
                "waited_seconds": 40.1,
                "elapsed_seconds": None,
                "eta_seconds": 1099.8,
                "coalesced": 0,
            },
            {
                "position": 2,
                "state": "queued",
                "route": "generate",
                "client": "3fa2c1d9",
                "held": True,
                "waited_seconds": 3.0,
                "elapsed_seconds": None,
                "eta_seconds": None,
                "coalesced": 0,
            },
        ],
    },
    jobs={"results_bytes": 1234, "max_bytes": 10737418240, "state_dir": "/var/lib/gk"},
)


def test_status_report_shows_the_queue_one_line_per_entry() -> None:
    """The queue line (waiting/max, max wait, per client, the Retry-After a newcomer gets
    when full), then one line per job in the document's order, then the kept results."""
    lines = status_report(QUEUED, "http://gk:9090", width=20)
    start = lines.index(
        "  queue       2/2 waiting (max wait 30m00s, 2 per client)"
        "   FULL: a new request now gets Retry-After: 540"
    )
    assert lines[start + 1 : start + 5] == [
        "    running generate client 3fa2c1d9 (held), waited 12s, running 1m40s,"
        " ready in ~8m19s, +1 coalesced",
        "    #1      generate client 9b1e0a77 (async), waited 40s, ready in ~18m19s",
        "    #2      generate client 3fa2c1d9 (held), waited 3s, ready: ?",
        "  results     1.2 KiB kept of 10.0 GiB in /var/lib/gk",
    ]
    not_full = doc(queue={**QUEUED["queue"], "retry_after": None, "entries": []})
    text = "\n".join(status_report(not_full))
    assert "queue       2/2 waiting (max wait 30m00s, 2 per client)\n" in text + "\n"
    assert "FULL" not in text and "results" not in text


def test_status_of_an_older_gatekeeper_has_no_queue_lines() -> None:
    """A document without `queue`/`jobs` (a gatekeeper before issue #9) renders as before."""
    text = "\n".join(status_report(BUSY))
    assert "queue" not in text and "results" not in text
    assert "queue" not in status_line(BUSY)
    assert " | queue 2/2 | " in status_line(QUEUED)


def test_every_view_of_the_counts_shows_queued_and_coalesced_beside_admitted() -> None:
    """Issue #18 §7: on the shipped queue route songs count as queued/coalesced, not
    admitted; the demo line and `gatekeeper status` said `admitted 0` after several songs."""
    counts = {"admitted": 1, "passed": 0, "rejected": 1, "blocked": 0, "queued": 3, "coalesced": 2}
    line = status_line(doc(counts=counts))
    assert " | admitted 1 queued 3 coalesced 2 rejected 1 blocked 0 | " in line
    report = "\n".join(status_report(doc(counts=counts)))
    assert (
        "requests    admitted 1  queued 3  coalesced 2  passed 0  rejected 1  blocked 0" in report
    )
    # An older document (before the waiting room) has neither: the classic four show.
    assert " | admitted 4 rejected 2 blocked 1 | " in status_line(BUSY)


def test_default_admin_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ./rules.yaml: the documented default; otherwise its admin_listen, with wildcard
    addresses reached through loopback; --config takes precedence."""
    monkeypatch.chdir(tmp_path)
    assert default_admin_url(None) == DEFAULT_ADMIN_URL == "http://127.0.0.1:9090"
    (tmp_path / "rules.yaml").write_text("admin_listen: 0.0.0.0:9999\n")
    assert default_admin_url(None) == "http://127.0.0.1:9999"
    other = tmp_path / "other.yaml"
    other.write_text("admin_listen: '[::]:9191'\n")
    assert default_admin_url(str(other)) == "http://[::1]:9191"
    other.write_text("admin_listen: 10.1.2.3:9191\n")
    assert default_admin_url(str(other)) == "http://10.1.2.3:9191"


def gk_status(
    *args: str, cwd: Path | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatekeeper", "status", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
    )


@pytest.mark.slow  # runs the CLI
def test_unreachable_admin_is_a_clear_error() -> None:
    """Nothing listening: exit 1 and a message naming the URL, not a traceback."""
    url = f"http://127.0.0.1:{free_port()}"
    res = gk_status("--admin", url)
    assert res.returncode == 1
    assert f"cannot read {url}/status" in res.stderr
    assert "is gatekeeper running?" in res.stderr
    assert "Traceback" not in res.stderr
    assert res.stdout == ""


@pytest.mark.slow  # runs the CLI
def test_invalid_rules_file_for_the_default_url_exits_2(tmp_path: Path) -> None:
    """A broken ./rules.yaml is reported (with the way around it), not silently ignored."""
    (tmp_path / "rules.yaml").write_text("admin_listen: nowhere\n")
    res = gk_status(cwd=tmp_path)
    assert res.returncode == 2
    assert "admin_listen" in res.stderr and "--admin URL" in res.stderr


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory, module_procs: list[Proc]) -> Iterator[Live]:
    """One real gatekeeper with a generation running and one busy rejection (an admit
    route: the waiting room's view is tested with the queue)."""
    tmp = tmp_path_factory.mktemp("status-cli")
    live = start_live(tmp, module_procs, engine_seconds=60, expected=120, extra=ADMIT_ROUTES)
    live.start_generation()
    assert live.post("/generate", json={}).status_code == 503
    yield live
    live.close()


def test_one_shot_against_a_running_gatekeeper(busy: Live) -> None:
    """`gatekeeper status --admin URL` prints the live summary with the progress bar."""
    res = gk_status("--admin", busy.admin)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.startswith(f"gatekeeper at {busy.admin}: NOT accepting: busy\n")
    assert "  generate    generating [" in out and "/2m00s ~" in out and "left" in out
    assert "in-flight   1/1" in out
    assert "cpu          42.5%" in out and "reject >85% recover <70%" in out
    assert "memory       37.5%" in out
    assert "requests    admitted 1  queued 0  coalesced 0  passed 0  rejected 1  blocked 0" in out
    assert "turned away busy 1" in out


def test_default_url_comes_from_local_rules_yaml(busy: Live, tmp_path: Path) -> None:
    """Without --admin, the admin_listen of ./rules.yaml is used."""
    (tmp_path / "rules.yaml").write_text(f"admin_listen: 127.0.0.1:{busy.admin_port}\n")
    res = gk_status(cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "NOT accepting: busy" in res.stdout


def test_json_prints_the_raw_document(busy: Live) -> None:
    """--json prints the status JSON itself (for scripts)."""
    import json

    res = gk_status("--admin", busy.admin.removeprefix("http://") + "/status", "--json")
    assert res.returncode == 0, res.stderr
    body = json.loads(res.stdout)
    assert body["in_flight"] == 1 and body["reasons"] == ["busy"]


def seconds_shown(pattern: str, text: str) -> int:
    """The duration (``2m30s``, ``45s``) captured by ``pattern`` in ``text``, in seconds."""
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in {text!r}"
    m = re.fullmatch(r"(?:(\d+)m)?(\d+)s", found.group(1))
    assert m, found.group(1)
    return int(m.group(1) or 0) * 60 + int(m.group(2))


def test_watch_redraws_every_second_until_ctrl_c(busy: Live) -> None:
    """--watch prints a fresh frame each second (elapsed advancing) and exits 0 on SIGINT."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gatekeeper", "status", "--admin", busy.admin, "--watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    frames: list[list[str]] = []
    deadline = time.monotonic() + 15
    try:
        while len(frames) < 3 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("--- "):
                frames.append([])
            elif frames:
                frames[-1].append(line)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        assert proc.stderr is not None
        proc.stderr.close()
    assert code == 0
    assert len(frames) == 3  # the last one may be cut short by the signal
    gens = ["".join(f) for f in frames[:2]]
    assert all("NOT accepting: busy" in g and "generating [" in g for g in gens)
    # The view is live, not a repeat: frames are >= 1 s apart, so the whole seconds shown
    # for the generation's elapsed time and for the uptime both advance.
    elapsed = [seconds_shown(r"generating \[[#-]+\] +\d+% (\S+)/", g) for g in gens]
    uptimes = [seconds_shown(r"uptime +(\S+)", g) for g in gens]
    assert elapsed[1] > elapsed[0] and uptimes[1] > uptimes[0], (elapsed, uptimes)


@pytest.mark.parametrize("watch", [False, True])
def test_status_into_a_closed_pipe_exits_quietly(busy: Live, watch: bool) -> None:
    """`gatekeeper status | head -3` whose reader has gone: exit 141 (128 + SIGPIPE),
    no BrokenPipeError traceback; --watch stops at its first frame the same way."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        res = subprocess.run(
            [sys.executable, "-m", "gatekeeper", "status", "--admin", busy.admin]
            + (["--watch"] if watch else []),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
        )
    finally:
        os.close(write_end)
    assert res.returncode == 141, res.stderr
    assert res.stderr == ""
