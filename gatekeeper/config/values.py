"""Parsers and checks for single values: durations, HOST:PORT, URLs, path globs.

Each check returns an error text (or None), so ``reader.Section`` can record
it with the YAML path and line; nothing here knows about YAML. Each kind of
value also has its JSON Schema here, next to the check it mirrors.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gatekeeper.config.errors import ConfigProblem

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_HOSTPORT = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[A-Za-z0-9.\-_]*)):(?P<port>\d+)$")

# JSON Schema of each kind of value (draft 2020-12; patterns are ECMA-262 regexes).
DURATION_PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$"
# The same, without a zero ("0", "0s", "0.0ms"): a duration that must be > 0.
POSITIVE_DURATION_PATTERN = (
    r"^\s*(?!0*(?:\.0*)?\s*(?:ms|s|m|h)?\s*$)(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$"
)
# _HOSTPORT without its group names (Python spells them (?P<n>, ECMA-262 (?<n>).
HOSTPORT_SCHEMA = {"type": "string", "pattern": r"^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-_]*):\d+$"}
URL_SCHEMA = {"type": "string", "pattern": "^https?://[^/?#\\s]+[^?#]*$"}
PATH_GLOB_SCHEMA = {"type": "string", "pattern": "^/"}


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_duration(value: object) -> float | None:
    """``30``, ``2.5``, ``"500ms"``, ``"30s"``, ``"2m"``, ``"1h"`` → seconds; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNIT[m.group(2)]
    return None


def hostport_error(value: object) -> str | None:
    m = _HOSTPORT.match(value) if isinstance(value, str) else None
    if m is None or not 0 <= int(m.group("port")) <= 65535:
        return "must be HOST:PORT, e.g. 127.0.0.1:8080"
    return None


def to_hostport(value: str) -> HostPort:
    """``HOST:PORT`` (already checked by ``hostport_error``); an empty host is 0.0.0.0."""
    m = _HOSTPORT.match(value)
    assert m is not None
    return HostPort(m.group("v6") or m.group("host") or "0.0.0.0", int(m.group("port")))


def parse_hostport(
    value: object, path: str, line: int | None, problems: list[ConfigProblem]
) -> HostPort | None:
    error = hostport_error(value)
    if error is not None:
        problems.append(ConfigProblem(path, line, error, value, True))
        return None
    assert isinstance(value, str)
    return to_hostport(value)


def url_error(value: object) -> str | None:
    """An http(s) URL with a host and no query/fragment."""
    ok = False
    if isinstance(value, str):
        parts = urlsplit(value)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        ok = ok and not parts.query and not parts.fragment
        try:
            parts.port  # noqa: B018 - raises ValueError for a port outside 0-65535
        except ValueError:
            ok = False
    return None if ok else "must be an http:// or https:// URL with a host"


def to_url(value: str) -> str:
    """A checked URL without its trailing '/' (``<url>/api/v2/alerts`` is then one '/')."""
    return value.rstrip("/")


def check_url(
    value: object, path: str, line: int | None, problems: list[ConfigProblem], default: str
) -> str:
    error = url_error(value)
    if error is not None:
        problems.append(ConfigProblem(path, line, error, value, True))
        return default
    assert isinstance(value, str)
    return to_url(value)


def check_path_glob(v: Any) -> str | None:
    if not isinstance(v, str) or not v.startswith("/"):
        return "must be a path starting with '/'"
    for segment in v.split("/"):
        if "**" in segment and segment != "**":
            return "'**' must be a whole path segment, e.g. /files/**"
    return None


# Shared with ``core.routes`` (the router): config checks a batch route's ``each``
# against the routes with the same matching (``routes.first_route``).
def compile_glob(pattern: str) -> re.Pattern[str]:
    """Translate a path glob into an anchored regex."""
    out: list[str] = []
    segments = pattern.split("/")[1:]  # patterns start with '/'
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "**":
            # Zero or more whole segments; '/a/**' also matches '/a' and '/a/'.
            out.append("(?:/.*)?" if last else "(?:/[^/]*)*?")
            continue
        out.append("/" + "[^/]*".join(re.escape(part) for part in seg.split("*")))
    return re.compile("".join(out) + r"\Z")
