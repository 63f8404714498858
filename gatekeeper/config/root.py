"""The whole rules file: ``Config``, the small top-level sections, and loading.

``load_config`` composes the YAML (keeping line numbers) and reads ``Config``
by its declared keys (``build.read_section``); the check of ``Config`` relates
keys of different sections; one ``ConfigError`` lists every problem. What is
valid but probably not meant (an empty file) becomes a warning on the returned
``Config``, printed by ``gatekeeper check`` and the startup log.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from gatekeeper.config.admission import Admission
from gatekeeper.config.alerts import Alerts
from gatekeeper.config.build import read_section, section_check
from gatekeeper.config.crosschecks import (
    batch_needs_jobs,
    gradio_needs_one_engine,
    webhook_routes_exist,
)
from gatekeeper.config.declare import boolean, checked, custom, declared, duration, section
from gatekeeper.config.errors import ConfigError, ConfigProblem
from gatekeeper.config.jobs import Jobs, check_dir
from gatekeeper.config.limits import Limits
from gatekeeper.config.logs import Log
from gatekeeper.config.messages import (
    DEFAULT_MESSAGES,
    MESSAGE_FIELDS,
    MESSAGES_SCHEMA,
    read_messages,
)
from gatekeeper.config.reader import Context, Section, value_of
from gatekeeper.config.routes import DEFAULT_ROUTES, Route, read_routes
from gatekeeper.config.upstream import Upstream
from gatekeeper.config.values import (
    HOSTPORT_SCHEMA,
    PATH_GLOB_SCHEMA,
    HostPort,
    check_path_glob,
    check_url,
    hostport_error,
    parse_hostport,
    to_hostport,
)


@declared
class Shutdown:
    drain_timeout: float = duration(
        "On SIGTERM/SIGINT, how long to wait for running generations before exiting."
        " Default: upstream.timeouts.read, the longest a generation may run.",
        positive=False,
        default=900.0,
    )
    drain_log_interval: float = duration(
        "How often the drain logs what it waits for.", default=10.0
    )
    linger: float = duration(
        "After the last awaited generation ends, keep serving pass routes this long so the"
        " client can fetch its result (e.g. GET /result/{id}) before the listener closes.",
        positive=False,
        default=5.0,
    )


@declared
class Reload:
    watch: bool = boolean(
        "Also reload when the file changes on disk (SIGHUP and POST /reload always work).",
        default=False,
    )
    watch_interval: float = duration(
        "How often the file is checked when watch is true.", default=2.0
    )


_BOX_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


def check_box_id(v: Any) -> str | None:
    # Lower case, digits and '-': it is a DNS label (a pod name), an HAProxy server name
    # and the part of a job id before the '.', so it must never contain one.
    if not isinstance(v, str) or _BOX_ID.fullmatch(v) is None:
        return "must be 1-32 characters of [a-z0-9-], starting with a letter or digit"
    return None


def _check_jobs_path(v: Any) -> str | None:
    # Compared as-is with the request's normalised path (like status_path), so it must
    # already be in normal form; a glob would make "<jobs_path>/<id>" meaningless.
    if not isinstance(v, str) or not v.startswith("/") or v == "/":
        return "must be a path starting with '/', e.g. /_gatekeeper/jobs"
    segments = v[1:].split("/")
    if any(s in ("", ".", "..") for s in segments) or any(c in v for c in "*?#;%"):
        return (
            "must be a plain path (no '*', '?', '#', ';', '%', no empty, '.' or '..'"
            " segments, no trailing '/')"
        )
    return None


def _drain_default(ctx: Context) -> Shutdown:
    return Shutdown(drain_timeout=ctx.values.get("upstream.timeouts.read", 900.0))


def _listener(default: HostPort | None, doc: str, **kw: Any) -> Any:
    return checked(doc, hostport_error, HOSTPORT_SCHEMA, convert=to_hostport, **kw, default=default)


@declared
class Config:
    listen: HostPort = _listener(
        HostPort("0.0.0.0", 8080),
        "Public listener: point the existing frontend here instead of at the engine.",
    )
    admin_listen: HostPort = _listener(
        HostPort("127.0.0.1", 9090),
        "Admin listener (health, readiness, metrics, status). Keep it off the public network.",
    )
    agent_listen: HostPort | None = _listener(
        None,
        "HAProxy's agent-check port (issue #11 §2): one line per connection, drain | maint |"
        " ready N%, from free slots, resources and draining. null: not served.",
        allow_none=True,
    )
    box_id: str | None = checked(
        "This box's name behind HAProxy: job ids become '<box_id>.<token>' so HAProxy can"
        " route a job URL back to the box that holds the job. null: plain ids.",
        check_box_id,
        {"type": "string", "pattern": "^" + _BOX_ID.pattern + "$"},
        allow_none=True,
        default=None,
    )
    upstream: Upstream = section("The engine(s), the pools, the probe.", factory=Upstream)
    limits: Limits = section("What one client may cost the edge.", factory=Limits)
    admission: Admission = section(
        "Generations at once, resource thresholds, Retry-After, the waiting room.",
        factory=Admission,
    )
    routes: tuple[Route, ...] = custom(
        "Ordered; the first match wins; unmatched requests pass.",
        read=read_routes,
        schema={"type": "array"},
        shape=Route,
        default=DEFAULT_ROUTES,
    )
    messages: Mapping[str, str] = custom(
        doc="Human messages in the JSON detail of gatekeeper's own answers, by reason code.",
        read=read_messages,
        schema=MESSAGES_SCHEMA,
        factory=lambda: dict(DEFAULT_MESSAGES),
    )
    status_path: str | None = checked(
        "The status JSON on the public listener (same-origin polling). null: disabled.",
        check_path_glob,
        PATH_GLOB_SCHEMA,
        allow_none=True,
        default="/_gatekeeper/status",
    )
    jobs_path: str | None = checked(
        "Async jobs on the public listener: <jobs_path>/<id>[/events|/result]. null: no async"
        " jobs there (Prefer: respond-async is ignored and the request is held).",
        _check_jobs_path,
        {"type": "string", "pattern": "^/[^*?#;%]+$"},
        allow_none=True,
        default="/_gatekeeper/jobs",
    )
    jobs: Jobs = section("Where queued jobs, their bodies and kept results live.", factory=Jobs)
    shutdown: Shutdown = section(
        "The drain on SIGTERM.", default_from=_drain_default, factory=Shutdown
    )
    reload: Reload = section("Reloading the rules without a restart.", factory=Reload)
    alerts: Alerts = section("Built-in alerts, their receivers and rules.", factory=Alerts)
    log: Log = section("What the log writes: refusal lines under a flood.", factory=Log)
    # Where the config came from, for reloads and messages; not a YAML key.
    source: str = "<defaults>"
    # Valid but probably not meant (e.g. an empty file); not a YAML key.
    warnings: tuple[str, ...] = ()

    def with_overrides(
        self,
        *,
        upstream: str | None = None,
        listen: str | None = None,
        admin_listen: str | None = None,
        state_dir: str | None = None,
        agent_listen: str | None = None,
        box_id: str | None = None,
    ) -> Config:
        """Apply command-line overrides, validated like the file; raises ConfigError.

        ``state_dir`` (``--state-dir``) sets ``jobs.dir``, made absolute against the
        working directory (a flag is read where it was typed, not next to the file).
        """
        problems: list[ConfigProblem] = []
        cfg = self
        if upstream is not None and cfg.upstream.listed:
            problems.append(
                ConfigProblem(
                    "--upstream",
                    None,
                    "cannot replace upstream.engines (the file lists several engines);"
                    " edit the file instead",
                    upstream,
                    True,
                )
            )
        elif upstream is not None:
            url = check_url(upstream, "--upstream", None, problems, cfg.upstream.url)
            (only,) = cfg.upstream.engines
            engines = (replace(only, url=url),)
            cfg = replace(cfg, upstream=replace(cfg.upstream, url=url, engines=engines))
        if listen is not None:
            hp = parse_hostport(listen, "--listen", None, problems)
            cfg = replace(cfg, listen=hp or cfg.listen)
        if admin_listen is not None:
            hp = parse_hostport(admin_listen, "--admin-listen", None, problems)
            cfg = replace(cfg, admin_listen=hp or cfg.admin_listen)
        if agent_listen is not None:
            hp = parse_hostport(agent_listen, "--agent-listen", None, problems)
            cfg = replace(cfg, agent_listen=hp or cfg.agent_listen)
        if box_id is not None:
            error = check_box_id(box_id)
            if error is not None:
                problems.append(ConfigProblem("--box-id", None, error, box_id, True))
            else:
                cfg = replace(cfg, box_id=box_id)
        if not problems:
            _distinct_listeners(cfg, "--agent-listen", problems)
        if state_dir is not None:
            error = check_dir(state_dir)
            if error is not None:
                problems.append(ConfigProblem("--state-dir", None, error, state_dir, True))
            else:
                directory = os.path.abspath(os.path.expanduser(state_dir))
                cfg = replace(cfg, jobs=replace(cfg.jobs, dir=directory))
        if problems:
            raise ConfigError(problems, source="command line")
        return cfg

    def message(self, reason: str, **fields: Any) -> str:
        template = self.messages.get(reason) or DEFAULT_MESSAGES.get(reason, reason)
        values = {k: fields.get(k, 0) for k in MESSAGE_FIELDS}
        if isinstance(values["max_wait"], float):
            values["max_wait"] = round(values["max_wait"])  # "waited 1800 s", not "1800.0 s"
        try:
            return template.format(**values)
        except (ValueError, KeyError, IndexError):  # validated at load; belt and braces
            return template


def load_config_file(path: str | Path) -> Config:
    """Read and validate a rules file; raises ConfigError (also for unreadable files)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([ConfigProblem("", None, f"cannot read file: {reason}")], str(p)) from exc
    return load_config(text, source=str(p))


def load_config(text: str, source: str = "<string>") -> Config:
    """Parse and validate rules text; raises ConfigError listing every problem."""
    stream = io.StringIO(text)
    stream.name = source  # PyYAML names the stream in its error marks
    try:
        root = yaml.compose(stream, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        text_ = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
        if mark is not None:
            text_ += f" at column {mark.column + 1}"
        raise ConfigError([ConfigProblem("", line, text_)], source) from exc
    problems: list[ConfigProblem] = []
    if root is None:
        warning = "the file has no settings: every key has its default value"
        return Config(source=source, warnings=(warning,))
    ctx = Context(problems)
    cfg = read_section(Config, Section(root, "", problems), ctx)
    if problems:
        raise ConfigError(problems, source)
    return replace(cfg, source=source)


def _distinct_listeners(cfg: Config, key: str, problems: list[ConfigProblem]) -> None:
    agent = cfg.agent_listen
    if agent is not None and agent.port != 0 and agent in (cfg.listen, cfg.admin_listen):
        problems.append(
            ConfigProblem(key, None, "must differ from listen and admin_listen", str(agent), True)
        )


def _slots(up: Upstream, adm: Admission, sec: Section | None) -> tuple[Upstream, Admission]:
    """One engine: its slots are ``admission.max_in_flight``. Several: each has its own
    and ``admission.max_in_flight`` is their sum (issue #11 §1)."""
    if not up.listed:
        (only,) = up.engines
        return replace(up, engines=(replace(only, max_in_flight=adm.max_in_flight),)), adm
    total = sum(e.max_in_flight for e in up.engines)
    node = sec.node_of("max_in_flight") if sec is not None else None
    if sec is not None and node is not None:
        sec.problem(
            "max_in_flight",
            node,
            "cannot be set with upstream.engines: each engine has its own"
            f" (upstream.engines[].max_in_flight), and the total is their sum ({total})",
            value_of(node),
        )
    return up, replace(adm, max_in_flight=total)


@section_check(Config)
def _check(cfg: Config, root: Section, ctx: Context) -> Config:
    """What relates keys of different sections: distinct listeners and paths, the slots
    of several engines, a gradio route on one engine."""
    listen, admin_listen, agent = cfg.listen, cfg.admin_listen, cfg.agent_listen
    if listen == admin_listen and listen.port != 0:
        root.problem(
            "admin_listen", root.node_of("admin_listen"), "must differ from listen", str(listen)
        )
    if agent is not None and agent.port != 0 and agent in (listen, admin_listen):
        root.problem(
            "agent_listen",
            root.node_of("agent_listen"),
            "must differ from listen and admin_listen",
            str(agent),
        )
    if cfg.jobs_path is not None and cfg.jobs_path == cfg.status_path:
        root.problem(
            "jobs_path",
            root.node_of("jobs_path") or root.node_of("status_path"),
            "must differ from status_path",
            cfg.jobs_path,
        )
    upstream, admission = _slots(cfg.upstream, cfg.admission, ctx.sections.get("admission"))
    cfg = replace(cfg, upstream=upstream, admission=admission)
    gradio_needs_one_engine(cfg, root.node_of("routes"), ctx.problems)
    webhook_routes_exist(cfg, ctx)
    batch_needs_jobs(cfg, root.node_of("routes"), ctx.problems)
    return cfg
