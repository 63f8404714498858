"""Alerts end to end: the real `gatekeeper run`, a real Alertmanager, receivers that are down.

Overload is injected through the file resource source, exactly as a fire drill would.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import (
    Proc,
    find_binary,
    free_port,
    poll,
    start_engine,
    start_gatekeeper,
    stop_process,
)
from test_alerts_delivery import Hook

from gatekeeper.config import default_alert_rules
from gatekeeper.observability.alerts.notify import fingerprint

pytestmark = pytest.mark.e2e

CPU_RULE = default_alert_rules()[0]  # GatekeeperCPUHigh, with its shipped annotations
FOR_SECONDS = 1.0
EVAL = 0.2


def write_load(path: Path, cpu: float, memory: float = 30.0) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"cpu_percent": cpu, "memory_percent": memory}))
    os.replace(tmp, path)  # atomic: the monitor never reads half a file


def gatekeeper_rules(load: Path, receivers: str, rules: str) -> str:
    return f"""
admission:
  sample_interval: 100ms
  resources:
    source: file
    file: {load}
upstream:
  probe: {{interval: 200ms, timeout: 200ms}}
alerts:
  evaluation_interval: {EVAL}s
  resend_interval: 1s
  instance: gk-e2e
  receivers:
{receivers}
  rules:
{rules}
"""


CPU_RULE_YAML = f"""    - alert: {CPU_RULE.alert}
      expr: {CPU_RULE.expr}
      for: {FOR_SECONDS}s
      severity: {CPU_RULE.severity}
      summary: {json.dumps(CPU_RULE.summary, ensure_ascii=False)}
      runbook: {json.dumps(CPU_RULE.runbook)}
"""


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[tuple[str, Hook]]:
    """A real Alertmanager on loopback (no clustering) routing to a webhook the test runs."""
    binary = find_binary(
        "prometheus-alertmanager", "/usr/bin/prometheus-alertmanager", "alertmanager"
    )
    hook = Hook()
    port = free_port()
    cfg = tmp_path / "alertmanager.yml"
    cfg.write_text(
        f"""
route:
  receiver: hook
  group_by: [alertname]
  group_wait: 100ms
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {hook.url}
        send_resolved: true
"""
    )
    log = open(tmp_path / "alertmanager.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={cfg}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(url + "/-/ready", timeout=0.5, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "alertmanager did not start:\n" + (tmp_path / "alertmanager.log").read_text()
                )
            time.sleep(0.05)
        yield url, hook
    finally:
        stop_process(proc)
        log.close()


# How long a calm box is watched for silence: longer than overload takes to reach the
# webhook (sample, `for`, evaluation, group_wait: about 1.4 s), as the test asserts.
CALM_WINDOW = FOR_SECONDS + 2.0
FIRING_CPU = re.compile(
    r'^gatekeeper_alerts_firing\{alertname="GatekeeperCPUHigh",severity="warning"\} (\S+)$', re.M
)


async def stays_calm(admin: str, hook: Hook) -> None:
    """Once gatekeeper has read the calm 40 % and evaluated the rule, nothing fires for
    CALM_WINDOW: the firing gauge stays 0 and the webhook gets nothing."""
    async with httpx.AsyncClient(trust_env=False) as c:

        async def firing() -> str | None:
            m = FIRING_CPU.search((await c.get(admin + "/metrics")).text)
            return m.group(1) if m else None

        async def evaluated_calm() -> bool:
            status = (await c.get(admin + "/status")).json()
            return status["cpu_percent"] == 40 and await firing() == "0.0"

        await poll(evaluated_calm)
        until = time.monotonic() + CALM_WINDOW
        while time.monotonic() < until:
            assert await firing() == "0.0"
            assert hook.bodies.empty()
            await asyncio.sleep(EVAL / 2)
    assert hook.bodies.empty()


async def next_with(hook: Hook, status: str, timeout: float = 10.0) -> tuple[float, Any]:
    """The next webhook body with ``status``, and when it arrived (monotonic)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {status!r} notification within {timeout}s"
        at, body = await asyncio.wait_for(hook.bodies.get(), left)
        if body["status"] == status:
            return at, body


async def test_alertmanager_end_to_end(
    tmp_path: Path, procs: list[Proc], alertmanager: tuple[str, Hook]
) -> None:
    """CPU overload written to the resource file reaches Alertmanager's webhook as a firing
    GatekeeperCPUHigh with its labels and annotations; recovery brings the resolved one."""
    am_url, hook = alertmanager
    await hook.start()
    try:
        load = tmp_path / "load.json"
        write_load(load, 40)
        receivers = f'    - {{name: oncall, type: alertmanager, url: "{am_url}"}}\n'
        gk, _, admin = start_gatekeeper(
            tmp_path,
            gatekeeper_rules(load, receivers, CPU_RULE_YAML),
            f"http://127.0.0.1:{free_port()}",
        )
        procs.append(gk)
        await stays_calm(admin, hook)

        crossed = time.monotonic()
        write_load(tmp_path / "load.json", 97)
        at, body = await next_with(hook, "firing")
        fired_after = at - crossed
        (alert,) = body["alerts"]
        assert alert["labels"] == {
            "alertname": "GatekeeperCPUHigh",
            "severity": "warning",
            "instance": "gk-e2e",
            "service": "gatekeeper",
        }
        assert alert["annotations"] == {
            "summary": CPU_RULE.summary.replace("{{ $value | humanize }}", "97"),
            "runbook": CPU_RULE.runbook,
        }
        assert alert["generatorURL"] == admin + "/"
        assert alert["endsAt"] == "0001-01-01T00:00:00Z"
        # Our direct webhook payloads use the same fingerprints Alertmanager computes.
        assert alert["fingerprint"] == fingerprint(alert["labels"])
        assert fired_after >= FOR_SECONDS  # never before `for`
        assert fired_after < CALM_WINDOW  # so the calm window above would have seen it

        async with httpx.AsyncClient(trust_env=False) as c:
            status = (await c.get(admin + "/status")).json()
            metrics = (await c.get(admin + "/metrics")).text
        assert [a["alertname"] for a in status["alerts"]] == ["GatekeeperCPUHigh"]
        assert (
            'gatekeeper_alerts_firing{alertname="GatekeeperCPUHigh",severity="warning"} 1.0'
            in metrics
        )
        sent = re.search(
            r'gatekeeper_alert_notifications_total\{receiver="oncall",result="success"\} (\S+)',
            metrics,
        )
        assert sent is not None and float(sent.group(1)) >= 1

        recovered = time.monotonic()
        write_load(tmp_path / "load.json", 20)
        at, body = await next_with(hook, "resolved")
        resolved_after = at - recovered
        (alert,) = body["alerts"]
        assert alert["labels"]["alertname"] == "GatekeeperCPUHigh"
        assert alert["endsAt"] != "0001-01-01T00:00:00Z"
        print(
            f"\nalert e2e: threshold crossed -> firing at the Alertmanager webhook in "
            f"{fired_after:.2f}s (for={FOR_SECONDS:g}s, evaluation_interval={EVAL:g}s, "
            f"sample_interval=0.1s, group_wait=0.1s); recovery -> resolved in "
            f"{resolved_after:.2f}s (group_interval=1s)"
        )
        assert gk.proc.poll() is None
    finally:
        await hook.stop()


def failures(receiver: str, metrics: str) -> float:
    """gatekeeper_alert_notifications_total{receiver, result="failure"} from a scrape."""
    m = re.search(
        r"gatekeeper_alert_notifications_total"
        rf'\{{receiver="{receiver}",result="failure"\}} (\S+)',
        metrics,
    )
    return float(m.group(1)) if m else 0.0


async def test_receivers_down_never_slow_the_proxy_and_catch_up(
    tmp_path: Path, procs: list[Proc]
) -> None:
    """With one receiver hanging and one refusing, deliveries fail, are retried and counted,
    proxied requests stay fast and nothing crashes; when the receiver comes back it gets the
    alert that is firing now."""
    engine, engine_url = start_engine(tmp_path)
    procs.append(engine)
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(1)  # accepts nothing: a receiver that hangs
    hang_port = black_hole.getsockname()[1]
    refused = free_port()  # nothing listens: a receiver that refuses
    receivers = (
        f'    - {{name: chat, type: webhook, url: "http://127.0.0.1:{hang_port}/hook",'
        " timeout: 500ms}\n"
        f'    - {{name: oncall, type: alertmanager, url: "http://127.0.0.1:{refused}"}}\n'
    )
    rules = (
        "    - {alert: AlwaysOn, expr: 'in_flight >= 0', for: 0s, severity: info,"
        " summary: 'drill', runbook: 'nothing to do'}\n"
    )
    load = tmp_path / "load.json"
    write_load(load, 10)
    gk, proxy, admin = start_gatekeeper(
        tmp_path, gatekeeper_rules(load, receivers, rules), engine_url
    )
    procs.append(gk)
    latencies = []
    async with httpx.AsyncClient(trust_env=False, timeout=5) as c:
        # Proxied requests while deliveries fail, until each receiver failed at least twice.
        deadline = time.monotonic() + 10
        while True:
            t = time.perf_counter()
            r = await c.get(proxy + "/healthz")
            latencies.append(time.perf_counter() - t)
            assert r.status_code == 200
            metrics = (await c.get(admin + "/metrics")).text
            done = failures("chat", metrics) >= 2 and failures("oncall", metrics) >= 2
            if (done and len(latencies) >= 40) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.03)
        assert failures("chat", metrics) >= 2, metrics
        assert failures("oncall", metrics) >= 2, metrics
        p50, worst = statistics.median(latencies), max(latencies)
        print(
            f"\nproxy latency while both receivers fail: p50 {p50 * 1000:.1f} ms, "
            f"max {worst * 1000:.1f} ms over {len(latencies)} requests; failures counted: "
            f"chat {failures('chat', metrics):g}, oncall {failures('oncall', metrics):g}"
        )
        # A hanging delivery takes 500 ms per attempt; none of it may show on the proxy path.
        assert p50 < 0.05 and worst < 0.4
        assert (await c.get(admin + "/healthz")).status_code == 200
        assert "alert delivery to chat failed" in gk.output()

        # The chat receiver comes back on the same port: it gets the firing alert.
        black_hole.close()
        hook = await Hook(port=hang_port).start()
        try:
            _, body = await next_with(hook, "firing", timeout=15)
            assert body["alerts"][0]["labels"]["alertname"] == "AlwaysOn"
            assert body["receiver"] == "chat"
        finally:
            await hook.stop()
    assert gk.proc.poll() is None  # still running
