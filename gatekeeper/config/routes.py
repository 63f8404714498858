"""``routes``: ordered (method, path glob) -> action rules; the first match wins.

Actions: ``admit`` (a generation: takes a slot now or is refused), ``queue`` (a
generation that waits its turn in the waiting room when no slot is free, or runs
as an async job), ``pass`` (forwarded ungated), ``block`` (answered by gatekeeper),
``gradio`` (a whole Gradio app: its queue joins for the functions named by
``match.fn_index`` / ``match.api_name``, all when neither is given, take a slot
from the join to the event's completion; everything else passes; see
``gatekeeper.gradio.wire``, ``gatekeeper.gradio.route``), ``batch`` (the engine's
batch body cut into one async job per item, each submitted to a queue route:
``batch:``, ``config.batch``; issue #20 §3). ``admit`` and ``queue``
are the *gated* actions: both
count against ``admission.max_in_flight`` and the resource checks.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import yaml

from gatekeeper.config.batch import BatchSpec
from gatekeeper.config.build import read_section, section_check
from gatekeeper.config.declare import JSON, checked, declared, section, string
from gatekeeper.config.reader import Context, Section, join
from gatekeeper.config.shipped import read_shipped
from gatekeeper.config.values import PATH_GLOB_SCHEMA, check_path_glob, compile_glob

Action = Literal["admit", "queue", "pass", "block", "gradio", "batch"]
ACTIONS: tuple[Action, ...] = ("admit", "queue", "pass", "block", "gradio", "batch")
# What a gradio route does with a direct call (/run/<api>, /api/<api>) of a gated
# function: refuse it (it would run outside Gradio's queue), or admit it like an
# admit route (the slot is held for the call's duration).
DirectCalls = Literal["block", "admit"]
# The actions whose requests take an admission slot (issue #9: queue is admit that waits).
GATED_ACTIONS: frozenset[Action] = frozenset({"admit", "queue"})
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
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


def _frozen_upper(v: list[str] | None) -> frozenset[str] | None:
    return frozenset(m.upper() for m in v) if v else None


def _frozen(v: list[Any] | None) -> frozenset[Any] | None:
    return frozenset(v) if v else None


def _api_names(v: list[str] | None) -> frozenset[str] | None:
    return frozenset(n.strip("/") for n in v) if v else None


# Any case, as the loader upper-cases them; spelled out per letter because ECMA-262
# regexes (the schema's dialect) have no inline (?i) flag.
_METHODS_PATTERN = (
    "^(" + "|".join("".join(f"[{c}{c.lower()}]" for c in m) for m in sorted(HTTP_METHODS)) + ")$"
)


def _list_of(item: JSON) -> JSON:
    return {"type": ["array", "null"], "minItems": 1, "items": item}


@declared
class Route:
    name: str = string(
        "Unique name: the route label of the metrics and logs.", required="is required"
    )
    path: str = checked(
        "Exact path, or a glob: * matches within one segment, ** across segments"
        " (/files/**). Matched after normalisation.",
        check_path_glob,
        PATH_GLOB_SCHEMA,
        under="match",
        required="is required",
    )
    action: Action = string(
        "admit (takes a slot now or is refused), queue (waits its turn), pass (forwarded"
        " ungated), block (answered by gatekeeper), gradio (a whole Gradio app), batch"
        " (the engine's batch body cut into one queued job per item: see batch).",
        choices=ACTIONS,
        required="is required (admit, queue, pass, block, gradio or batch)",
    )
    methods: frozenset[str] | None = checked(
        "Methods matched; absent: all.",
        _check_methods,
        _list_of({"type": "string", "pattern": _METHODS_PATTERN}),
        allow_none=True,
        convert=_frozen_upper,
        under="match",
        default=None,
    )
    status: int | None = checked(
        "block only: the status answered (default 403).",
        _check_status,
        {"type": "integer", "minimum": 200, "maximum": 599},
        allow_none=True,
        default=None,
    )
    detail: str | None = checked(
        "block only: the JSON detail answered.",
        lambda v: None if isinstance(v, str) else "must be a string",
        {"type": "string"},
        allow_none=True,
        default=None,
    )
    fn_index: frozenset[int] | None = checked(
        "gradio only: the gated functions by index (with api_name: either; neither: every"
        " function that goes through the app's queue).",
        _check_fn_index,
        _list_of({"type": "integer", "minimum": 0}),
        allow_none=True,
        convert=_frozen,
        under="match",
        default=None,
    )
    api_name: frozenset[str] | None = checked(
        "gradio only: the gated functions by api name, e.g. [generate_song].",
        _check_api_name,
        _list_of({"type": "string", "pattern": "[^/]"}),
        allow_none=True,
        convert=_api_names,
        under="match",
        default=None,
    )
    direct_calls: DirectCalls = string(
        "gradio only: /run/<api> and /api/<api> of a gated function run outside Gradio's"
        " queue: block answers 403, admit gates them like an admit route.",
        choices=("block", "admit"),
        default="block",
    )
    batch: BatchSpec = section(
        "batch only (and required there): how the batch body becomes jobs (items, each,"
        " shared, max_items, per_client, max_bytes; docs/batch.md).",
        factory=BatchSpec,
    )

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
        if self.action == "batch":
            items = self.batch.items or "''"
            extra = f" (items {items} -> POST {self.batch.each} each,"
            extra += f" at most {self.batch.max_items})"
        return f"{self.name}: {methods} {self.path} {self.action}{extra}"


@section_check(Route)
def _check_route(route: Route, sec: Section, ctx: Context) -> Route:
    """Keys of one action only: reported when given to another, dropped from the route."""
    action = route.action
    match = ctx.sections[join(sec.path, "match")]
    if action != "gradio":
        for key in ("fn_index", "api_name"):
            if match.has(key):
                match.problem(
                    key, match.node_of(key), f"only applies to action 'gradio', not {action!r}"
                )
        if sec.has("direct_calls"):
            sec.problem(
                "direct_calls",
                sec.node_of("direct_calls"),
                f"only applies to action 'gradio', not {action!r}",
            )
        route = replace(route, fn_index=None, api_name=None)
    if action != "block":
        for key in ("status", "detail"):
            if sec.has(key):
                sec.problem(
                    key, sec.node_of(key), f"only applies to action 'block', not {action!r}"
                )
        route = replace(route, status=None, detail=None)
    if action != "batch" and sec.has("batch"):
        sec.problem(
            "batch", sec.node_of("batch"), f"only applies to action 'batch', not {action!r}"
        )
    if action == "batch":
        batch = ctx.sections.get(join(sec.path, "batch"))
        if batch is None or not sec.has("batch"):
            sec.problem("batch", None, "is required for action 'batch' (items, each)")
        elif not batch.has("each"):
            batch.problem(
                "each", None, "is required: the path of the queue route each item goes to"
            )
    return route


def first_route(routes: tuple[Route, ...], method: str, path: str) -> Route | None:
    """The first of ``routes`` matching ``method path`` (a path in normal form), as
    ``core.routes.Router`` matches; None: none (the request would pass)."""
    for r in routes:
        if (r.methods is None or method in r.methods) and compile_glob(r.path).match(path):
            return r
    return None


def _check_batch_targets(routes: tuple[Route, ...], secs: list[Section], ctx: Context) -> None:
    """A batch route's ``each`` is the path of a queue route: an item must wait its turn
    like any job (issue #20 §3), never pass to the engine or be refused as a block."""
    for route, sec in zip(routes, secs, strict=True):
        batch = ctx.sections.get(join(sec.path, "batch"))
        if route.action != "batch" or batch is None or not batch.has("each"):
            continue
        target = first_route(routes, "POST", route.batch.each)
        if target is None or target.action != "queue":
            what = (
                "no route (it would pass)"
                if target is None
                else (f"route {target.name!r} (action {target.action})")
            )
            batch.problem(
                "each",
                batch.node_of("each"),
                f"must be the path of a queue route; POST {route.batch.each} matches {what}",
                route.batch.each,
            )


def read_routes(
    parent: Section, key: str, default: tuple[Route, ...] | None, ctx: Context, done: Any
) -> tuple[Route, ...]:
    node = parent.node_of(key)
    if node is None and default is not None:
        return default
    if not isinstance(node, yaml.SequenceNode):
        parent.problem(key, node, "must be a list of routes")
        return DEFAULT_ROUTES
    routes: list[Route] = []
    secs: list[Section] = []
    names: set[str] = set()
    for i, item in enumerate(node.value):
        sec = Section(item, f"{join(parent.path, key)}[{i}]", ctx.problems)
        route = read_section(Route, sec, ctx, Route(f"route{i}", "/**", "pass"))
        if sec.has("name") and route.name in names:
            sec.problem("name", sec.node_of("name"), "duplicate route name", route.name)
        names.add(route.name)
        routes.append(route)
        secs.append(sec)
    _check_batch_targets(tuple(routes), secs, ctx)
    return tuple(routes)


# The packaged rules.yaml's routes: /generate/** queued (it also matches /generate
# itself: the engine's /generate/stream starts the same generation, issue #8) and
# /batch-generate/** a batch route whose items are jobs of /generate (issue #20 §3).
DEFAULT_ROUTES: tuple[Route, ...] = read_shipped("routes", read_routes)
