"""Metrics and dashboard against the real thing (issue #3 §1, §4).

A real Prometheus (Debian's ``prometheus``) scrapes a real gatekeeper every
second while the test drives it through an admitted generation, busy and CPU
rejections, a blocked batch request and an upstream failure; then EVERY query
of the generated Grafana dashboard is evaluated through Prometheus' HTTP API
with the template variables substituted as Grafana would, and each must return
at least one series. ``promtool check metrics`` must find nothing to say about
the scraped ``/metrics``.
"""

from __future__ import annotations

import math
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from live import SONG, Generation, Live, start_live
from support import BATCH_BLOCKED, Proc, find_binary, free_port, stop_process

from gatekeeper.config import load_config_file
from gatekeeper.observability import metrics as metrics_module
from gatekeeper.observability.dashboard import dashboard

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "gatekeeper" / "rules.yaml"

# What Grafana would put in: a 1 s scrape gives $__rate_interval = 4 x scrape = 4s at
# least; a minute keeps every counter's two samples inside the window on a slow box.
GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
}


@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def query(self, client: httpx.Client, expr: str) -> list[dict[str, Any]]:
        resp = client.get(self.url + "/api/v1/query", params={"query": expr})
        body = resp.json()
        assert body.get("status") == "success", f"{expr}\n-> {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


def start_prometheus(tmp_path: Path, target: str, rule_file: Path | None = None) -> Prometheus:
    """Prometheus scraping ``target`` every second; ``rule_file``: its alerting rules,
    evaluated every second."""
    binary = find_binary("prometheus")
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    rules = "" if rule_file is None else f"rule_files: ['{rule_file}']\n"
    cfg.write_text(
        f"""
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
{rules}scrape_configs:
  - job_name: gatekeeper
    static_configs:
      - targets: ['{target}']
"""
    )
    log = tmp_path / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    prom = Prometheus(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 30
    with httpx.Client(timeout=2, trust_env=False) as c:
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text(errors="replace")
            try:
                if c.get(prom.url + "/-/ready").status_code == 200:
                    return prom
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    stop_process(proc)
    raise AssertionError("prometheus did not become ready:\n" + log.read_text(errors="replace"))


# The shipped queue route for /generate.
GENERATE = {
    "name": "generate",
    "match": {"methods": ["POST"], "path": "/generate/**"},
    "action": "queue",
}


@pytest.fixture(scope="module")
def driven(
    tmp_path_factory: pytest.TempPathFactory, module_procs: list[Proc]
) -> Iterator[tuple[Live, Prometheus]]:
    """gatekeeper + engine-sim + Prometheus (the shipped rules: /generate is a queue
    route; /batch-generate blocked, as shipped before batch routes, for a blocked
    request), after admitted, queued, passed, rejected (client_limit), blocked and
    upstream-failed requests."""
    tmp_path = tmp_path_factory.mktemp("prometheus-e2e")
    # The processes are module_procs': stopped after this fixture's teardown, on any way out.
    live = start_live(
        tmp_path,
        module_procs,
        engine_seconds=1.0,
        expected=30,
        cpu=20,
        memory=30,
        extra=yaml.safe_dump({"routes": [GENERATE, BATCH_BLOCKED]}, sort_keys=False),
    )
    try:
        prom = start_prometheus(tmp_path, live.admin.removeprefix("http://"))
    except BaseException:  # prometheus missing (a skip) or not starting: no client left open
        live.close()
        raise
    try:
        # Traffic starts after the first scrape, as in production: every series then has a
        # sample at 0 before its first request, so increase() counts that request.
        deadline = time.monotonic() + 15
        while not prom.query(live.client, 'gatekeeper_requests_total{outcome="admitted"}'):
            assert time.monotonic() < deadline, prom.log.read_text(errors="replace")
            time.sleep(0.1)
        gen = live.start_generation()
        # A histogram series is born with its first observation, which increase() cannot
        # see; the second generation (it waits its turn) is the one the quantiles count.
        second = Generation(live.proxy, {**SONG, "lyrics": "[verse] second song"})
        second.start()
        live.wait_status(lambda d: d["queue"]["waiting"] == 1)
        third = live.post("/generate", json={**SONG, "lyrics": "[verse] a third"})
        assert third.status_code == 429  # per_client 2: one running, one waiting
        assert third.headers["X-Gatekeeper-Reason"] == "client_limit"
        assert live.post("/batch-generate", json={}).status_code == 410  # blocked
        gen.join(timeout=20)
        assert gen.status == 200, gen.error
        second.join(timeout=20)
        assert second.status == 200, second.error
        # The engine breaks a response mid-body: an upstream protocol error.
        with pytest.raises(httpx.HTTPError):
            live.client.get(live.proxy + "/_sim/abort?after=1000")
        assert live.client.get(live.proxy + "/healthz").status_code == 200  # passed
        live.wait_status(lambda d: d["accepting"] is True and d["in_flight"] == 0)
        yield live, prom
    finally:
        live.close()
        stop_process(prom.proc)


def panel_queries(dash: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    for p in dash["panels"]:
        for inner in [p, *p.get("panels", [])]:
            for t in inner.get("targets", []):
                out.append((inner["title"], t["refId"], t["expr"]))
    return out


def substitute(expr: str, instance: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    expr = expr.replace("$instance", re.escape(instance).replace("\\", "\\\\"))
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def test_every_dashboard_query_returns_a_series(driven: tuple[Live, Prometheus]) -> None:
    """Prometheus evaluates each panel query of the dashboard for the default rules (with
    $instance, $__rate_interval, $__range substituted) to at least one series."""
    live, prom = driven
    instance = live.admin.removeprefix("http://")
    dash = dashboard(load_config_file(RULES))
    queries = panel_queries(dash)
    assert len(queries) >= 20
    alerts_defined = hasattr(metrics_module.Metrics(), "alerts_firing")
    empty: list[str] = []
    with httpx.Client(timeout=5, trust_env=False) as client:
        # The template variable itself: label_values(gatekeeper_build_info, instance).
        var = client.get(
            prom.url + "/api/v1/label/instance/values",
            params={"match[]": "gatekeeper_build_info"},
        ).json()
        deadline = time.monotonic() + 20
        while instance not in var["data"] and time.monotonic() < deadline:
            time.sleep(0.2)
            var = client.get(
                prom.url + "/api/v1/label/instance/values",
                params={"match[]": "gatekeeper_build_info"},
            ).json()
        assert instance in var["data"], var
        # Every counter has to be scraped at least twice after the last request, and the
        # gauges once after the traffic ended (the fixture saw in_flight 0 before now).
        traffic_ended = time.time()
        while time.monotonic() < deadline:
            empty = [
                f"{title} [{ref}]: {expr}"
                for title, ref, expr in queries
                if not prom.query(client, substitute(expr, instance))
            ]
            last_rejection = prom.query(
                client,
                f'gatekeeper_rejections_total{{instance="{instance}",reason="client_limit"}}',
            )
            scraped = prom.query(
                client, f'timestamp(gatekeeper_in_flight{{instance="{instance}"}})'
            )
            after = bool(scraped) and float(scraped[0]["value"][1]) > traffic_ended
            if not empty and last_rejection and last_rejection[0]["value"][1] == "1" and after:
                break
            time.sleep(0.5)
        exempt = [q for q in empty if "gatekeeper_alerts_firing" in q and not alerts_defined]
        # Series primed per queue route exist only once the default rules have one.
        if not any(r.action == "queue" for r in load_config_file(RULES).routes):
            per_route = (
                "gatekeeper_queue_wait_seconds_bucket",
                "gatekeeper_jobs_total",
                "gatekeeper_coalesced_total",
            )
            exempt += [q for q in empty if any(m in q for m in per_route)]
        assert [q for q in empty if q not in exempt] == [], "panel queries without data"

        def value(expr: str, **labels: str) -> float:
            for r in prom.query(client, substitute(expr, instance)):
                if all(r["metric"].get(k) == v for k, v in labels.items()):
                    return float(r["value"][1])
            raise AssertionError(f"no series {labels} for {expr}")

        exprs = {(title, ref): expr for title, ref, expr in queries}
        # The numbers behind the panels are the ones the test caused.
        assert value(exprs[("Admission", "A")]) == 0  # accepting again: nothing running
        requests = exprs[("Requests in the time range", "A")]
        assert value(requests, outcome="admitted") == 1  # started at once
        assert value(requests, outcome="queued") == 1  # waited its turn
        assert value(requests, outcome="blocked") == 1
        assert value(requests, outcome="rejected") == 1
        by_reason = exprs[("Turned away in the time range, by reason", "A")]
        for reason in ("client_limit", "blocked"):
            assert value(by_reason, reason=reason) == 1, reason
        errors = 'gatekeeper_upstream_errors_total{instance=~"$instance",kind="protocol"}'
        assert value(errors) == 1
        p50 = value(exprs[("Generation duration p50 / p95 (trailing 1h)", "A")], route="generate")
        assert not math.isnan(p50) and 0.5 <= p50 <= 5  # one ~1 s generation
        assert value(exprs[("In flight vs limit", "B")]) == 1  # the limit


def test_promtool_finds_no_problem_in_metrics(driven: tuple[Live, Prometheus]) -> None:
    """`promtool check metrics` on gatekeeper's /metrics (after real traffic) is silent."""
    promtool = find_binary("promtool")
    live, _ = driven
    text = live.client.get(live.admin + "/metrics").text
    for name in (
        "gatekeeper_requests_total",
        "gatekeeper_rejections_total",
        "gatekeeper_in_flight",
        "gatekeeper_max_in_flight",
        "gatekeeper_generation_elapsed_seconds",
        "gatekeeper_generation_expected_seconds",
        "gatekeeper_cpu_percent",
        "gatekeeper_memory_percent",
        "gatekeeper_overloaded",
        "gatekeeper_upstream_request_duration_seconds_bucket",
        "gatekeeper_upstream_errors_total",
        "gatekeeper_upstream_up",
        "gatekeeper_build_info",
        "gatekeeper_draining",
    ):
        assert f"\n{name}" in text, name
    assert 'le="1800.0"' in text
    res = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert (res.stdout + res.stderr).strip() == ""
