"""``routes``: ordered (method, path glob) -> action rules; the first match wins.

Actions: ``admit`` (a generation: takes a slot now or is refused), ``queue`` (a
generation that waits its turn in the waiting room when no slot is free, or runs
as an async job), ``pass`` (forwarded ungated), ``block`` (answered by gatekeeper).
``admit`` and ``queue`` are the *gated* actions: both count against
``admission.max_in_flight`` and the resource checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import yaml

from ..errors import ConfigProblem
from .reader import Section, line_of
from .values import check_path_glob

Action = Literal["admit", "queue", "pass", "block"]
ACTIONS: tuple[Action, ...] = ("admit", "queue", "pass", "block")
# The actions whose requests take an admission slot (issue #9: queue is admit that waits).
GATED_ACTIONS: frozenset[Action] = frozenset({"admit", "queue"})
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)


@dataclass(frozen=True)
class Route:
    name: str
    path: str
    action: Action
    methods: frozenset[str] | None = None
    status: int | None = None
    detail: str | None = None

    @property
    def gated(self) -> bool:
        """True for ``admit`` and ``queue``: the request takes an admission slot."""
        return self.action in GATED_ACTIONS

    def summary(self) -> str:
        """One line for people: ``name: METHODS path action [-> status]``."""
        methods = ",".join(sorted(self.methods)) if self.methods else "*"
        extra = f" -> {self.status or 403}" if self.action == "block" else ""
        return f"{self.name}: {methods} {self.path} {self.action}{extra}"


DEFAULT_ROUTES: tuple[Route, ...] = (
    # /generate/** also matches /generate itself: the engine's /generate/stream starts
    # the same generation and must not pass around the gate (issue #8).
    # queue (issue #9): a second user waits its turn instead of getting 503 busy.
    Route(name="generate", path="/generate/**", action="queue", methods=frozenset({"POST"})),
    Route(
        name="batch-generate",
        path="/batch-generate/**",
        action="block",
        methods=frozenset({"POST"}),
        status=410,
        detail="批量生成已停用：每首歌需要 5–15 分钟并占满整台机器，请逐首生成。"
        " / Batch generation is disabled: one song takes 5-15 minutes and the whole machine;"
        " generate songs one at a time.",
    ),
)


def _check_methods(v: Any) -> str | None:
    if not isinstance(v, list) or not v or not all(isinstance(m, str) for m in v):
        return "must be a non-empty list of HTTP methods"
    bad = [m for m in v if m.upper() not in HTTP_METHODS]
    if bad:
        return f"unknown HTTP method(s) {bad}"
    return None


def _check_status(v: Any) -> str | None:
    if isinstance(v, int) and not isinstance(v, bool) and 200 <= v <= 599:
        return None
    return "must be an HTTP status 200-599"


def _route(sec: Section, i: int, names: set[str]) -> Route:
    name = sec.string("name", f"route{i}")
    sec.unique_name(name, names, "route")
    action = sec.string("action", "pass", choices=ACTIONS)
    if not sec.has("action"):
        sec.problem("action", None, "is required (admit, queue, pass or block)")
    match = sec.section("match")
    path = match.get("path", "/**", check_path_glob)
    if not match.has("path"):
        match.problem("path", None, "is required")
    methods = match.get("methods", None, _check_methods, allow_none=True)
    match.close()
    status = sec.get("status", None, _check_status, allow_none=True)
    detail = sec.get(
        "detail",
        None,
        lambda v: None if isinstance(v, str) else "must be a string",
        allow_none=True,
    )
    if action != "block":
        for key in ("status", "detail"):
            if sec.has(key):
                sec.problem(
                    key, sec.node_of(key), f"only applies to action 'block', not {action!r}"
                )
    sec.close()
    return Route(
        name=name,
        path=path,
        action=action,  # type: ignore[arg-type]
        methods=frozenset(m.upper() for m in methods) if methods else None,
        status=status if action == "block" else None,
        detail=detail if action == "block" else None,
    )


def read_routes(node: yaml.Node | None, problems: list[ConfigProblem]) -> tuple[Route, ...]:
    if node is None:
        return DEFAULT_ROUTES
    if not isinstance(node, yaml.SequenceNode):
        problems.append(ConfigProblem("routes", line_of(node), "must be a list of routes"))
        return DEFAULT_ROUTES
    names: set[str] = set()
    return tuple(
        _route(Section(item, f"routes[{i}]", problems), i, names)
        for i, item in enumerate(node.value)
    )
