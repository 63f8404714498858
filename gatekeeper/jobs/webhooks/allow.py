"""Which URL a request may name as its own webhook: the allowlist match. PURE.

A request-chosen URL is the classic server-side request forgery: the match is
made on the parsed URL, never on its text, so none of these pass a prefix
``https://hooks.example.com/gk/``:

- ``https://hooks.example.com.evil.net/gk/`` (another host), ``http://...`` (another
  scheme), ``https://hooks.example.com:8443/gk/`` (another port: an absent port is
  the scheme's default, so ``:443`` matches);
- ``https://hooks.example.com@evil.net/gk/`` or ``https://u:p@hooks.example.com/gk/``
  (userinfo: refused outright);
- ``https://hooks.example.com/gkx`` (the path prefix ends at a ``/`` boundary),
  ``https://hooks.example.com/gk/../admin`` (dot segments and percent-encoded
  slashes are refused, not resolved);
- anything with a fragment, a backslash, whitespace or a control character.

The host is compared case-insensitively; the path case-sensitively.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["Parsed", "allowed", "parse"]

_DEFAULT_PORT = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Parsed:
    scheme: str
    host: str
    port: int
    path: str


def parse(url: str) -> Parsed | str:
    """The parts an allowlist compares, or why ``url`` is refused (a ``str``)."""
    if not url or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F or c == "\\" for c in url):
        return "must be an absolute http(s) URL without spaces, control characters or '\\'"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a valid URL"
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORT or not parts.hostname:
        return "must be an absolute http:// or https:// URL"
    if "@" in parts.netloc:
        return "must not carry a user or password"
    if parts.fragment or "#" in url:
        return "must not have a fragment"
    path = parts.path or "/"
    lowered = path.lower()
    if "%2f" in lowered or "%5c" in lowered or "%2e" in lowered:
        return "must not encode '/', '\\' or '.' in its path"
    if any(seg in (".", "..") for seg in path.split("/")):
        return "must not have '.' or '..' path segments"
    host = parts.hostname.lower().rstrip(".")
    return Parsed(scheme, host, port if port is not None else _DEFAULT_PORT[scheme], path)


def allowed(url: str, prefixes: tuple[str, ...]) -> bool:
    """Does ``url`` fall under one of ``prefixes`` (module text)?"""
    target = parse(url)
    if isinstance(target, str):
        return False
    for prefix in prefixes:
        p = parse(prefix)
        if isinstance(p, str):
            continue
        if (p.scheme, p.host, p.port) != (target.scheme, target.host, target.port):
            continue
        base = p.path if p.path.endswith("/") else p.path + "/"
        if target.path == p.path or target.path.startswith(base):
            return True
    return False
