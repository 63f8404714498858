"""Parsers and checks for single values: durations, HOST:PORT, URLs, path globs.

Each check returns an error text (or None), so ``reader.Section`` can record
it with the YAML path and line; nothing here knows about YAML.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gatekeeper.core.errors import ConfigProblem

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_HOSTPORT = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[A-Za-z0-9.\-_]*)):(?P<port>\d+)$")


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


def parse_hostport(
    value: object, path: str, line: int | None, problems: list[ConfigProblem]
) -> HostPort | None:
    m = _HOSTPORT.match(value) if isinstance(value, str) else None
    if m is None or not 0 <= int(m.group("port")) <= 65535:
        problems.append(
            ConfigProblem(path, line, "must be HOST:PORT, e.g. 127.0.0.1:8080", value, True)
        )
        return None
    host = m.group("v6") or m.group("host") or "0.0.0.0"
    return HostPort(host, int(m.group("port")))


def check_url(
    value: object, path: str, line: int | None, problems: list[ConfigProblem], default: str
) -> str:
    """An http(s) URL with a host and no query/fragment, without its trailing '/'."""
    ok = False
    if isinstance(value, str):
        parts = urlsplit(value)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        ok = ok and not parts.query and not parts.fragment
        try:
            parts.port  # noqa: B018 - raises ValueError for a port outside 0-65535
        except ValueError:
            ok = False
    if not ok:
        problems.append(
            ConfigProblem(path, line, "must be an http:// or https:// URL with a host", value, True)
        )
        return default
    assert isinstance(value, str)
    return value.rstrip("/")


def check_path_glob(v: Any) -> str | None:
    if not isinstance(v, str) or not v.startswith("/"):
        return "must be a path starting with '/'"
    for segment in v.split("/"):
        if "**" in segment and segment != "**":
            return "'**' must be a whole path segment, e.g. /files/**"
    return None
