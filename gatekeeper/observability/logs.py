"""Logging: one formatter for gatekeeper's own lines and the per-request access line.

``--log-format text`` (default) writes ``key=value`` pairs a person can scan;
``--log-format json`` writes one JSON object per line for a log pipeline.
A record's structured fields travel in ``extra={"fields": {...}}``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aiohttp.http_exceptions import HttpProcessingError

ACCESS = logging.getLogger("gatekeeper.access")


def redact_url(url: str) -> str:
    """``url`` with its userinfo (``user:password@``, or a bare token) masked: the startup
    log and reload summaries must not leak credentials (issue #5 §3)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def _fmt_value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    s = str(v)
    return f'"{s}"' if (" " in s or "=" in s or not s) else s


def _pairs(fields: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key=value`` pairs; a nested mapping's keys are dotted (``reasons.busy.refused=8``)."""
    out: list[str] = []
    for k, v in fields.items():
        if isinstance(v, Mapping):
            out += _pairs(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}={_fmt_value(v)}")
    return out


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        ts += f".{int(record.msecs):03d}"
        line = f"{ts} {record.levelname:<7} {record.name} {record.getMessage()}"
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(_pairs(fields))
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class MalformedRequests(logging.Filter):
    """aiohttp logs every unparsable request (smuggling shapes, oversized heads, garbage)
    as ``Error handling request`` with a traceback at ERROR. That is a client's mistake
    answered with 400, not ours: one INFO line without a traceback, so a hostile client
    can neither flood the log with tracebacks nor page anyone."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            reason = str(exc.message).strip().splitlines()[0] if exc.message else type(exc).__name__
            record.msg = "malformed request from %s refused with %d: %s"
            record.args = (_peer(record), exc.code, reason)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True


def _peer(record: logging.LogRecord) -> str:
    args = record.args if isinstance(record.args, tuple) else ()
    return str(args[0]) if args else "?"


def setup_logging(fmt: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequests) for f in server.filters):
        server.addFilter(MalformedRequests())
    # aiohttp's own access log would duplicate ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # httpx logs every probe request at INFO: noise every few seconds, forever.
    logging.getLogger("httpx").setLevel(logging.WARNING)
