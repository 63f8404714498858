"""Checks across sections of the rules, run once every section is read (``root._check``).

Each takes the whole ``Config`` and appends a ``ConfigProblem`` (YAML path, line,
value) for a combination no single section can judge alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import yaml

from gatekeeper.config.errors import ConfigProblem
from gatekeeper.config.reader import Context, line_of

if TYPE_CHECKING:
    from gatekeeper.config.root import Config


def webhook_routes_exist(cfg: Config, ctx: Context) -> None:
    """``jobs.webhooks.destinations[].routes`` name queue routes of this file."""
    queue = {r.name for r in cfg.routes if r.action == "queue"}
    sec = ctx.sections.get("jobs.webhooks")
    for i, d in enumerate(cfg.jobs.webhooks.destinations):
        bad = [n for n in d.routes or () if n not in queue]
        if bad:
            ctx.problems.append(
                ConfigProblem(
                    f"jobs.webhooks.destinations[{i}].routes",
                    sec.line if sec is not None else None,
                    f"names no queue route: {bad} (queue routes: {sorted(queue)})",
                    list(d.routes or ()),
                    True,
                )
            )


def batch_needs_jobs(cfg: Config, routes: yaml.Node | None, problems: list[ConfigProblem]) -> None:
    """A batch route's items are async jobs, read back under ``jobs_path`` (issue #20 §3)."""
    if cfg.jobs_path is not None or not isinstance(routes, yaml.SequenceNode):
        return
    for i, route in enumerate(cfg.routes):
        if route.action == "batch" and i < len(routes.value):
            problems.append(
                ConfigProblem(
                    f"routes[{i}].action",
                    line_of(routes.value[i]),
                    "batch needs jobs_path (its items are async jobs read back there)",
                    route.action,
                    True,
                )
            )


def gradio_needs_one_engine(
    cfg: Config, routes: yaml.Node | None, problems: list[ConfigProblem]
) -> None:
    """A Gradio session lives on one engine: its uploads, its queue/data stream and its
    heartbeat all name state that engine holds. gatekeeper does not pin sessions to
    engines, so a gradio route takes one engine; several Gradio engines are several
    boxes behind HAProxy (with a sticky session), each with its own gatekeeper."""
    if len(cfg.upstream.engines) < 2 or not isinstance(routes, yaml.SequenceNode):
        return
    for i, route in enumerate(cfg.routes):
        if route.action == "gradio" and i < len(routes.value):
            problems.append(
                ConfigProblem(
                    f"routes[{i}].action",
                    line_of(routes.value[i]),
                    "gradio needs exactly one engine (a Gradio session's uploads and streams"
                    " live on one engine); list one engine, or run one gatekeeper per engine"
                    " behind HAProxy (README: several boxes)",
                    route.action,
                    True,
                )
            )
