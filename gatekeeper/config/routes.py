"""``routes``: ordered (method, path glob) -> action rules; the first match wins.

Actions: ``admit`` (a generation: takes a slot now or is refused), ``queue`` (a
generation that waits its turn in the waiting room when no slot is free, or runs
as an async job), ``pass`` (forwarded ungated), ``block`` (answered by gatekeeper),
``gradio`` (a whole Gradio app: its queue joins for the functions named by
``match.fn_index`` / ``match.api_name``, all when neither is given, take a slot
from the join to the event's completion; everything else passes; see
gradiowire / gradioroute). ``admit`` and ``queue`` are the *gated* actions: both
count against ``admission.max_in_flight`` and the resource checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import yaml

from gatekeeper.config.reader import Section, line_of
from gatekeeper.config.values import check_path_glob
from gatekeeper.core.errors import ConfigProblem

Action = Literal["admit", "queue", "pass", "block", "gradio"]
ACTIONS: tuple[Action, ...] = ("admit", "queue", "pass", "block", "gradio")
# What a gradio route does with a direct call (/run/<api>, /api/<api>) of a gated
# function: refuse it (it would run outside Gradio's queue), or admit it like an
# admit route (the slot is held for the call's duration).
DirectCalls = Literal["block", "admit"]
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
    # action gradio only: which functions are gated (neither: all), direct calls.
    fn_index: frozenset[int] | None = None
    api_name: frozenset[str] | None = None
    direct_calls: DirectCalls = "block"

    @property
    def generates(self) -> bool:
        """True when some requests of this route take a slot (admit, queue, gradio)."""
        return self.action in GATED_ACTIONS or self.action == "gradio"

    @property
    def gated(self) -> bool:
        """True for ``admit`` and ``queue``: the request takes an admission slot."""
        return self.action in GATED_ACTIONS

    def summary(self) -> str:
        """One line for people: ``name: METHODS path action [-> status]``."""
        methods = ",".join(sorted(self.methods)) if self.methods else "*"
        extra = f" -> {self.status or 403}" if self.action == "block" else ""
        if self.action == "gradio":
            fns = [*(str(i) for i in sorted(self.fn_index or ())), *sorted(self.api_name or ())]
            extra = f" (gated: {', '.join(fns) if fns else 'every queued function'};"
            extra += f" direct calls {self.direct_calls})"
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


def _check_fn_index(v: Any) -> str | None:
    ok = isinstance(v, list) and v
    if ok and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v):
        return None
    return "must be a non-empty list of function indexes (integers >= 0)"


def _check_api_name(v: Any) -> str | None:
    if isinstance(v, list) and v and all(isinstance(n, str) and n.strip("/") for n in v):
        return None
    return "must be a non-empty list of Gradio api names (e.g. [generate_song])"


def _route(sec: Section, i: int, names: set[str]) -> Route:
    name = sec.string("name", f"route{i}")
    sec.unique_name(name, names, "route")
    action = sec.string("action", "pass", choices=ACTIONS)
    if not sec.has("action"):
        sec.problem("action", None, "is required (admit, queue, pass, block or gradio)")
    match = sec.section("match")
    path = match.get("path", "/**", check_path_glob)
    if not match.has("path"):
        match.problem("path", None, "is required")
    methods = match.get("methods", None, _check_methods, allow_none=True)
    fn_index = match.get("fn_index", None, _check_fn_index, allow_none=True)
    api_name = match.get("api_name", None, _check_api_name, allow_none=True)
    if action != "gradio":
        for key in ("fn_index", "api_name"):
            if match.has(key):
                match.problem(
                    key, match.node_of(key), f"only applies to action 'gradio', not {action!r}"
                )
    match.close()
    direct_calls = sec.string("direct_calls", "block", choices=("block", "admit"))
    if action != "gradio" and sec.has("direct_calls"):
        sec.problem(
            "direct_calls",
            sec.node_of("direct_calls"),
            f"only applies to action 'gradio', not {action!r}",
        )
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
        fn_index=frozenset(fn_index) if fn_index and action == "gradio" else None,
        api_name=(
            frozenset(n.strip("/") for n in api_name) if api_name and action == "gradio" else None
        ),
        direct_calls=direct_calls,  # type: ignore[arg-type]
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
