"""``alerts``: built-in alert rules (issue #4), their receivers and their validation.

``SIGNALS`` names what a rule may test; ``gatekeeper.observability.alerts.inputs``
holds, for each name, its live reader and its PromQL (read by the alert loop, the
rule export and the dashboard), and a test keeps its keys equal to ``SIGNALS``.
The default receiver and the nine default rules are the packaged rules.yaml's.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Literal

import yaml

from gatekeeper.config.build import read_section
from gatekeeper.config.declare import JSON, checked, custom, declared, duration, string
from gatekeeper.config.reader import Context, Section, join, value_of
from gatekeeper.config.shipped import read_shipped
from gatekeeper.config.values import URL_SCHEMA, to_url, url_error

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
    "state_free_bytes",
    "webhook_failing_seconds",
    "state_db_detached",
    "box_heartbeat_age_seconds",
)
OPERATORS: tuple[str, ...] = (">", ">=", "<", "<=", "==", "!=")
SEVERITIES: tuple[str, ...] = ("critical", "warning", "info")
RECEIVER_TYPES: tuple[str, ...] = ("alertmanager", "webhook", "log")
# Set by gatekeeper on every alert; a rule's own labels may not override them.
RESERVED_LABELS = frozenset({"alertname", "severity", "instance", "service"})


_EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The only template constructs gatekeeper renders itself; Prometheus renders them the
# same way, so a rule reads the same in both (see gatekeeper.observability.alerts.rules).
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


def _check_name(v: Any) -> str | None:
    return None if isinstance(v, str) and _NAME.match(v) else "must match [A-Za-z_][A-Za-z0-9_]*"


_NAME_SCHEMA: JSON = {"type": "string", "pattern": _NAME.pattern}
_ANNOTATION_SCHEMA: JSON = {"type": "string", "pattern": "\\S"}


def _receiver_url(
    sec: Section, key: str, default: Any, ctx: Context, done: dict[str, Any]
) -> str | None:
    """Required for alertmanager and webhook receivers; an error for a log receiver."""
    kind = done["type"]
    node = sec.node_of(key)
    if kind == "log":
        if node is not None:
            sec.problem(key, node, "does not apply to a 'log' receiver")
        return None
    if node is None:
        sec.problem(key, None, f"is required for a {kind!r} receiver")
        return None
    value = value_of(node)
    error = url_error(value)
    if error is not None:
        sec.problem(key, node, error, value)
        return ""
    return to_url(value)


@declared
class Receiver:
    name: str = checked("Unique receiver name.", _check_name, _NAME_SCHEMA, required="is required")
    type: Literal["alertmanager", "webhook", "log"] = string(
        "alertmanager (POST <url>/api/v2/alerts), webhook (POST <url> with the Alertmanager"
        " webhook JSON, version 4) or log (one structured log line per change).",
        choices=RECEIVER_TYPES,
        required="is required (" + ", ".join(RECEIVER_TYPES) + ")",
    )
    url: str | None = custom(
        "alertmanager and webhook only.", read=_receiver_url, schema=URL_SCHEMA, default=None
    )
    timeout: float = duration("Per request.", default=10.0)


def _expr(
    sec: Section, key: str, default: Any, ctx: Context, done: Any
) -> tuple[str, str, float] | None:
    node = sec.node_of(key)
    if node is None:
        return None
    parsed = parse_expr(value_of(node))
    if isinstance(parsed, str):
        sec.problem(key, node, parsed, value_of(node))
        return None
    return parsed


def _labels(parent: Section, key: str, default: Any, ctx: Context, done: Any) -> dict[str, str]:
    return _rule_labels(parent.section(key))


@declared
class AlertRule:
    alert: str = checked(
        "The alert's name (alertname).", _check_name, _NAME_SCHEMA, required="is required"
    )
    signal: str = custom(
        "'<signal> <op> <number>', op one of > >= < <= == !=, e.g. 'cpu_percent > 90'.",
        read=_expr,
        schema={
            "type": "string",
            "pattern": "^\\s*(" + "|".join(SIGNALS) + ")\\s*(>=|<=|==|!=|>|<)\\s*\\S+\\s*$",
        },
        yaml="expr",
        spread=("signal", "op", "threshold"),
        required="is required",
    )
    op: str
    threshold: float
    for_seconds: float = duration(
        "How long the condition must hold before the alert fires (0s: at once; default 0s).",
        positive=False,
        yaml="for",
    )
    severity: str = string("critical, warning or info.", choices=SEVERITIES, required="is required")
    summary: str = checked(
        "Annotation; may use {{ $value }}, {{ $value | humanize }},"
        " {{ $value | humanizeDuration }} and {{ $labels.<name> }}.",
        _check_annotation,
        _ANNOTATION_SCHEMA,
        required="is required",
    )
    runbook: str = checked(
        "Annotation: what to do; same templates as summary.",
        _check_annotation,
        _ANNOTATION_SCHEMA,
        required="is required",
    )
    labels: Mapping[str, str] = custom(
        "Extra labels, e.g. {team: music}.",
        read=_labels,
        schema={
            "type": ["object", "null"],
            "propertyNames": {
                "pattern": "^(?!__)" + _NAME.pattern[1:],
                "not": {"enum": sorted(RESERVED_LABELS)},
            },
            "additionalProperties": {"type": ["string", "number"]},
        },
        factory=dict,
    )

    @property
    def expr(self) -> str:
        return f"{self.signal} {self.op} {self.threshold:g}"


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


def _items(
    what: str, shape: type, default: Callable[[int], Any], name: str
) -> Callable[[yaml.Node, str, Context], tuple[Any, ...]]:
    """A list of ``shape`` (receivers, rules), each read by its declaration; ``name``
    is the key that must be unique among them."""

    def read(node: yaml.Node, path: str, ctx: Context) -> tuple[Any, ...]:
        out = []
        names: set[str] = set()
        for i, item in enumerate(node.value):
            sec = Section(item, join(path, i), ctx.problems)
            obj = read_section(shape, sec, ctx, default(i))
            value = getattr(obj, name)
            if sec.has(name) and value in names:
                sec.problem(name, sec.node_of(name), f"duplicate {what} name", value)
            names.add(value)
            out.append(obj)
        return tuple(out)

    return read


_read_receivers = _items(
    "receiver", Receiver, lambda i: Receiver(name=f"receiver{i}", type="log"), "name"
)
_read_rules = _items(
    "alert",
    AlertRule,
    lambda i: AlertRule(f"Rule{i}", "in_flight", ">", math.inf, 0.0, "warning", "", ""),
    "alert",
)


def _receivers(
    parent: Section, key: str, default: tuple[Receiver, ...] | None, ctx: Context, done: Any
) -> tuple[Receiver, ...]:
    node = parent.node_of(key)
    if node is not None and not isinstance(node, yaml.SequenceNode):
        parent.problem(key, node, "must be a list of receivers")
    if not isinstance(node, yaml.SequenceNode):
        assert default is not None
        return default
    return _read_receivers(node, join(parent.path, key), ctx)


# Default rules whose threshold follows another key: GenerationStuck follows
# ``upstream.timeouts.read``, QueueWaitLong half of ``admission.queue.max_wait``,
# StateDiskLow ``jobs.min_free_bytes`` (it fires while new jobs are refused storage_full),
# BoxHeartbeatStale ``jobs.lease`` (issue #21: a box silent that long has its running
# jobs taken over by the others).
_FOLLOWS: dict[str, Callable[[float, float, float, float], float]] = {
    "GatekeeperGenerationStuck": lambda read_timeout, max_wait, min_free, lease: read_timeout,
    "GatekeeperQueueWaitLong": lambda read_timeout, max_wait, min_free, lease: max_wait / 2,
    "GatekeeperStateDiskLow": lambda read_timeout, max_wait, min_free, lease: min_free,
    "GatekeeperBoxHeartbeatStale": lambda read_timeout, max_wait, min_free, lease: lease,
}
# ``jobs.lease`` when the rules do not declare it (the shipped rule's threshold).
LEASE_DEFAULT = 30.0


@functools.cache
def _shipped_receivers() -> tuple[Receiver, ...]:
    return read_shipped("alerts.receivers", _receivers)  # type: ignore[no-any-return]


@functools.cache
def _shipped_rules() -> tuple[AlertRule, ...]:
    def read(parent: Section, key: str, default: Any, ctx: Context, done: Any) -> Any:
        node = parent.node_of(key)
        assert isinstance(node, yaml.SequenceNode), "gatekeeper/rules.yaml: alerts.rules"
        return _read_rules(node, join(parent.path, key), ctx)

    return read_shipped("alerts.rules", read)  # type: ignore[no-any-return]


def default_alert_rules(
    read_timeout: float = 900.0,
    max_wait: float = 1800.0,
    min_free: float = 512 * 1024**2,
    lease: float = LEASE_DEFAULT,
) -> tuple[AlertRule, ...]:
    """The rules shipped in rules.yaml, with the thresholds that follow other keys."""
    return tuple(
        replace(rule, threshold=_FOLLOWS[rule.alert](read_timeout, max_wait, min_free, lease))
        if rule.alert in _FOLLOWS
        else rule
        for rule in _shipped_rules()
    )


def _rules(
    parent: Section, key: str, default: Any, ctx: Context, done: Any
) -> tuple[AlertRule, ...]:
    node = parent.node_of(key)
    if isinstance(node, yaml.SequenceNode):
        return _read_rules(node, join(parent.path, key), ctx)
    if node is not None:
        parent.problem(key, node, "must be a list of rules")
    return default_alert_rules(
        ctx.values.get("upstream.timeouts.read", 900.0),
        ctx.values.get("admission.queue.max_wait", 1800.0),
        ctx.values.get("jobs.min_free_bytes", 512 * 1024**2),
        ctx.values.get("jobs.lease", LEASE_DEFAULT),
    )


@declared
class Alerts:
    evaluation_interval: float = duration("How often every rule is evaluated.", default=5.0)
    resend_interval: float = duration(
        "Firing alerts are re-sent to alertmanager receivers this often (Alertmanager forgets"
        " alerts that are not re-sent); webhook and log receivers get changes only.",
        default=60.0,
    )
    instance: str | None = checked(
        "The instance label of every alert. null: <hostname>:<admin port>, derived at start.",
        lambda v: None if isinstance(v, str) and v else "must be a non-empty string",
        {"type": "string", "minLength": 1},
        allow_none=True,
        default=None,
    )
    external_url: str | None = checked(
        "Where receivers link back to (generatorURL, externalURL). null: the admin listener.",
        url_error,
        URL_SCHEMA,
        allow_none=True,
        convert=to_url,
        default=None,
    )
    receivers: tuple[Receiver, ...] = custom(
        doc="Where alerts go; a receiver that is down is retried with backoff.",
        read=_receivers,
        schema={"type": "array"},
        shape=Receiver,
        factory=lambda: _shipped_receivers(),
    )
    rules: tuple[AlertRule, ...] = custom(
        doc="The rules; a list replaces the defaults entirely, [] disables the built-in alerts.",
        read=_rules,
        schema={"type": "array"},
        shape=AlertRule,
        factory=default_alert_rules,
    )
