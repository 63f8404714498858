"""``messages``: the human text of gatekeeper's own answers, by reason code."""

from __future__ import annotations

import string
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from gatekeeper.config.reader import Context, Section
from gatekeeper.config.shipped import shipped_value

# Reason codes answered to clients (issue #2); messages are keyed by them.
REASONS: tuple[str, ...] = (
    "busy",
    "engine_down",
    "cpu",
    "memory",
    # Opt-in signals of a real engine box (issue #11 §3).
    "cpu_pressure",
    "memory_pressure",
    "io_pressure",
    "gpu_memory",
    "gpu_utilization",
    "blocked",
    "draining",
    "upstream_unavailable",
    "upstream_timeout",
    "upstream_busy",
    # The waiting room of queue routes (issue #9).
    "queue_full",
    "queue_timeout",
    "client_limit",
    # limits.max_spooled_bytes: the bodies being uploaded fill the spool budget (issue #18).
    "spool_full",
    # The state directory (issue #18 §1): below jobs.min_free_bytes; a failed read or write.
    "storage_full",
    "storage_error",
    # The shared job store (jobs.store: postgres) does not answer (issue #21).
    "store_unavailable",
)
# Placeholders a message may use; anything else is a config error, not a KeyError at 3 a.m.
# Every message may use every field (a field that does not apply renders as 0);
# max_wait is rendered as whole seconds.
MESSAGE_FIELDS = frozenset(
    {
        "retry_after",
        "in_flight",
        "max_in_flight",
        "cpu_percent",
        "memory_percent",
        "cpu_pressure",
        "memory_pressure",
        "io_pressure",
        "gpu_memory_percent",
        "gpu_utilization_percent",
        "route",
        "waiting",
        "max_waiting",
        "per_client",
        "max_wait",
        "position",
    }
)

# The seed's users read Chinese; the English half serves everyone else. The texts
# are the packaged rules.yaml's (one source); every reason has one.
DEFAULT_MESSAGES: Mapping[str, str] = MappingProxyType(
    {reason: str(shipped_value(f"messages.{reason}")) for reason in REASONS}
)


def check_message(v: Any) -> str | None:
    if not isinstance(v, str) or not v:
        return "must be a non-empty string"
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(v) if name is not None}
    except ValueError as exc:
        return f"invalid format string: {exc}"
    unknown = {n.split(".")[0].split("[")[0] for n in names} - MESSAGE_FIELDS
    if "" in unknown or unknown:
        return (
            "unknown placeholder(s) {"
            + "}, {".join(sorted(unknown))
            + "}; allowed: "
            + ", ".join(sorted(MESSAGE_FIELDS))
        )
    return None


def read_messages(
    parent: Section, key: str, default: Mapping[str, str] | None, ctx: Context, done: Any
) -> dict[str, str]:
    """``messages``: a text per reason code; a reason left out keeps its default."""
    sec = parent.section(key)
    messages = dict(DEFAULT_MESSAGES if default is None else default)
    for reason in REASONS:
        messages[reason] = sec.get(reason, messages[reason], check_message)
    for reason, (key_node, _) in sec.items.items():
        if reason not in REASONS:
            sec.problem(reason, key_node, "unknown reason code; known: " + ", ".join(REASONS))
            sec.used.add(reason)
    sec.close()
    return messages


# The JSON Schema of ``messages``: a format string per reason code, no other key.
MESSAGES_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "properties": {reason: {"type": "string", "minLength": 1} for reason in REASONS},
    "additionalProperties": False,
}
