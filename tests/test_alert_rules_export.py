"""`gatekeeper alert-rules`: the same rules as PromQL, checked by the real promtool."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import find_binary

from gatekeeper.config import SIGNALS, load_config, load_config_file
from gatekeeper.observability.alerts import inputs as signals
from gatekeeper.observability.alerts.promrules import prom_duration, promql, rule_file
from gatekeeper.observability.alerts.rules import format_value

ROOT = Path(__file__).resolve().parent.parent
PACKAGED = ROOT / "gatekeeper" / "rules.yaml"
CHECKED_IN = ROOT / "deploy" / "prometheus" / "gatekeeper-rules.yml"
PROMTOOL_TESTS = ROOT / "tests" / "promtool" / "gatekeeper-rules-test.yml"


def test_checked_in_rule_file_is_not_stale() -> None:
    """deploy/prometheus/gatekeeper-rules.yml is exactly the export of the default rules."""
    want = rule_file(load_config_file(PACKAGED))
    assert CHECKED_IN.read_text(encoding="utf-8") == want, (
        "stale: run `gatekeeper alert-rules --config gatekeeper/rules.yaml"
        " > deploy/prometheus/gatekeeper-rules.yml`"
    )


@pytest.mark.slow  # runs the CLI
def test_cli_prints_the_rule_file(tmp_path: Path) -> None:
    """The CLI command prints the export; a bad --config exits 2 with the problem's line."""
    out = subprocess.run(
        [sys.executable, "-m", "gatekeeper", "alert-rules", "--config", str(PACKAGED)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == CHECKED_IN.read_text(encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text("alerts:\n  rules:\n    - {alert: A, expr: 'gpu > 1'}\n")
    res = subprocess.run(
        [sys.executable, "-m", "gatekeeper", "alert-rules", "--config", str(bad)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    assert "line 3: alerts.rules[0].expr: unknown signal 'gpu'" in res.stderr


def test_export_matches_the_built_in_rules() -> None:
    """Same names, thresholds, for, labels and annotations as the rules gatekeeper evaluates."""
    cfg = load_config_file(PACKAGED)
    doc = yaml.safe_load(rule_file(cfg))
    (group,) = doc["groups"]
    assert group["name"] == "gatekeeper"
    assert len(group["rules"]) == len(cfg.alerts.rules)
    for exported, rule in zip(group["rules"], cfg.alerts.rules, strict=True):
        assert exported["alert"] == rule.alert
        want = f"{signals.SIGNALS[rule.signal].promql()} {rule.op} {format_value(rule.threshold)}"
        assert exported["expr"] == want
        assert exported.get("for", "0s") == (
            prom_duration(rule.for_seconds) if rule.for_seconds else "0s"
        )
        assert exported["labels"] == {"service": "gatekeeper", "severity": rule.severity}
        assert exported["annotations"] == {"summary": rule.summary, "runbook": rule.runbook}


def test_custom_rule_export() -> None:
    """A user's rule keeps its own labels and odd durations; rates become rate()*60."""
    cfg = load_config(
        "alerts:\n  rules:\n"
        "    - {alert: Blocked, expr: 'blocked_per_minute >= 2.5', for: 90s, severity: info,"
        " summary: s, runbook: r, labels: {team: music}}\n"
    )
    (entry,) = yaml.safe_load(rule_file(cfg))["groups"][0]["rules"]
    assert entry == {
        "alert": "Blocked",
        "expr": 'sum by (instance) (rate(gatekeeper_rejections_total{reason="blocked"}[1m]))'
        " * 60 >= 2.5",
        "for": "90s",
        "labels": {"team": "music", "service": "gatekeeper", "severity": "info"},
        "annotations": {"summary": "s", "runbook": "r"},
    }


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(120, "2m"), (90, "90s"), (3600, "1h"), (0.5, "500ms"), (5400, "90m"), (1.25, "1250ms")],
)
def test_prom_duration(seconds: float, text: str) -> None:
    """Durations are written in Prometheus' syntax, in the largest exact unit."""
    assert prom_duration(seconds) == text


def test_signal_table_covers_exactly_the_names_config_accepts() -> None:
    """The one signals table (live reader, PromQL, window) has an entry for each signal a
    rule may name, in config's order, and nothing else."""
    assert tuple(signals.SIGNALS) == SIGNALS
    assert all(name == s.name for name, s in signals.SIGNALS.items())


@pytest.mark.parametrize(
    ("name", "promql"),
    [
        ("cpu_percent", "max by (instance) (gatekeeper_cpu_percent)"),
        ("rejections_per_minute", "sum by (instance) (rate(gatekeeper_rejections_total[1m])) * 60"),
        (
            "upstream_errors_per_minute",
            "sum by (instance) "
            '(rate(gatekeeper_upstream_errors_total{kind!="client_disconnect"}[1m])) * 60',
        ),
        (
            "upstream_timeouts_per_hour",
            'sum by (instance) (rate(gatekeeper_upstream_errors_total{kind="timeout"}[1h])) * 3600',
        ),
        ("config_reload_failed", "max by (instance) (gatekeeper_config_reload_failed)"),
    ],
)
def test_signal_promql(name: str, promql: str) -> None:
    """Gauges are the highest per instance; a rate over its window is the increase over it."""
    assert signals.SIGNALS[name].promql() == promql


def test_signal_promql_with_an_instance_matcher() -> None:
    """The dashboard's instance matcher goes first, before the signal's own matchers."""
    blocked = signals.SIGNALS["blocked_per_minute"].promql('instance=~"$instance"')
    assert blocked == (
        "sum by (instance) (rate(gatekeeper_rejections_total"
        '{instance=~"$instance",reason="blocked"}[1m])) * 60'
    )


def test_promql_of_every_default_rule_names_an_exported_metric() -> None:
    """Every expression uses a metric gatekeeper exports (by name, from a live registry)."""
    from prometheus_client import generate_latest

    from gatekeeper.observability.metrics import Metrics

    m = Metrics()
    m.rejections.labels("generate", "busy").inc()
    m.upstream_errors.labels("generate", "timeout").inc()
    m.webhook_failing.labels("app").set(0)
    m.box_heartbeat_age.labels("box").set(0)
    exposed = generate_latest(m.registry).decode()
    for rule in load_config_file(PACKAGED).alerts.rules:
        metric = promql(rule).split("(")[-1].split("[")[0].split("{")[0].split(")")[0].strip()
        assert f"\n{metric}" in exposed or exposed.startswith(metric), (rule.alert, metric)


@pytest.mark.slow  # runs promtool
def test_promtool_check_rules() -> None:
    """The real promtool accepts the checked-in rule file."""
    promtool = find_binary("promtool")
    res = subprocess.run(
        [promtool, "check", "rules", str(CHECKED_IN)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr
    count = len(load_config_file(PACKAGED).alerts.rules)
    # cpu, memory, rejections, upstream x2, stuck, reload, disk, webhooks, db, box, queue x2
    assert count == 13
    assert f"SUCCESS: {count} rules found" in res.stdout


@pytest.mark.slow  # runs promtool
def test_promtool_unit_tests_cover_every_rule_firing_and_not() -> None:
    """`promtool test rules` passes, with a firing and a silent case for every default rule."""
    tests: dict[str, Any] = yaml.safe_load(PROMTOOL_TESTS.read_text(encoding="utf-8"))
    firing: set[str] = set()
    silent: set[str] = set()
    for t in tests["tests"]:
        for case in t["alert_rule_test"]:
            hot = [a["exp_labels"]["instance"] for a in case["exp_alerts"]]
            (firing if hot else silent).add(case["alertname"])
            assert "calm" not in hot  # the calm instance never fires
    names = {r.alert for r in load_config_file(PACKAGED).alerts.rules}
    assert firing == names and silent == names
    promtool = find_binary("promtool")
    res = subprocess.run(
        [promtool, "test", "rules", PROMTOOL_TESTS.name],
        cwd=PROMTOOL_TESTS.parent,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def _series(metric: str, **by_instance: str) -> list[dict[str, str]]:
    return [{"series": f'{metric}{{instance="{i}"}}', "values": v} for i, v in by_instance.items()]


def _case(at: str, rule: Any, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """The rule's alerts at ``at``: none, or on "hot" with ``annotations``."""
    exp = []
    if annotations is not None:
        labels = {"instance": "hot", "service": "gatekeeper", "severity": rule.severity}
        exp = [{"exp_labels": labels, "exp_annotations": annotations}]
    return {"eval_time": at, "alertname": rule.alert, "exp_alerts": exp}


@pytest.mark.slow  # runs promtool
def test_queue_rules_in_promtool(tmp_path: Path) -> None:
    """The exported queue rules fire in the real promtool: QueueFull after 5 minutes at
    capacity (not at 19/20, not with capacity 0), QueueWaitLong over 900 s after 1 minute,
    with the annotation rendered as gatekeeper renders it."""
    from gatekeeper.config import Config

    config = Config()
    rules = {r.alert: r for r in config.alerts.rules}
    full, wait = rules["GatekeeperQueueFull"], rules["GatekeeperQueueWaitLong"]
    waited = wait.summary.replace("{{ $value | humanizeDuration }}", "15m 50s")
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "1m",
                # "closed": max_waiting 0 after a reload with 3 left: ratio 0, not +Inf.
                "input_series": [
                    *_series("gatekeeper_queue_depth", hot="20x10", calm="19x10", closed="3x10"),
                    *_series("gatekeeper_queue_capacity", hot="20x10", calm="20x10", closed="0x10"),
                ],
                "alert_rule_test": [
                    _case("4m", full),
                    _case("6m", full, {"summary": full.summary, "runbook": full.runbook}),
                ],
            },
            {
                "interval": "1m",
                "input_series": _series(
                    "gatekeeper_queue_oldest_wait_seconds", hot="950x10", calm="899x10"
                ),
                "alert_rule_test": [
                    _case("30s", wait),
                    _case("2m", wait, {"summary": waited, "runbook": wait.runbook}),
                ],
            },
        ],
    }
    (tmp_path / "rules.yml").write_text(rule_file(config), encoding="utf-8")
    (tmp_path / "queue-test.yml").write_text(yaml.safe_dump(tests, allow_unicode=True))
    res = subprocess.run(
        [find_binary("promtool"), "test", "rules", "queue-test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    ratio = signals.SIGNALS["queue_full_ratio"].promql()
    assert ratio == (
        "((max by (instance) (gatekeeper_queue_depth) / max by (instance)"
        " (gatekeeper_queue_capacity > 0)) or (max by (instance) (gatekeeper_queue_depth) * 0))"
    )
