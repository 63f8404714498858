"""PromQL pieces shared by the panel queries: the instance filter and regex literals."""

from __future__ import annotations

SEL = 'instance=~"$instance"'

_RE2_SPECIAL = set(r"\.+*?()|[]{}^$")


def promql_regex_literal(text: str) -> str:
    """``text`` as an exact-match RE2 regex, escaped for a PromQL double-quoted string."""
    escaped = "".join("\\" + c if c in _RE2_SPECIAL else c for c in text)
    return escaped.replace("\\", "\\\\").replace('"', '\\"')


def sel(*matchers: str) -> str:
    return "{" + ",".join((SEL, *matchers)) + "}"
