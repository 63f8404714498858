"""The Grafana dashboard generated from the rules (issue #3 §4): structure and freshness."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.config import Config, load_config, load_config_file
from gatekeeper.observability.dashboard import SCHEMA_VERSION, dashboard, promql_regex_literal

REPO = Path(__file__).resolve().parent.parent
PACKAGED_RULES = REPO / "gatekeeper" / "rules.yaml"
CHECKED_IN = REPO / "dashboards" / "gatekeeper.json"
REGENERATE = "gatekeeper dashboard --config gatekeeper/rules.yaml > dashboards/gatekeeper.json"

CUSTOM = """
admission:
  max_in_flight: 2
  expected_seconds: 420
  resources:
    cpu_percent: {reject_above: 83.5, recover_below: 61}
    memory_percent: {reject_above: 77, recover_below: 55.5}
routes:
  - name: song.v2
    match: {methods: [POST], path: /v2/songs}
    action: admit
  - name: generate
    match: {methods: [POST], path: /generate}
    action: admit
  - name: files
    match: {path: /files/**}
    action: pass
"""


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel with queries (rows excluded), including any nested in rows."""
    out = []
    for p in dash["panels"]:
        if p["type"] == "row":
            out.extend(p.get("panels", []))
        else:
            out.append(p)
    return out


def by_title(dash: dict[str, Any], prefix: str) -> dict[str, Any]:
    found = [p for p in panels(dash) if p["title"].startswith(prefix)]
    assert len(found) == 1, [p["title"] for p in panels(dash)]
    return found[0]


@pytest.fixture(scope="module")
def default_dash() -> dict[str, Any]:
    return dashboard(load_config_file(PACKAGED_RULES))


@pytest.fixture(scope="module")
def custom_dash() -> dict[str, Any]:
    return dashboard(load_config(CUSTOM))


@pytest.mark.slow  # runs the CLI
def test_checked_in_dashboard_is_current() -> None:
    """dashboards/gatekeeper.json is exactly `gatekeeper dashboard` for the default rules."""
    out = subprocess.run(
        [sys.executable, "-m", "gatekeeper", "dashboard", "--config", str(PACKAGED_RULES)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert CHECKED_IN.read_text(encoding="utf-8") == out, (
        f"{CHECKED_IN.relative_to(REPO)} is stale; regenerate it with:\n  {REGENERATE}"
    )
    assert json.loads(out) == dashboard(load_config_file(PACKAGED_RULES))


def test_documents_share_no_objects() -> None:
    """Changing a generated document in place leaves the next one untouched (no shared dicts)."""
    config = load_config_file(PACKAGED_RULES)
    first = dashboard(config)
    pristine = json.dumps(first)

    def scramble(node: Any) -> None:
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                scramble(child)
        node.clear()

    scramble(first)
    assert json.dumps(dashboard(config)) == pristine


@pytest.mark.slow  # runs the CLI
def test_dashboard_command_reports_config_errors(tmp_path: Path) -> None:
    """`gatekeeper dashboard` on an invalid rules file exits 2 and names the problem."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("admission:\n  max_in_flight: one\n")
    res = subprocess.run(
        [sys.executable, "-m", "gatekeeper", "dashboard", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 2
    assert "admission.max_in_flight" in res.stderr
    assert res.stdout == ""


def test_import_format(default_dash: dict[str, Any]) -> None:
    """The top level has what Grafana 10/11's "Import dashboard" needs."""
    d = default_dash
    assert d["schemaVersion"] == SCHEMA_VERSION >= 39
    assert d["uid"] == "gatekeeper" and d["title"] == "gatekeeper"
    assert "gatekeeper" in d["tags"]
    assert d["id"] is None
    assert d["time"] == {"from": "now-3h", "to": "now"}
    assert d["refresh"] == "10s"
    assert d["__inputs"] == [
        {
            "name": "DS_PROMETHEUS",
            "label": "Prometheus",
            "description": "The Prometheus that scrapes gatekeeper's admin /metrics",
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }
    ]
    req = {(r["type"], r["id"]) for r in d["__requires"]}
    assert {("grafana", "grafana"), ("datasource", "prometheus")} <= req
    used = {p["type"] for p in panels(d)}
    assert {("panel", t) for t in used} <= req


def test_instance_template_variable(default_dash: dict[str, Any]) -> None:
    """An `instance` query variable lists gatekeeper instances from gatekeeper_build_info."""
    (var,) = default_dash["templating"]["list"]
    assert var["name"] == "instance" and var["type"] == "query"
    assert var["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    assert var["definition"] == "label_values(gatekeeper_build_info, instance)"
    assert var["query"]["query"] == var["definition"]
    assert var["includeAll"] and var["multi"] and var["allValue"] == ".*"


def test_panels_have_unique_ids_and_fit_the_grid(default_dash: dict[str, Any]) -> None:
    """Panel ids are unique; every panel has a gridPos inside 24 columns, none overlapping."""
    ids = [p["id"] for p in default_dash["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in default_dash["panels"]:
        g = p["gridPos"]
        assert set(g) == {"h", "w", "x", "y"}
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["x"] + g["w"] <= 24
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine


def test_every_query_uses_the_datasource_input_and_instance(default_dash: dict[str, Any]) -> None:
    """Each panel and target points at ${DS_PROMETHEUS}; each metric selector filters
    on instance=~"$instance"; refIds are unique within a panel."""
    ds = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for p in panels(default_dash):
        assert p["datasource"] == ds, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == ds
            assert t["expr"].strip()
            selectors = re.findall(r"\b(gatekeeper_\w+)(\{[^}]*\})?", t["expr"])
            assert selectors, t["expr"]
            for name, sel in selectors:
                assert 'instance=~"$instance"' in sel, f"{name} in {t['expr']}"


def test_required_panels_exist(default_dash: dict[str, Any]) -> None:
    """The issue's panel list: admission, in flight, generation, traffic, resources,
    durations, upstream errors and up, alerts — each querying its metric."""
    want = {
        "Admission": ["gatekeeper_in_flight", "gatekeeper_overloaded", "gatekeeper_upstream_up"],
        "Why not": ["gatekeeper_overloaded", "gatekeeper_draining"],
        "In flight vs limit": ["gatekeeper_in_flight", "gatekeeper_max_in_flight"],
        "Running generation: elapsed": [
            "gatekeeper_generation_elapsed_seconds",
            "gatekeeper_generation_expected_seconds",
        ],
        "Requests per minute": ["gatekeeper_requests_total"],
        "Turned away per minute": ["gatekeeper_rejections_total"],
        "CPU %": ["gatekeeper_cpu_percent"],
        "Memory %": ["gatekeeper_memory_percent"],
        "Generation duration": ["gatekeeper_upstream_request_duration_seconds_bucket"],
        "Upstream errors": ["gatekeeper_upstream_errors_total", "gatekeeper_upstream_up"],
        "Alerts firing": ["gatekeeper_alerts_firing"],
        "Queue depth": ["gatekeeper_queue_depth", "gatekeeper_queue_capacity"],
        "Queue wait": [
            "gatekeeper_queue_wait_seconds_bucket",
            "gatekeeper_queue_oldest_wait_seconds",
            "gatekeeper_queue_max_wait_seconds",
        ],
        "ETA error": ["gatekeeper_eta_error_ratio_bucket"],
        "Jobs": ["gatekeeper_jobs_total", "gatekeeper_coalesced_total"],
        "Kept results bytes": ["gatekeeper_results_bytes"],
    }
    for title, metrics in want.items():
        exprs = " ".join(t["expr"] for t in by_title(default_dash, title)["targets"])
        for m in metrics:
            assert m in exprs, (title, m)
    by_route = by_title(default_dash, "Requests per minute")["targets"][0]
    assert "sum by (route, outcome)" in by_route["expr"]
    assert "sum by (reason)" in by_title(default_dash, "Turned away per")["targets"][0]["expr"]
    assert "sum by (kind)" in by_title(default_dash, "Upstream errors")["targets"][0]["expr"]


def test_admission_state_has_a_mapping_for_every_code(default_dash: dict[str, Any]) -> None:
    """The admission stat maps each state code to words (accepting / why not)."""
    p = by_title(default_dash, "Admission")
    options = p["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert options["0"]["text"] == "accepting"
    texts = " ".join(o["text"] for o in options.values())
    for word in ("busy", "CPU", "memory", "engine down", "draining"):
        assert word in texts
    # Every engine down: the gate refuses engine_down (issue #11 §1), and the stat says so.
    assert options["4"]["text"] == "not accepting: engine down"
    expr = p["targets"][0]["expr"]
    for weight in range(1, 6):
        assert f") * {weight}," in expr


@pytest.mark.parametrize(
    ("title", "reject", "recover"),
    [("CPU %", 83.5, 61.0), ("Memory %", 77.0, 55.5)],
)
def test_resource_thresholds_come_from_the_config(
    custom_dash: dict[str, Any], title: str, reject: float, recover: float
) -> None:
    """CPU and memory panels draw the configured recover and reject values as threshold
    lines with shaded regions, and say them in the title."""
    p = by_title(custom_dash, title)
    defaults = p["fieldConfig"]["defaults"]
    steps = [s["value"] for s in defaults["thresholds"]["steps"]]
    assert steps == [None, recover, reject]
    assert defaults["custom"]["thresholdsStyle"]["mode"] == "line+area"
    assert defaults["unit"] == "percent" and defaults["max"] == 100
    assert f"reject above {reject:g}" in p["title"]
    assert f"recover below {recover:g}" in p["title"]


def test_default_thresholds_match_default_rules(default_dash: dict[str, Any]) -> None:
    """With the default rules the lines sit at 75/90 (CPU) and 80/90 (memory)."""
    cpu = by_title(default_dash, "CPU %")["fieldConfig"]["defaults"]["thresholds"]["steps"]
    mem = by_title(default_dash, "Memory %")["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in cpu] == [None, 75, 90]
    assert [s["value"] for s in mem] == [None, 80, 90]


def test_duration_quantiles_cover_the_admit_routes(custom_dash: dict[str, Any]) -> None:
    """p50/p95 come from histogram_quantile over exactly the admit routes, regex-escaped."""
    targets = by_title(custom_dash, "Generation duration")["targets"]
    exprs = [t["expr"] for t in targets]
    assert exprs[0].startswith("histogram_quantile(0.5, ")
    assert exprs[1].startswith("histogram_quantile(0.95, ")
    for e in exprs[:2]:
        assert 'route=~"song\\\\.v2|generate"' in e
        assert "sum by (le, route)" in e
    assert "files" not in " ".join(exprs)


def with_queue_route(config: Config, name: str) -> Config:
    """``config`` with route ``name`` turned into a queue route (as rules.yaml will say)."""
    routes = tuple(
        dataclasses.replace(r, action="queue") if r.name == name else r for r in config.routes
    )
    return dataclasses.replace(config, routes=routes)


def test_queue_panels() -> None:
    """Queue wait p50/p95 cover exactly the queue routes; generation durations every gated
    route; the oldest wait is the alert signal's PromQL; ETA error gives p50/p90 as a
    ratio; jobs are per state; kept results in bytes."""
    d = dashboard(with_queue_route(load_config(CUSTOM), "generate"))
    wait = [t["expr"] for t in by_title(d, "Queue wait")["targets"]]
    assert wait[0].startswith("histogram_quantile(0.5, ")
    assert wait[1].startswith("histogram_quantile(0.95, ")
    for e in wait[:2]:
        assert 'route=~"generate"' in e and "sum by (le, route)" in e
    assert "max by (instance) (gatekeeper_queue_oldest_wait_seconds" in wait[2]
    durations = by_title(d, "Generation duration")["targets"][0]["expr"]
    assert 'route=~"song\\\\.v2|generate"' in durations
    eta = by_title(d, "ETA error")
    assert [t["expr"].split(",")[0] for t in eta["targets"]] == [
        "histogram_quantile(0.5",
        "histogram_quantile(0.9",
    ]
    assert eta["fieldConfig"]["defaults"]["unit"] == "percentunit"
    assert "sum by (state)" in by_title(d, "Jobs")["targets"][0]["expr"]
    assert by_title(d, "Kept results bytes")["fieldConfig"]["defaults"]["unit"] == "bytes"
    rows = [r["title"] for r in d["panels"] if r["type"] == "row"]
    assert rows.count("Waiting room") == 1
    # Without a queue route the wait quantiles take every route (never an empty regex).
    plain = by_title(dashboard(load_config(CUSTOM)), "Queue wait")["targets"][0]["expr"]
    assert 'route=~".+"' in plain


def test_in_flight_description_names_the_configured_limit(custom_dash: dict[str, Any]) -> None:
    """The in-flight panel states the configured max_in_flight."""
    assert "configured: 2" in by_title(custom_dash, "In flight vs limit")["description"]


@pytest.mark.parametrize(
    ("name", "escaped"),
    [
        ("generate", "generate"),
        ("song.v2", "song\\\\.v2"),
        ("a|b", "a\\\\|b"),
        ('q"x', 'q\\"x'),
        ("x(1)+", "x\\\\(1\\\\)\\\\+"),
    ],
)
def test_promql_regex_literal(name: str, escaped: str) -> None:
    """Route names become exact-match regexes inside a PromQL double-quoted string."""
    assert promql_regex_literal(name) == escaped
