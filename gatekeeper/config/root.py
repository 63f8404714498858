"""The whole rules file: ``Config``, the small top-level sections, and loading.

``load_config`` composes the YAML (keeping line numbers), hands each section to
its own module's reader, and raises one ``ConfigError`` listing every problem.
What is valid but probably not meant (an empty file) becomes a warning on the
returned ``Config``, printed by ``gatekeeper check`` and the startup log.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from gatekeeper.config.admission import Admission, read_admission
from gatekeeper.config.alerts import Alerts, read_alerts
from gatekeeper.config.jobs import Jobs, check_dir, read_jobs
from gatekeeper.config.limits import Limits, read_limits
from gatekeeper.config.messages import DEFAULT_MESSAGES, MESSAGE_FIELDS, read_messages
from gatekeeper.config.reader import Section, line_of, value_of
from gatekeeper.config.routes import DEFAULT_ROUTES, Route, read_routes
from gatekeeper.config.upstream import Upstream, read_upstream
from gatekeeper.config.values import HostPort, check_path_glob, check_url, parse_hostport
from gatekeeper.core.errors import ConfigError, ConfigProblem


@dataclass(frozen=True)
class Shutdown:
    drain_timeout: float = 900.0
    drain_log_interval: float = 10.0
    # After the last awaited generation ends, keep serving pass routes this long so the
    # client can fetch its result (e.g. GET /result/{id}) before the listener closes.
    linger: float = 5.0


@dataclass(frozen=True)
class Reload:
    watch: bool = False
    watch_interval: float = 2.0


@dataclass(frozen=True)
class Config:
    listen: HostPort = HostPort("0.0.0.0", 8080)  # noqa: RUF009 - frozen
    admin_listen: HostPort = HostPort("127.0.0.1", 9090)  # noqa: RUF009 - frozen
    # HAProxy's agent-check protocol (issue #11 §2, gatekeeper.agent); None: not served.
    agent_listen: HostPort | None = None
    # This box's name behind HAProxy: job ids become "<box_id>.<token>" so HAProxy can
    # route a job URL back to the box that holds the job. None: plain tokens.
    box_id: str | None = None
    upstream: Upstream = field(default_factory=Upstream)
    limits: Limits = field(default_factory=Limits)
    admission: Admission = field(default_factory=Admission)
    routes: tuple[Route, ...] = DEFAULT_ROUTES
    messages: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_MESSAGES))
    status_path: str | None = "/_gatekeeper/status"
    # Async jobs on the public listener: <jobs_path>/<id>[/events|/result]. None: no async
    # jobs there (Prefer: respond-async is ignored and the request is held).
    jobs_path: str | None = "/_gatekeeper/jobs"
    jobs: Jobs = field(default_factory=Jobs)
    shutdown: Shutdown = field(default_factory=Shutdown)
    reload: Reload = field(default_factory=Reload)
    alerts: Alerts = field(default_factory=Alerts)
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
    cfg = _build(Section(root, "", problems), problems)
    if problems:
        raise ConfigError(problems, source)
    return replace(cfg, source=source)


_BOX_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


def check_box_id(v: Any) -> str | None:
    # Lower case, digits and '-': it is a DNS label (a pod name), an HAProxy server name
    # and the part of a job id before the '.', so it must never contain one.
    if not isinstance(v, str) or _BOX_ID.fullmatch(v) is None:
        return "must be 1-32 characters of [a-z0-9-], starting with a letter or digit"
    return None


def _distinct_listeners(cfg: Config, key: str, problems: list[ConfigProblem]) -> None:
    agent = cfg.agent_listen
    if agent is not None and agent.port != 0 and agent in (cfg.listen, cfg.admin_listen):
        problems.append(
            ConfigProblem(key, None, "must differ from listen and admin_listen", str(agent), True)
        )


def _agent_listen(root: Section, problems: list[ConfigProblem]) -> HostPort | None:
    node = root.node_of("agent_listen")
    if node is None or value_of(node) is None:
        return None
    return parse_hostport(value_of(node), "agent_listen", line_of(node), problems)


def _listeners(root: Section, problems: list[ConfigProblem]) -> tuple[HostPort, HostPort]:
    d = Config()
    found = {"listen": d.listen, "admin_listen": d.admin_listen}
    for key in found:
        node = root.node_of(key)
        if node is not None:
            hp = parse_hostport(value_of(node), key, line_of(node), problems)
            if hp is not None:
                found[key] = hp
    listen, admin_listen = found["listen"], found["admin_listen"]
    if listen == admin_listen and listen.port != 0:
        root.problem(
            "admin_listen", root.node_of("admin_listen"), "must differ from listen", str(listen)
        )
    return listen, admin_listen


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


def _paths(root: Section) -> tuple[str | None, str | None]:
    d = Config()
    status_path = root.get("status_path", d.status_path, check_path_glob, allow_none=True)
    jobs_path = root.get("jobs_path", d.jobs_path, _check_jobs_path, allow_none=True)
    if jobs_path is not None and jobs_path == status_path:
        root.problem(
            "jobs_path",
            root.node_of("jobs_path") or root.node_of("status_path"),
            "must differ from status_path",
            jobs_path,
        )
    return status_path, jobs_path


def _slots(up: Upstream, adm: Admission, sec: Section) -> tuple[Upstream, Admission]:
    """One engine: its slots are ``admission.max_in_flight``. Several: each has its own
    and ``admission.max_in_flight`` is their sum (issue #11 §1)."""
    if not up.listed:
        (only,) = up.engines
        return replace(up, engines=(replace(only, max_in_flight=adm.max_in_flight),)), adm
    total = sum(e.max_in_flight for e in up.engines)
    node = sec.node_of("max_in_flight")
    if node is not None:
        sec.problem(
            "max_in_flight",
            node,
            "cannot be set with upstream.engines: each engine has its own"
            f" (upstream.engines[].max_in_flight), and the total is their sum ({total})",
            value_of(node),
        )
    return up, replace(adm, max_in_flight=total)


def _build(root: Section, problems: list[ConfigProblem]) -> Config:
    d = Config()
    listen, admin_listen = _listeners(root, problems)
    agent_listen = _agent_listen(root, problems)
    if (
        agent_listen is not None
        and agent_listen.port != 0
        and agent_listen in (listen, admin_listen)
    ):
        root.problem(
            "agent_listen",
            root.node_of("agent_listen"),
            "must differ from listen and admin_listen",
            str(agent_listen),
        )
    box_id = root.get("box_id", d.box_id, check_box_id, allow_none=True)
    upstream = read_upstream(root.section("upstream"), problems)
    sd = root.section("shutdown")
    shutdown = Shutdown(
        # Default: as long as the upstream read timeout, i.e. the longest a generation may run.
        drain_timeout=sd.duration("drain_timeout", upstream.timeouts.read, positive=False),
        drain_log_interval=sd.duration("drain_log_interval", d.shutdown.drain_log_interval),
        linger=sd.duration("linger", d.shutdown.linger, positive=False),
    )
    sd.close()
    rl = root.section("reload")
    reload = Reload(
        watch=rl.boolean("watch", d.reload.watch),
        watch_interval=rl.duration("watch_interval", d.reload.watch_interval),
    )
    rl.close()
    status_path, jobs_path = _paths(root)
    admission_sec = root.section("admission")
    admission = read_admission(admission_sec)
    upstream, admission = _slots(upstream, admission, admission_sec)
    cfg = Config(
        listen=listen,
        admin_listen=admin_listen,
        agent_listen=agent_listen,
        box_id=box_id,
        upstream=upstream,
        limits=read_limits(root.section("limits")),
        admission=admission,
        routes=read_routes(root.node_of("routes"), problems),
        messages=read_messages(root.section("messages")),
        status_path=status_path,
        jobs_path=jobs_path,
        jobs=read_jobs(root.section("jobs")),
        shutdown=shutdown,
        reload=reload,
        alerts=read_alerts(
            root.section("alerts"),
            problems,
            upstream.timeouts.read,
            max_wait=admission.queue.max_wait,
        ),
    )
    _gradio_needs_one_engine(cfg, root.node_of("routes"), problems)
    root.close()
    return cfg


def _gradio_needs_one_engine(
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
