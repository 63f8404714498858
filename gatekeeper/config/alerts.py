"""``alerts``: built-in alert rules (issue #4), their receivers and their validation.

``SIGNALS`` names what a rule may test; ``gatekeeper.signals`` holds, for each name,
its live reader and its PromQL (read by the alert loop, the rule export and the
dashboard), and a test keeps its keys equal to ``SIGNALS``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from gatekeeper.config.reader import Section, join, line_of, value_of
from gatekeeper.config.values import check_url
from gatekeeper.core.errors import ConfigProblem

# What an alert rule may test.
SIGNALS: tuple[str, ...] = (
    "cpu_percent",
    "memory_percent",
    "in_flight",
    "rejections_per_minute",
    "blocked_per_minute",
    "upstream_errors_per_minute",
    "upstream_timeouts_per_hour",
    "upstream_up",
    "generation_elapsed_seconds",
    "config_reload_failed",
    "queue_full_ratio",
    "queue_oldest_wait_seconds",
)
OPERATORS: tuple[str, ...] = (">", ">=", "<", "<=", "==", "!=")
SEVERITIES: tuple[str, ...] = ("critical", "warning", "info")
RECEIVER_TYPES: tuple[str, ...] = ("alertmanager", "webhook", "log")
# Set by gatekeeper on every alert; a rule's own labels may not override them.
RESERVED_LABELS = frozenset({"alertname", "severity", "instance", "service"})


@dataclass(frozen=True)
class Receiver:
    name: str
    type: Literal["alertmanager", "webhook", "log"]
    url: str | None = None  # not for "log"
    timeout: float = 10.0


@dataclass(frozen=True)
class AlertRule:
    alert: str
    signal: str
    op: str
    threshold: float
    for_seconds: float  # YAML key ``for``
    severity: str
    summary: str
    runbook: str
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def expr(self) -> str:
        return f"{self.signal} {self.op} {self.threshold:g}"


def default_alert_rules(
    read_timeout: float = 900.0, max_wait: float = 1800.0
) -> tuple[AlertRule, ...]:
    """The rules shipped in rules.yaml; GenerationStuck follows ``upstream.timeouts.read``,
    QueueWaitLong half of ``admission.queue.max_wait``."""
    return (
        AlertRule(
            alert="GatekeeperCPUHigh",
            signal="cpu_percent",
            op=">",
            threshold=90.0,
            for_seconds=120.0,
            severity="warning",
            summary="引擎服务器 CPU 持续过载 / Engine host CPU at {{ $value | humanize }}%"
            " for 2 minutes; new generations are being rejected",
            runbook="Check what else runs on the box (top -o %CPU); stop anything that is"
            " not the engine. Do not raise admission.resources.cpu_percent: the engine"
            " needs the whole machine.",
        ),
        AlertRule(
            alert="GatekeeperMemoryHigh",
            signal="memory_percent",
            op=">",
            threshold=90.0,
            for_seconds=120.0,
            severity="critical",
            summary="引擎服务器内存即将耗尽 / Engine host memory at {{ $value | humanize }}%"
            " for 2 minutes; the box is close to freezing",
            runbook="Find the process holding memory (top -o %MEM). If the engine leaks"
            " after a generation, restart it once nothing runs (/status in_flight 0);"
            " kill anything else that grew.",
        ),
        AlertRule(
            alert="GatekeeperRejectionsFlood",
            signal="rejections_per_minute",
            op=">",
            threshold=30.0,
            for_seconds=60.0,
            severity="warning",
            summary="大量请求被拒绝（批量或重试风暴）/ {{ $value | humanize }} requests per"
            " minute turned away: a batch script or a retry storm",
            runbook="Open the access log (decision=rejected or blocked) and find the client"
            " address; a batch job or a client retrying without Retry-After is hammering"
            " the engine. Ask its owner to generate one song at a time, or block it"
            " upstream.",
        ),
        AlertRule(
            alert="GatekeeperUpstreamDown",
            signal="upstream_up",
            op="==",
            threshold=0.0,
            for_seconds=60.0,
            severity="critical",
            summary="音乐生成引擎无法连接 / The music engine has not answered gatekeeper's"
            " probe for 1 minute",
            runbook="Check the engine process (systemctl status, docker ps or kubectl get"
            " pods) and its log; restart it. gatekeeper admits no generation meanwhile"
            " (503 engine_down; queued jobs wait).",
        ),
        AlertRule(
            alert="GatekeeperUpstreamTimeouts",
            signal="upstream_timeouts_per_hour",
            op=">",
            threshold=0.0,
            for_seconds=0.0,
            severity="warning",
            summary="引擎响应超时 / {{ $value | humanize }} request(s) to the engine timed out"
            " in the last hour (no byte within the read timeout)",
            runbook="Look for upstream_timeout in the access log and at the engine's log for"
            " those request ids; a hung GPU/CPU worker needs an engine restart. Raise"
            " upstream.timeouts.read only if songs legitimately take longer.",
        ),
        AlertRule(
            alert="GatekeeperGenerationStuck",
            signal="generation_elapsed_seconds",
            op=">",
            threshold=read_timeout,
            for_seconds=60.0,
            severity="critical",
            summary="生成任务卡住 / A generation has run for {{ $value | humanizeDuration }},"
            " longer than the upstream read timeout; every other request gets busy",
            runbook="Check the engine's progress for the running job; if it is hung, restart"
            " the engine: the slot is freed when its connection closes.",
        ),
        AlertRule(
            alert="GatekeeperConfigReloadFailed",
            signal="config_reload_failed",
            op="==",
            threshold=1.0,
            for_seconds=0.0,
            severity="warning",
            summary="配置重新加载失败 / The last rules.yaml reload failed; the previous rules"
            " are still in force",
            runbook="Run gatekeeper check --config <file> to see every problem with its line,"
            " fix the file, then reload again (SIGHUP or POST /reload).",
        ),
        AlertRule(
            alert="GatekeeperQueueFull",
            signal="queue_full_ratio",
            op=">=",
            threshold=1.0,
            for_seconds=300.0,
            severity="warning",
            summary="排队已满 / The generation queue has been full for 5 minutes; new"
            " requests are turned away with queue_full",
            runbook="More songs are asked for than the engine makes. Run gatekeeper status:"
            " if one client holds many places, lower admission.queue.per_client; if not,"
            " demand is real: add engine capacity. See docs/runbook.md, Queue full.",
        ),
        AlertRule(
            alert="GatekeeperQueueWaitLong",
            signal="queue_oldest_wait_seconds",
            op=">",
            threshold=max_wait / 2,
            for_seconds=60.0,
            severity="warning",
            summary="排队等待过久 / A job has waited {{ $value | humanizeDuration }} in the"
            " queue, over half of admission.queue.max_wait; it may time out unserved",
            runbook="Check that the engine is making progress (gatekeeper status: the running"
            " job's elapsed vs its ETA) and that CPU/memory do not hold dispatch. See"
            " docs/runbook.md, Long queue waits.",
        ),
    )


@dataclass(frozen=True)
class Alerts:
    evaluation_interval: float = 5.0
    resend_interval: float = 60.0
    # ``instance`` label and the URL receivers link back to; None = derived at start
    # from the host name and the admin listener.
    instance: str | None = None
    external_url: str | None = None
    # A log receiver only: the default config works without any Alertmanager.
    receivers: tuple[Receiver, ...] = (Receiver(name="log", type="log"),)
    rules: tuple[AlertRule, ...] = field(default_factory=default_alert_rules)


_EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The only template constructs gatekeeper renders itself; Prometheus renders them the
# same way, so a rule reads the same in both (see alerts.render).
_TEMPLATE = re.compile(r"\{\{(.*?)\}\}")
_TEMPLATE_OK = re.compile(
    r"^\s*(\$value(\s*\|\s*(humanize|humanizeDuration))?|\$labels\.[A-Za-z_][A-Za-z0-9_]*)\s*$"
)


def parse_expr(text: object) -> tuple[str, str, float] | str:
    """``"cpu_percent > 90"`` → (signal, op, threshold), or an error text."""
    m = _EXPR.match(text) if isinstance(text, str) else None
    if m is None:
        return "must be '<signal> <op> <number>', e.g. 'cpu_percent > 90'"
    signal, op, number = m.groups()
    if signal not in SIGNALS:
        return f"unknown signal {signal!r}; known: " + ", ".join(SIGNALS)
    try:
        threshold = float(number)
    except ValueError:
        return f"threshold {number!r} is not a number"
    if not math.isfinite(threshold):
        return f"threshold {number!r} must be finite"
    return signal, op, threshold


def _check_annotation(v: Any) -> str | None:
    if not isinstance(v, str) or not v.strip():
        return "must be a non-empty string"
    for m in _TEMPLATE.finditer(v):
        if not _TEMPLATE_OK.match(m.group(1)):
            return (
                f"unsupported template {m.group(0)!r}; allowed: {{{{ $value }}}},"
                " {{ $value | humanize }}, {{ $value | humanizeDuration }}, {{ $labels.<name> }}"
            )
    if "{{" in _TEMPLATE.sub("", v):
        return "unclosed '{{' template"
    return None


def _receivers(node: yaml.Node | None, problems: list[ConfigProblem]) -> tuple[Receiver, ...]:
    if node is None:
        return Alerts().receivers
    if not isinstance(node, yaml.SequenceNode):
        problems.append(
            ConfigProblem("alerts.receivers", line_of(node), "must be a list of receivers")
        )
        return Alerts().receivers
    out: list[Receiver] = []
    names: set[str] = set()
    for i, item in enumerate(node.value):
        sec = Section(item, f"alerts.receivers[{i}]", problems)
        name = sec.get("name", f"receiver{i}", _check_name)
        sec.unique_name(name, names, "receiver")
        kind = sec.string("type", "log", choices=RECEIVER_TYPES)
        if not sec.has("type"):
            sec.problem("type", None, "is required (" + ", ".join(RECEIVER_TYPES) + ")")
        url: str | None = None
        if kind == "log":
            if sec.has("url"):
                sec.problem("url", sec.node_of("url"), "does not apply to a 'log' receiver")
        elif sec.has("url"):
            url_node = sec.node_of("url")
            assert url_node is not None
            url = check_url(
                value_of(url_node), join(sec.path, "url"), line_of(url_node), problems, ""
            )
        else:
            sec.problem("url", None, f"is required for a {kind!r} receiver")
        timeout = sec.duration("timeout", Receiver.timeout)
        sec.close()
        out.append(Receiver(name=name, type=kind, url=url, timeout=timeout))  # type: ignore[arg-type]
    return tuple(out)


def _check_name(v: Any) -> str | None:
    return None if isinstance(v, str) and _NAME.match(v) else "must match [A-Za-z_][A-Za-z0-9_]*"


def _alert_rules(
    node: yaml.Node | None, problems: list[ConfigProblem], read_timeout: float, max_wait: float
) -> tuple[AlertRule, ...]:
    if node is None:
        return default_alert_rules(read_timeout, max_wait)
    if not isinstance(node, yaml.SequenceNode):
        problems.append(ConfigProblem("alerts.rules", line_of(node), "must be a list of rules"))
        return default_alert_rules(read_timeout, max_wait)
    out: list[AlertRule] = []
    names: set[str] = set()
    for i, item in enumerate(node.value):
        sec = Section(item, f"alerts.rules[{i}]", problems)
        alert = sec.get("alert", f"Rule{i}", _check_name)
        if alert in names:
            sec.problem("alert", sec.node_of("alert"), "duplicate alert name", alert)
        names.add(alert)
        expr: tuple[str, str, float] = ("in_flight", ">", math.inf)
        expr_node = sec.node_of("expr")
        if expr_node is not None:
            parsed = parse_expr(value_of(expr_node))
            if isinstance(parsed, str):
                sec.problem("expr", expr_node, parsed, value_of(expr_node))
            else:
                expr = parsed
        for_seconds = sec.duration("for", 0.0, positive=False)
        severity = sec.string("severity", "warning", choices=SEVERITIES)
        summary = sec.get("summary", "", _check_annotation)
        runbook = sec.get("runbook", "", _check_annotation)
        for key in ("alert", "expr", "severity", "summary", "runbook"):
            if not sec.has(key):
                sec.problem(key, None, "is required")
        labels = _rule_labels(sec.section("labels"))
        sec.close()
        out.append(
            AlertRule(
                alert=alert,
                signal=expr[0],
                op=expr[1],
                threshold=expr[2],
                for_seconds=for_seconds,
                severity=severity,
                summary=summary,
                runbook=runbook,
                labels=labels,
            )
        )
    return tuple(out)


def _rule_labels(sec: Section) -> dict[str, str]:
    labels: dict[str, str] = {}
    for key, (key_node, value_node) in sec.items.items():
        sec.used.add(key)
        value = value_of(value_node)
        if not _NAME.match(key) or key.startswith("__"):
            sec.problem(key, key_node, "label names must match [A-Za-z_][A-Za-z0-9_]*", key)
        elif key in RESERVED_LABELS:
            sec.problem(key, key_node, "is set by gatekeeper; use another label name", key)
        elif not isinstance(value, str | int | float) or isinstance(value, bool):
            sec.problem(key, value_node, "label values must be strings", value)
        else:
            labels[key] = str(value)
    sec.close()
    return labels


def read_alerts(
    sec: Section, problems: list[ConfigProblem], read_timeout: float, max_wait: float = 1800.0
) -> Alerts:
    """The ``alerts`` section; ``read_timeout`` and ``max_wait`` (``upstream.timeouts.read``,
    ``admission.queue.max_wait``) set the thresholds of the default rules."""
    d = Alerts()
    external_url = None
    if sec.has("external_url"):
        node = sec.node_of("external_url")
        assert node is not None
        if value_of(node) is not None:
            external_url = check_url(
                value_of(node), join(sec.path, "external_url"), line_of(node), problems, ""
            )
    a = Alerts(
        evaluation_interval=sec.duration("evaluation_interval", d.evaluation_interval),
        resend_interval=sec.duration("resend_interval", d.resend_interval),
        instance=sec.get(
            "instance",
            d.instance,
            lambda v: None if isinstance(v, str) and v else "must be a non-empty string",
            allow_none=True,
        ),
        external_url=external_url,
        receivers=_receivers(sec.node_of("receivers"), problems),
        rules=_alert_rules(sec.node_of("rules"), problems, read_timeout, max_wait),
    )
    sec.close()
    return a
