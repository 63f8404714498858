"""Route matching: (method, path) → the first configured route that matches.

Pure: no aiohttp, no I/O. Paths are matched segment by segment:

- a literal segment matches itself;
- ``*`` inside a segment matches any run of characters *within* that segment
  (``/files/*.wav`` matches ``/files/a.wav`` but not ``/files/x/a.wav``);
- a whole ``**`` segment matches zero or more segments (``/files/**``).

Unmatched requests pass (the proxy's job is to be transparent by default), so
``match`` returns the built-in ``PASS_ROUTE`` rather than None.

Normalisation (issue #8). Routes are matched against ``normalize_path`` of the
request's percent-decoded path, never against the raw bytes, so that spellings
an engine (or something in front of it) may treat as the same resource cannot
walk around a gated route: ``//generate``, ``/generate/``, ``/./generate``,
``/x/../generate``, ``/generate;v=1`` and ``/%67enerate`` all match
``/generate``. The rule, in order: percent-decode once (aiohttp already has),
strip ``;params`` from every segment, drop empty and ``.`` segments, let ``..``
remove the previous segment (never above the root), join with single slashes
without a trailing one. Case is never changed (paths are case-sensitive). The
request is still *forwarded* byte for byte as the client sent it: only the
decision uses the normal form, and it errs on the side of gating.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gatekeeper.config import Route
from gatekeeper.config.values import compile_glob

PASS_ROUTE = Route(name="default", path="/**", action="pass")


@dataclass(frozen=True)
class CompiledRoute:
    route: Route
    regex: re.Pattern[str]

    def matches(self, method: str, path: str) -> bool:
        methods = self.route.methods
        if methods is not None and method not in methods:
            return False
        return self.regex.match(path) is not None


def normalize_path(path: str) -> str:
    """The form of a (percent-decoded) path that routes are matched against."""
    if "//" not in path and "/." not in path and ";" not in path and not path.endswith("/"):
        return path  # the common case, without allocating
    out: list[str] = []
    for segment in path.split("/"):
        segment = segment.split(";", 1)[0]
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    return "/" + "/".join(out)


class Router:
    """Ordered routes; first match wins. ``match`` normalises the path first."""

    def __init__(self, routes: tuple[Route, ...]):
        self._compiled = tuple(CompiledRoute(r, compile_glob(r.path)) for r in routes)

    def match(self, method: str, path: str) -> Route:
        path = normalize_path(path)
        for c in self._compiled:
            if c.matches(method, path):
                return c.route
        return PASS_ROUTE


# Methods tried when an admit route names none (any method is gated then).
_LINT_METHODS = ("POST", "PUT", "PATCH", "GET")


def lint(routes: tuple[Route, ...]) -> list[str]:
    """Warnings about gated routes a client can walk around (``gatekeeper check``).

    Decidable case: a gated (``admit`` or ``queue``) or ``batch`` route whose path is
    literal (no ``*``) gates exactly that path; if ``<path>/<anything>`` then passes
    unadmitted, an engine endpoint such as ``/generate/stream`` would start work past
    the gate.
    """
    router = Router(routes)
    warnings: list[str] = []
    for i, route in enumerate(routes):
        if not (route.gated or route.action == "batch") or "*" in route.path:
            continue
        for method in sorted(route.methods) if route.methods else _LINT_METHODS:
            if router.match(method, route.path) is not route:
                continue  # shadowed by an earlier route for this method
            below = router.match(method, route.path.rstrip("/") + "/x")
            if below.action == "pass":
                base = route.path.rstrip("/")
                warnings.append(
                    f"routes[{i}] ({route.name}): {method} {route.path} is gated but"
                    f" {method} {base}/<anything> passes unadmitted (route {below.name!r});"
                    f" if the engine has endpoints under it (e.g. {base}/stream), use"
                    f" path: {base}/**"
                )
                break
    return warnings
