"""The `alerts` section of rules.yaml: defaults, the packaged file, and validation with lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatekeeper.config import (
    SIGNALS,
    AlertRule,
    Alerts,
    Config,
    ConfigError,
    Receiver,
    default_alert_rules,
    load_config,
    load_config_file,
)

PACKAGED = Path(__file__).resolve().parent.parent / "gatekeeper" / "rules.yaml"

DEFAULT_NAMES = (
    "GatekeeperCPUHigh",
    "GatekeeperMemoryHigh",
    "GatekeeperRejectionsFlood",
    "GatekeeperUpstreamDown",
    "GatekeeperUpstreamTimeouts",
    "GatekeeperGenerationStuck",
    "GatekeeperConfigReloadFailed",
    "GatekeeperStateDiskLow",
    "GatekeeperWebhookFailing",
    "GatekeeperStateDbDetached",
    "GatekeeperBoxHeartbeatStale",
    "GatekeeperQueueFull",
    "GatekeeperQueueWaitLong",
)


def test_packaged_rules_yaml_is_exactly_the_code_defaults() -> None:
    """The alerts section shipped in rules.yaml loads to exactly the code defaults."""
    assert load_config_file(PACKAGED).alerts == Config().alerts == Alerts()


def test_default_rules_and_receivers() -> None:
    """Eleven default rules, each with a summary and a runbook; only a log receiver by default."""
    rules = Config().alerts.rules
    assert tuple(r.alert for r in rules) == DEFAULT_NAMES
    for r in rules:
        assert r.summary.strip() and len(r.runbook) > 40, r.alert
        assert r.severity in ("warning", "critical")
    assert Config().alerts.receivers == (Receiver(name="log", type="log"),)


def test_generation_stuck_follows_the_read_timeout() -> None:
    """Without an alerts.rules list, GenerationStuck's threshold is upstream.timeouts.read."""
    cfg = load_config("upstream:\n  timeouts:\n    read: 20m\n")
    (stuck,) = [r for r in cfg.alerts.rules if r.alert == "GatekeeperGenerationStuck"]
    assert stuck.threshold == 1200 and stuck.signal == "generation_elapsed_seconds"
    assert Config().alerts.rules == default_alert_rules(900.0)


def test_queue_rules_follow_max_wait() -> None:
    """QueueFull fires on a full queue for 5 minutes; QueueWaitLong's threshold is half of
    admission.queue.max_wait (900 s for the default 30 minutes)."""
    full, wait = default_alert_rules()[-2:]
    assert (full.signal, full.op, full.threshold, full.for_seconds) == (
        "queue_full_ratio",
        ">=",
        1.0,
        300.0,
    )
    assert (wait.signal, wait.op, wait.threshold, wait.for_seconds) == (
        "queue_oldest_wait_seconds",
        ">",
        900.0,
        60.0,
    )
    assert default_alert_rules(max_wait=600.0)[-1].threshold == 300.0
    runbook = (PACKAGED.parent.parent / "docs" / "runbook.md").read_text(encoding="utf-8")
    for rule, section in ((full, "Queue full"), (wait, "Long queue waits")):
        assert f"docs/runbook.md, {section}" in rule.runbook and rule.severity == "warning"
        assert f"\n## {section}\n" in runbook


def test_full_section_loads() -> None:
    """Every key of the section, as documented."""
    cfg = load_config(
        """
alerts:
  evaluation_interval: 200ms
  resend_interval: 2s
  instance: engine-1
  external_url: http://engine-1:9090/
  receivers:
    - {name: oncall, type: alertmanager, url: "http://127.0.0.1:9093/"}
    - {name: chat, type: webhook, url: "http://127.0.0.1:8060/dingtalk/ops/send", timeout: 3s}
    - {name: journal, type: log}
  rules:
    - alert: Busy
      expr: "in_flight >= 1"
      for: 1.5s
      severity: info
      summary: "{{ $value }} running on {{ $labels.instance }}"
      runbook: nothing to do
      labels: {team: music, tier: 2}
"""
    )
    a = cfg.alerts
    assert (a.evaluation_interval, a.resend_interval) == (0.2, 2.0)
    assert (a.instance, a.external_url) == ("engine-1", "http://engine-1:9090")
    assert a.receivers == (
        Receiver("oncall", "alertmanager", "http://127.0.0.1:9093"),
        Receiver("chat", "webhook", "http://127.0.0.1:8060/dingtalk/ops/send", 3.0),
        Receiver("journal", "log"),
    )
    assert a.rules == (
        AlertRule(
            alert="Busy",
            signal="in_flight",
            op=">=",
            threshold=1.0,
            for_seconds=1.5,
            severity="info",
            summary="{{ $value }} running on {{ $labels.instance }}",
            runbook="nothing to do",
            labels={"team": "music", "tier": "2"},
        ),
    )


def test_empty_lists_disable() -> None:
    """`rules: []` and `receivers: []` are allowed: no built-in alerts, or nowhere to send."""
    a = load_config("alerts:\n  rules: []\n  receivers: []\n").alerts
    assert a.rules == () and a.receivers == ()


def test_every_signal_is_accepted() -> None:
    """Every documented signal parses in an expr."""
    for s in SIGNALS:
        rule = f"{{alert: A, expr: '{s} > 1', severity: info, summary: s, runbook: r}}"
        text = f"alerts:\n  rules:\n    - {rule}\n"
        assert load_config(text).alerts.rules[0].signal == s


RULE = (
    "alert: A\n      expr: cpu_percent > 90\n      severity: warning\n"
    "      summary: s\n      runbook: r"
)


@pytest.mark.parametrize(
    ("yaml_text", "line", "path", "message"),
    [
        (
            "alerts:\n  rules:\n    - alert: A\n      expr: gpu_percent > 90\n"
            "      severity: warning\n      summary: s\n      runbook: r\n",
            4,
            "alerts.rules[0].expr",
            "unknown signal 'gpu_percent'",
        ),
        (
            f"alerts:\n  rules:\n    - {RULE}\n      expr2: x\n",
            8,
            "alerts.rules[0].expr2",
            "unknown key",
        ),
        (
            "alerts:\n  rules:\n    - alert: A\n      expr: cpu_percent => 90\n"
            "      severity: warning\n      summary: s\n      runbook: r\n",
            4,
            "alerts.rules[0].expr",
            "must be '<signal> <op> <number>'",
        ),
        (
            "alerts:\n  rules:\n    - alert: A\n      expr: cpu_percent > lots\n"
            "      severity: warning\n      summary: s\n      runbook: r\n",
            4,
            "alerts.rules[0].expr",
            "is not a number",
        ),
        (
            "alerts:\n  rules:\n    - alert: A\n      expr: cpu_percent > 90\n"
            "      severity: page\n      summary: s\n      runbook: r\n",
            5,
            "alerts.rules[0].severity",
            "must be one of critical, warning, info",
        ),
        (
            f"alerts:\n  rules:\n    - {RULE}\n      for: soon\n",
            8,
            "alerts.rules[0].for",
            "duration",
        ),
        (
            "alerts:\n  rules:\n    - alert: A\n      expr: cpu_percent > 90\n",
            3,
            "alerts.rules[0].severity",
            "is required",
        ),
        (
            "alerts:\n  rules:\n    - alert: bad-name\n      expr: cpu_percent > 90\n"
            "      severity: warning\n      summary: s\n      runbook: r\n",
            3,
            "alerts.rules[0].alert",
            "must match",
        ),
        (
            f"alerts:\n  rules:\n    - {RULE}\n    - {RULE}\n",
            8,
            "alerts.rules[1].alert",
            "duplicate alert name",
        ),
        (
            f"alerts:\n  rules:\n    - {RULE}\n      labels: {{severity: page}}\n",
            8,
            "alerts.rules[0].labels.severity",
            "is set by gatekeeper",
        ),
        (
            "alerts:\n  rules:\n    - alert: A\n      expr: cpu_percent > 90\n"
            "      severity: warning\n      summary: '{{ $value | printf \"%.1f\" }}'\n"
            "      runbook: r\n",
            6,
            "alerts.rules[0].summary",
            "unsupported template",
        ),
        ("alerts:\n  evaluation_interval: 0\n", 2, "alerts.evaluation_interval", "must be > 0"),
        ("alerts:\n  resend_every: 1m\n", 2, "alerts.resend_every", "unknown key"),
        (
            "alerts:\n  receivers:\n    - name: am\n      type: alertmanager\n",
            3,
            "alerts.receivers[0].url",
            "is required for a 'alertmanager' receiver",
        ),
        (
            "alerts:\n  receivers:\n    - name: l\n      type: log\n      url: http://x\n",
            5,
            "alerts.receivers[0].url",
            "does not apply",
        ),
        (
            "alerts:\n  receivers:\n    - name: w\n      type: slack\n      url: http://x\n",
            4,
            "alerts.receivers[0].type",
            "must be one of alertmanager, webhook, log",
        ),
        (
            "alerts:\n  receivers:\n    - name: w\n      type: webhook\n      url: ftp://x\n",
            5,
            "alerts.receivers[0].url",
            "http:// or https:// URL",
        ),
        (
            "alerts:\n  receivers:\n    - {name: a, type: log}\n    - {name: a, type: log}\n",
            4,
            "alerts.receivers[1].name",
            "duplicate receiver name",
        ),
        ("alerts:\n  rules: {}\n", 2, "alerts.rules", "must be a list"),
    ],
)
def test_validation(yaml_text: str, line: int, path: str, message: str) -> None:
    """Each bad alerts setting is reported with its YAML path, its line and the reason."""
    with pytest.raises(ConfigError) as info:
        load_config(yaml_text, source="t.yaml")
    problems = [(p.line, p.path, p.message) for p in info.value.problems]
    assert any(ln == line and p == path and message in m for ln, p, m in problems), problems


def test_all_problems_reported_together() -> None:
    """Several bad rules yield one error listing every problem, each with its line."""
    text = (
        "alerts:\n  rules:\n"
        "    - {alert: A, expr: 'nope > 1', severity: warning, summary: s, runbook: r}\n"
        "    - {alert: B, expr: 'cpu_percent > 1', severity: loud, summary: s, runbook: r}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(text)
    got = {(p.line, p.path) for p in info.value.problems}
    assert got == {(3, "alerts.rules[0].expr"), (4, "alerts.rules[1].severity")}
    assert "nope > 1" in str(info.value)
