"""Route matching: (method, path) → the first configured route that matches.

Pure: no aiohttp, no I/O. Paths are matched segment by segment:

- a literal segment matches itself;
- ``*`` inside a segment matches any run of characters *within* that segment
  (``/files/*.wav`` matches ``/files/a.wav`` but not ``/files/x/a.wav``);
- a whole ``**`` segment matches zero or more segments (``/files/**``).

Unmatched requests pass (the proxy's job is to be transparent by default), so
``match`` returns the built-in ``PASS_ROUTE`` rather than None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .config import Route

PASS_ROUTE = Route(name="default", path="/**", action="pass")


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


@dataclass(frozen=True)
class CompiledRoute:
    route: Route
    regex: re.Pattern[str]

    def matches(self, method: str, path: str) -> bool:
        methods = self.route.methods
        if methods is not None and method not in methods:
            return False
        return self.regex.match(path) is not None


class Router:
    """Ordered routes; first match wins."""

    def __init__(self, routes: tuple[Route, ...]):
        self._compiled = tuple(CompiledRoute(r, compile_glob(r.path)) for r in routes)

    def match(self, method: str, path: str) -> Route:
        for c in self._compiled:
            if c.matches(method, path):
                return c.route
        return PASS_ROUTE
