"""The signals of a real engine box (issue #11 §3), end to end: the real CLI as a process.

Real PSI from this machine's /proc/pressure shows up in /status and /metrics (skipped
where the kernel has no PSI: that is a property of the kernel, not of gatekeeper); the
rejection path is driven through the file source, so it is deterministic.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from support import ADMIT_ROUTES, Proc, start_engine, start_gatekeeper

from gatekeeper.resources.psi import parse_pressure

HAS_PSI = Path("/proc/pressure/memory").exists()


def test_status_and_metrics_show_live_psi_from_proc_pressure(
    tmp_path: Path, procs: list[Proc]
) -> None:
    """source psutil on this machine: /status says psi is live from /proc/pressure (or the
    cgroup's files) with avg10 readings in range, the metric exports them, and the startup
    log names the live signals."""
    if not HAS_PSI:
        pytest.skip("this kernel has no PSI (/proc/pressure/memory absent)")
    engine, upstream = start_engine(tmp_path)
    procs.append(engine)
    rules = "admission:\n  sample_interval: 100ms\n  resources:\n    source: psutil\n"
    gk, _proxy, admin = start_gatekeeper(tmp_path, rules + ADMIT_ROUTES, upstream)
    procs.append(gk)
    with httpx.Client(timeout=10, trust_env=False) as c:
        doc = c.get(admin + "/status").json()
        metrics = c.get(admin + "/metrics").text
    psi = doc["signals"]["psi"]
    assert psi["live"] is True, psi
    assert psi["source"].startswith(("/proc/pressure", "cgroup /")), psi
    assert set(psi["avg10"]) == {"cpu", "memory", "io"}
    for resource, lines in psi["avg10"].items():
        assert 0.0 <= lines["some"] <= 100.0, (resource, lines)
    # The same kernel file read by the test itself parses the same way.
    assert parse_pressure(Path("/proc/pressure/memory").read_text()).some >= 0.0
    assert doc["memory_pressure"] is not None and doc["cpu_pressure"] is not None
    assert doc["overloaded"]["memory_pressure"] is False  # no threshold: never rejects
    assert doc["thresholds"]["memory_pressure"] is None
    assert re.search(
        r'^gatekeeper_pressure_avg10_percent\{line="some",resource="memory"\} \d', metrics, re.M
    )
    assert 'gatekeeper_signal_live{signal="psi"} 1.0' in metrics
    assert 'gatekeeper_signal_live{signal="cpu"} 1.0' in metrics
    gk.stop()
    line = next(ln for ln in gk.output().splitlines() if "signals: " in ln)
    assert "psi /proc/pressure" in line or "psi cgroup /" in line, line
    assert "gpu " in line and "cpu " in line


def test_memory_pressure_over_threshold_rejects_with_its_reason(
    tmp_path: Path, procs: list[Proc]
) -> None:
    """An injected memory_pressure over reject_above: 503 reason memory_pressure with its
    message, the rejection counted under that label, /status overloaded; below
    recover_below the gate admits again."""
    readings = tmp_path / "readings.json"

    def inject(pressure: float) -> None:
        readings.write_text(
            json.dumps({"cpu_percent": 5, "memory_percent": 5, "memory_pressure": pressure})
        )

    inject(40)
    engine, upstream = start_engine(tmp_path, seconds=0.2)
    procs.append(engine)
    rules = (
        "admission:\n  sample_interval: 100ms\n  resources:\n"
        f"    source: file\n    file: {readings}\n"
        "    memory_pressure: {reject_above: 20, recover_below: 5}\n" + ADMIT_ROUTES
    )
    gk, proxy, admin = start_gatekeeper(tmp_path, rules, upstream)
    procs.append(gk)
    with httpx.Client(timeout=30, trust_env=False) as c:
        r = c.post(proxy + "/generate", json={"lyrics": "la"})
        assert r.status_code == 503
        body = r.json()
        assert body["reason"] == "memory_pressure" == r.headers["X-Gatekeeper-Reason"]
        assert "40%" in body["detail"]
        doc = c.get(admin + "/status").json()
        assert doc["reasons"] == ["memory_pressure"] and doc["overloaded"]["memory_pressure"]
        assert doc["signals"]["psi"] == {
            "live": True,
            "source": f"file {readings}",
            "avg10": {"memory": {"some": 40.0, "full": 40.0}},
        }
        assert doc["thresholds"]["memory_pressure"] == {
            "reject_above": 20.0,
            "recover_below": 5.0,
            "line": "full",
        }
        metrics = c.get(admin + "/metrics").text
        assert (
            'gatekeeper_rejections_total{reason="memory_pressure",route="generate"} 1.0' in metrics
        )
        assert 'gatekeeper_overloaded{resource="memory_pressure"} 1.0' in metrics
        inject(10)  # between the thresholds: still overloaded (hysteresis)
        assert c.post(proxy + "/generate", json={"lyrics": "la"}).status_code == 503
        inject(1)
        for _ in range(100):
            if c.get(admin + "/status").json()["accepting"]:
                break
        assert c.post(proxy + "/generate", json={"lyrics": "la"}).status_code == 200


@pytest.mark.slow  # runs the CLI
def test_check_says_which_signals_are_live(tmp_path: Path) -> None:
    """gatekeeper check prints the live signals of this machine, and never crashes without
    NVML (the gpu signal is reported absent with the reason)."""
    (tmp_path / "rules.yaml").write_text("admission:\n  resources:\n    source: psutil\n")
    res = subprocess.run(
        [sys.executable, "-m", "gatekeeper", "check"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if "signals (this machine, now):" in ln)
    for name in ("cgroup ", "cpu ", "memory ", "psi ", "gpu "):
        assert name in line, line
    if HAS_PSI:
        assert "psi /proc/pressure" in line or "psi cgroup /" in line
    assert re.search(r"gpu (NVML \(|absent: )", line), line
