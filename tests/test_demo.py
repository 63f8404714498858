"""`gatekeeper demo`: the one-command demo a new user runs first, run as that user would."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
from support import free_port


def test_demo_generates_a_song_and_stops_cleanly(tmp_path: Path, repo_root: Path) -> None:
    """The demo prints its URL and curl, starts from the song length as its estimate,
    proxies a generation, shows status, exits on Ctrl-C."""
    port, admin, engine = free_port(), free_port(), free_port()
    log = tmp_path / "demo.log"
    # The default rules, but readings from a calm file: under the test suite the box's
    # real CPU can exceed 90 % and the demo would (rightly) refuse the song.
    calm = tmp_path / "calm.json"
    calm.write_text('{"cpu_percent": 5, "memory_percent": 5}')
    rules = (repo_root / "rules.yaml").read_text()
    rules = rules.replace("source: psutil", "source: file").replace("file: null", f"file: {calm}")
    assert f"file: {calm}" in rules
    (tmp_path / "rules.yaml").write_text(rules)  # the demo uses ./rules.yaml
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gatekeeper",
                "demo",
                "--port",
                str(port),
                "--admin-port",
                str(admin),
                "--engine-port",
                str(engine),
                "--seconds",
                "1.5",
                "--memory-mb",
                "8",
                "--log-every",
                "0.3",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
        try:
            deadline = time.monotonic() + 30
            while "Live status" not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.1)
            text = log.read_text()
            assert f"frontend URL (point your frontend here):  http://127.0.0.1:{port}" in text
            assert f"curl -sS --fail-with-body -X POST http://127.0.0.1:{port}/generate" in text
            # Two distinct files for the "run it twice" example: a 503 never lands in song1.wav.
            assert "-o song1.wav -D - && ls -l song1.wav" in text
            assert "-o song2.wav -D - && ls -l song2.wav" in text
            # The first estimate is the simulator's song length, not the real engine's 600 s.
            first_status = httpx.get(f"http://127.0.0.1:{admin}/status", timeout=5).json()
            assert first_status["expected_seconds"] == 1.5, first_status
            children = psutil.Process(proc.pid).children(recursive=True)
            assert len(children) >= 2
            with httpx.Client(timeout=30) as c:
                first = c.post(
                    f"http://127.0.0.1:{port}/generate",
                    json={"lyrics": "demo", "description": "test"},
                )
                assert first.status_code == 200 and first.content[:4] == b"RIFF"
                blocked = c.post(f"http://127.0.0.1:{port}/batch-generate", json={})
                assert blocked.status_code == 410
            time.sleep(1.0)
            lines = log.read_text().splitlines()
            status = [ln for ln in lines if "in-flight" in ln]
            assert status, log.read_text()
            assert re.search(r"admitted 1 rejected 0 blocked 1", status[-1]), status[-1]
            assert "cpu" in status[-1] and "mem" in status[-1]
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=30)
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text()
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
