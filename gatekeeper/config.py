"""rules.yaml: the schema, its defaults, and validation with YAML line numbers.

The config is a tree of frozen dataclasses, built once from text (or a file)
and never mutated: a reload builds a new ``Config`` and swaps one reference.

Validation collects *every* problem before failing, each naming its YAML path,
its line and the bad value, because an operator fixing a file at 3 a.m. should
not play whack-a-mole. Unknown keys are errors: a typo such as ``reject_abve``
must never silently leave a threshold at its default.

Usage::

    cfg = load_config(text, source="rules.yaml")   # raises ConfigError
    cfg.admission.max_in_flight
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml

from .errors import ConfigError, ConfigProblem

Action = Literal["admit", "pass", "block"]
ACTIONS: tuple[Action, ...] = ("admit", "pass", "block")
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)

# Reason codes answered to clients (issue #2); messages are keyed by them.
REASONS: tuple[str, ...] = (
    "busy",
    "cpu",
    "memory",
    "blocked",
    "draining",
    "upstream_unavailable",
    "upstream_timeout",
    "upstream_busy",
)
# Placeholders a message may use; anything else is a config error, not a KeyError at 3 a.m.
MESSAGE_FIELDS = frozenset(
    {"retry_after", "in_flight", "max_in_flight", "cpu_percent", "memory_percent", "route"}
)

# The seed's users read Chinese; the English half serves everyone else.
DEFAULT_MESSAGES: Mapping[str, str] = {
    "busy": "引擎正在生成另一首歌曲（每首约 5–15 分钟），请约 {retry_after} 秒后再试。"
    " / The engine is busy generating another song; please retry in about {retry_after} s.",
    "cpu": "服务器 CPU 负载过高（{cpu_percent:.0f}%），暂不接受新的生成任务，"
    "请约 {retry_after} 秒后再试。"
    " / The server CPU is overloaded ({cpu_percent:.0f}%); please retry in about {retry_after} s.",
    "memory": "服务器内存不足（已用 {memory_percent:.0f}%），暂不接受新的生成任务，"
    "请约 {retry_after} 秒后再试。"
    " / The server is low on memory ({memory_percent:.0f}% used);"
    " please retry in about {retry_after} s.",
    "blocked": "该接口已停用。 / This endpoint is disabled.",
    "draining": "服务正在重启，暂不接受新的生成任务，请约 {retry_after} 秒后再试。"
    " / The service is restarting and accepts no new generations;"
    " please retry in about {retry_after} s.",
    "upstream_unavailable": "音乐生成引擎暂时无法连接，请稍后再试。"
    " / The music engine cannot be reached; please try again later.",
    "upstream_timeout": "音乐生成引擎响应超时。 / The music engine did not answer in time.",
    "upstream_busy": "音乐生成引擎连接繁忙，请稍后再试。"
    " / All connections to the music engine are busy; please try again shortly.",
}


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Timeouts:
    """The seed's httpx.Timeout, mapped onto aiohttp by ``upstream.py``."""

    connect: float = 30.0  # establishing a TCP connection
    read: float = 900.0  # between two bytes from the upstream (the 15-minute job)
    write: float = 30.0  # one chunk of the request body accepted by the upstream
    pool: float = 10.0  # waiting for a free connection of the pool


@dataclass(frozen=True)
class PoolLimits:
    """The seed's httpx.Limits."""

    max_connections: int = 2
    max_keepalive_connections: int = 1
    keepalive_expiry: float = 30.0


@dataclass(frozen=True)
class Pool:
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: PoolLimits = field(default_factory=PoolLimits)


PASSTHROUGH_LIMITS = PoolLimits(max_connections=10, max_keepalive_connections=5)


@dataclass(frozen=True)
class Probe:
    path: str = "/"
    interval: float = 5.0
    timeout: float = 3.0


@dataclass(frozen=True)
class Upstream:
    url: str = "http://127.0.0.1:8000"
    # The gated pool (admit routes): the seed's numbers.
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: PoolLimits = field(default_factory=PoolLimits)
    # Pass routes get their own pool so a 15-minute job never starves status polls.
    passthrough: Pool = field(default_factory=lambda: Pool(limits=PASSTHROUGH_LIMITS))
    probe: Probe = field(default_factory=Probe)

    @property
    def gated(self) -> Pool:
        return Pool(timeouts=self.timeouts, limits=self.limits)


@dataclass(frozen=True)
class Threshold:
    reject_above: float
    recover_below: float


@dataclass(frozen=True)
class Resources:
    source: Literal["psutil", "file"] = "psutil"
    file: str | None = None
    cpu_smoothing: float = 0.5
    cpu_percent: Threshold = Threshold(90.0, 75.0)
    memory_percent: Threshold = Threshold(90.0, 80.0)


@dataclass(frozen=True)
class Admission:
    max_in_flight: int = 1
    sample_interval: float = 1.0
    reject_status: int = 503
    retry_after_default: int = 30
    on_client_disconnect: Literal["finish", "cancel"] = "finish"
    expected_seconds: float = 600.0
    resources: Resources = field(default_factory=Resources)


@dataclass(frozen=True)
class BodyLimits:
    max_body_bytes: int = 100 * 1024 * 1024
    # Max gap between two chunks of a request body from the client (nginx's
    # client_body_timeout): a client trickling an upload must not hold the one
    # generation slot while the engine waits for the rest.
    client_body_timeout: float = 60.0
    # Max time one write of the response to the client may take (nginx's send_timeout):
    # a client that stops reading must not hold the slot after the engine is done.
    client_send_timeout: float = 60.0


@dataclass(frozen=True)
class Route:
    name: str
    path: str
    action: Action
    methods: frozenset[str] | None = None
    status: int | None = None
    detail: str | None = None

    def summary(self) -> str:
        """One line for people: ``name: METHODS path action [-> status]``."""
        methods = ",".join(sorted(self.methods)) if self.methods else "*"
        extra = f" -> {self.status or 403}" if self.action == "block" else ""
        return f"{self.name}: {methods} {self.path} {self.action}{extra}"


DEFAULT_ROUTES: tuple[Route, ...] = (
    Route(name="generate", path="/generate", action="admit", methods=frozenset({"POST"})),
    Route(
        name="batch-generate",
        path="/batch-generate",
        action="block",
        methods=frozenset({"POST"}),
        status=410,
        detail="批量生成已停用：每首歌需要 5–15 分钟并占满整台机器，请逐首生成。"
        " / Batch generation is disabled: one song takes 5-15 minutes and the whole machine;"
        " generate songs one at a time.",
    ),
)


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


# --------------------------------------------------------------------------- alerts (issue #4)

# What an alert rule may test. Each is computed from live state by ``alerting.py``
# and translated to PromQL by ``promrules.py``; a test keeps the three in step.
SIGNALS: tuple[str, ...] = (
    "cpu_percent",
    "memory_percent",
    "in_flight",
    "rejections_per_minute",
    "blocked_per_minute",
    "upstream_errors_per_minute",
    "upstream_timeouts_per_hour",
    "upstream_up",
    "generation_elapsed_seconds",
    "config_reload_failed",
)
OPERATORS: tuple[str, ...] = (">", ">=", "<", "<=", "==", "!=")
SEVERITIES: tuple[str, ...] = ("critical", "warning", "info")
RECEIVER_TYPES: tuple[str, ...] = ("alertmanager", "webhook", "log")
# Set by gatekeeper on every alert; a rule's own labels may not override them.
RESERVED_LABELS = frozenset({"alertname", "severity", "instance", "service"})


@dataclass(frozen=True)
class Receiver:
    name: str
    type: Literal["alertmanager", "webhook", "log"]
    url: str | None = None  # not for "log"
    timeout: float = 10.0


@dataclass(frozen=True)
class AlertRule:
    alert: str
    signal: str
    op: str
    threshold: float
    for_seconds: float  # YAML key ``for``
    severity: str
    summary: str
    runbook: str
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def expr(self) -> str:
        return f"{self.signal} {self.op} {self.threshold:g}"


def default_alert_rules(read_timeout: float = 900.0) -> tuple[AlertRule, ...]:
    """The rules shipped in rules.yaml; GenerationStuck follows ``upstream.timeouts.read``."""
    return (
        AlertRule(
            alert="GatekeeperCPUHigh",
            signal="cpu_percent",
            op=">",
            threshold=90.0,
            for_seconds=120.0,
            severity="warning",
            summary="引擎服务器 CPU 持续过载 / Engine host CPU at {{ $value | humanize }}%"
            " for 2 minutes; new generations are being rejected",
            runbook="Check what else runs on the box (top -o %CPU); stop anything that is"
            " not the engine. Do not raise admission.resources.cpu_percent: the engine"
            " needs the whole machine.",
        ),
        AlertRule(
            alert="GatekeeperMemoryHigh",
            signal="memory_percent",
            op=">",
            threshold=90.0,
            for_seconds=120.0,
            severity="critical",
            summary="引擎服务器内存即将耗尽 / Engine host memory at {{ $value | humanize }}%"
            " for 2 minutes; the box is close to freezing",
            runbook="Find the process holding memory (top -o %MEM). If the engine leaks"
            " after a generation, restart it once nothing runs (/status in_flight 0);"
            " kill anything else that grew.",
        ),
        AlertRule(
            alert="GatekeeperRejectionsFlood",
            signal="rejections_per_minute",
            op=">",
            threshold=30.0,
            for_seconds=60.0,
            severity="warning",
            summary="大量请求被拒绝（批量或重试风暴）/ {{ $value | humanize }} requests per"
            " minute turned away: a batch script or a retry storm",
            runbook="Open the access log (decision=rejected or blocked) and find the client"
            " address; a batch job or a client retrying without Retry-After is hammering"
            " the engine. Ask its owner to generate one song at a time, or block it"
            " upstream.",
        ),
        AlertRule(
            alert="GatekeeperUpstreamDown",
            signal="upstream_up",
            op="==",
            threshold=0.0,
            for_seconds=60.0,
            severity="critical",
            summary="音乐生成引擎无法连接 / The music engine has not answered gatekeeper's"
            " probe for 1 minute",
            runbook="Check the engine process (systemctl status, docker ps or kubectl get"
            " pods) and its log; restart it. gatekeeper answers 502 upstream_unavailable"
            " meanwhile.",
        ),
        AlertRule(
            alert="GatekeeperUpstreamTimeouts",
            signal="upstream_timeouts_per_hour",
            op=">",
            threshold=0.0,
            for_seconds=0.0,
            severity="warning",
            summary="引擎响应超时 / {{ $value | humanize }} request(s) to the engine timed out"
            " in the last hour (no byte within the read timeout)",
            runbook="Look for upstream_timeout in the access log and at the engine's log for"
            " those request ids; a hung GPU/CPU worker needs an engine restart. Raise"
            " upstream.timeouts.read only if songs legitimately take longer.",
        ),
        AlertRule(
            alert="GatekeeperGenerationStuck",
            signal="generation_elapsed_seconds",
            op=">",
            threshold=read_timeout,
            for_seconds=60.0,
            severity="critical",
            summary="生成任务卡住 / A generation has run for {{ $value | humanizeDuration }},"
            " longer than the upstream read timeout; every other request gets busy",
            runbook="Check the engine's progress for the running job; if it is hung, restart"
            " the engine: the slot is freed when its connection closes.",
        ),
        AlertRule(
            alert="GatekeeperConfigReloadFailed",
            signal="config_reload_failed",
            op="==",
            threshold=1.0,
            for_seconds=0.0,
            severity="warning",
            summary="配置重新加载失败 / The last rules.yaml reload failed; the previous rules"
            " are still in force",
            runbook="Run gatekeeper check --config <file> to see every problem with its line,"
            " fix the file, then reload again (SIGHUP or POST /reload).",
        ),
    )


@dataclass(frozen=True)
class Alerts:
    evaluation_interval: float = 5.0
    resend_interval: float = 60.0
    # ``instance`` label and the URL receivers link back to; None = derived at start
    # from the host name and the admin listener.
    instance: str | None = None
    external_url: str | None = None
    # A log receiver only: the default config works without any Alertmanager.
    receivers: tuple[Receiver, ...] = (Receiver(name="log", type="log"),)
    rules: tuple[AlertRule, ...] = field(default_factory=default_alert_rules)


@dataclass(frozen=True)
class Config:
    listen: HostPort = HostPort("0.0.0.0", 8080)
    admin_listen: HostPort = HostPort("127.0.0.1", 9090)
    upstream: Upstream = field(default_factory=Upstream)
    limits: BodyLimits = field(default_factory=BodyLimits)
    admission: Admission = field(default_factory=Admission)
    routes: tuple[Route, ...] = DEFAULT_ROUTES
    messages: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_MESSAGES))
    status_path: str | None = "/_gatekeeper/status"
    shutdown: Shutdown = field(default_factory=Shutdown)
    reload: Reload = field(default_factory=Reload)
    alerts: Alerts = field(default_factory=Alerts)
    # Where the config came from, for reloads and messages; not a YAML key.
    source: str = "<defaults>"

    def with_overrides(
        self,
        *,
        upstream: str | None = None,
        listen: str | None = None,
        admin_listen: str | None = None,
    ) -> Config:
        """Apply command-line overrides, validated like the file; raises ConfigError."""
        problems: list[ConfigProblem] = []
        cfg = self
        if upstream is not None:
            url = _check_url(upstream, "--upstream", None, problems)
            cfg = replace(cfg, upstream=replace(cfg.upstream, url=url))
        if listen is not None:
            hp = _parse_hostport(listen, "--listen", None, problems)
            cfg = replace(cfg, listen=hp or cfg.listen)
        if admin_listen is not None:
            hp = _parse_hostport(admin_listen, "--admin-listen", None, problems)
            cfg = replace(cfg, admin_listen=hp or cfg.admin_listen)
        if problems:
            raise ConfigError(problems, source="command line")
        return cfg

    def message(self, reason: str, **fields: Any) -> str:
        template = self.messages.get(reason) or DEFAULT_MESSAGES.get(reason, reason)
        values = {k: fields.get(k, 0) for k in MESSAGE_FIELDS}
        try:
            return template.format(**values)
        except (ValueError, KeyError, IndexError):  # validated at load; belt and braces
            return template


# --------------------------------------------------------------------------- loading


def load_config_file(path: str | Path) -> Config:
    """Read and validate a rules file; raises ConfigError (also for unreadable files)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem("", None, f"cannot read file: {exc}")], str(p)) from exc
    return load_config(text, source=str(p))


def load_config(text: str, source: str = "<string>") -> Config:
    """Parse and validate rules text; raises ConfigError listing every problem."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([ConfigProblem("", line, f"invalid YAML: {exc}")], source) from exc
    problems: list[ConfigProblem] = []
    cfg = Config() if root is None else _build(_Section(root, "", problems), problems)
    if problems:
        raise ConfigError(problems, source)
    return replace(cfg, source=source)


# --------------------------------------------------------------------------- node access

T = TypeVar("T")
_constructor = yaml.constructor.SafeConstructor()


def _line(node: yaml.Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None else None


def _value(node: yaml.Node) -> Any:
    return _constructor.construct_object(node, deep=True)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class _Section:
    """A YAML mapping being read: typed getters record problems; ``close`` flags unknown keys."""

    def __init__(self, node: yaml.Node | None, path: str, problems: list[ConfigProblem]):
        self.path = path
        self.problems = problems
        self.node = node
        self.items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        self.used: set[str] = set()
        if node is None:
            return
        if not isinstance(node, yaml.MappingNode):
            self.problem("", node, "must be a mapping", _value(node))
            self.node = None
            return
        for key_node, value_node in node.value:
            key = _value(key_node)
            if not isinstance(key, str):
                self.problem("", key_node, "keys must be strings", key)
                continue
            if key in self.items:
                self.problem(key, key_node, "duplicate key")
            self.items[key] = (key_node, value_node)

    @property
    def line(self) -> int | None:
        return _line(self.node)

    def problem(self, key: str | int, node: yaml.Node | None, message: str, *value: object) -> None:
        self.problems.append(
            ConfigProblem(
                _join(self.path, key) if key != "" else self.path,
                _line(node) if node is not None else self.line,
                message,
                value[0] if value else None,
                bool(value),
            )
        )

    def has(self, key: str) -> bool:
        return key in self.items

    def node_of(self, key: str) -> yaml.Node | None:
        self.used.add(key)
        item = self.items.get(key)
        return item[1] if item else None

    def section(self, key: str) -> _Section:
        node = self.node_of(key)
        if node is not None and isinstance(node, yaml.ScalarNode) and _value(node) is None:
            node = None  # ``key:`` with nothing after it means "all defaults"
        return _Section(node, _join(self.path, key), self.problems)

    def get(
        self, key: str, default: T, check: Callable[[Any], str | None], *, allow_none: bool = False
    ) -> T:
        """Read ``key``; ``check(value)`` returns an error text or None. Bad value → default."""
        node = self.node_of(key)
        if node is None:
            return default
        value = _value(node)
        if value is None and allow_none:
            return None  # type: ignore[return-value]
        error = check(value)
        if error is not None:
            self.problem(key, node, error, value)
            return default
        return value  # type: ignore[no-any-return]

    def number(
        self,
        key: str,
        default: float,
        *,
        minimum: float = 0.0,
        maximum: float = math.inf,
        exclusive_min: bool = False,
    ) -> float:
        def check(v: Any) -> str | None:
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                return "must be a finite number"
            if v < minimum or (exclusive_min and v == minimum):
                return f"must be {'>' if exclusive_min else '>='} {minimum:g}"
            if v > maximum:
                return f"must be <= {maximum:g}"
            return None

        return float(self.get(key, default, check))

    def duration(self, key: str, default: float, *, positive: bool = True) -> float:
        """Seconds as a number, or a string like ``500ms``, ``30s``, ``2m``, ``1h``."""

        def check(v: Any) -> str | None:
            seconds = parse_duration(v)
            if seconds is None:
                return "must be a duration: seconds as a number, or e.g. '30s', '2m', '1h'"
            if seconds < 0 or (positive and seconds == 0):
                return "must be > 0" if positive else "must be >= 0"
            return None

        node = self.node_of(key)
        if node is None:
            return default
        value = _value(node)
        error = check(value)
        if error is not None:
            self.problem(key, node, error, value)
            return default
        seconds = parse_duration(value)
        assert seconds is not None
        return seconds

    def integer(
        self, key: str, default: int, *, minimum: int = 0, maximum: int | None = None
    ) -> int:
        def check(v: Any) -> str | None:
            if isinstance(v, bool) or not isinstance(v, int):
                return "must be an integer"
            if v < minimum:
                return f"must be >= {minimum}"
            if maximum is not None and v > maximum:
                return f"must be <= {maximum}"
            return None

        return int(self.get(key, default, check))

    def string(self, key: str, default: str, *, choices: tuple[str, ...] | None = None) -> str:
        def check(v: Any) -> str | None:
            if not isinstance(v, str):
                return "must be a string"
            if choices is not None and v not in choices:
                return "must be one of " + ", ".join(choices)
            return None

        return self.get(key, default, check)

    def boolean(self, key: str, default: bool) -> bool:
        return self.get(
            key, default, lambda v: None if isinstance(v, bool) else "must be true or false"
        )

    def close(self) -> None:
        for key, (key_node, _) in self.items.items():
            if key not in self.used:
                self.problem(key, key_node, "unknown key")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object) -> float | None:
    """``30``, ``2.5``, ``"500ms"``, ``"30s"``, ``"2m"``, ``"1h"`` → seconds; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNIT[m.group(2)]
    return None


# --------------------------------------------------------------------------- value checks

_HOSTPORT = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[A-Za-z0-9.\-_]*)):(?P<port>\d+)$")


def _parse_hostport(
    value: object, path: str, line: int | None, problems: list[ConfigProblem]
) -> HostPort | None:
    m = _HOSTPORT.match(value) if isinstance(value, str) else None
    if m is None or not 0 <= int(m.group("port")) <= 65535:
        problems.append(
            ConfigProblem(path, line, "must be HOST:PORT, e.g. 127.0.0.1:8080", value, True)
        )
        return None
    host = m.group("v6") or m.group("host") or "0.0.0.0"
    return HostPort(host, int(m.group("port")))


def _check_url(value: object, path: str, line: int | None, problems: list[ConfigProblem]) -> str:
    ok = False
    if isinstance(value, str):
        parts = urlsplit(value)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        ok = ok and not parts.query and not parts.fragment
        try:
            parts.port  # noqa: B018 - raises ValueError for a port outside 0-65535
        except ValueError:
            ok = False
    if not ok:
        problems.append(
            ConfigProblem(path, line, "must be an http:// or https:// URL with a host", value, True)
        )
        return Upstream.url
    assert isinstance(value, str)
    return value.rstrip("/")


def _check_path_glob(v: Any) -> str | None:
    if not isinstance(v, str) or not v.startswith("/"):
        return "must be a path starting with '/'"
    for segment in v.split("/"):
        if "**" in segment and segment != "**":
            return "'**' must be a whole path segment, e.g. /files/**"
    return None


def _check_message(v: Any) -> str | None:
    if not isinstance(v, str) or not v:
        return "must be a non-empty string"
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(v) if name is not None}
    except ValueError as exc:
        return f"invalid format string: {exc}"
    unknown = {n.split(".")[0].split("[")[0] for n in names} - MESSAGE_FIELDS
    if "" in unknown or unknown:
        return (
            "unknown placeholder(s) {"
            + "}, {".join(sorted(unknown))
            + "}; allowed: "
            + ", ".join(sorted(MESSAGE_FIELDS))
        )
    return None


# --------------------------------------------------------------------------- building


def _timeouts(sec: _Section, default: Timeouts) -> Timeouts:
    t = Timeouts(
        connect=sec.duration("connect", default.connect),
        read=sec.duration("read", default.read),
        write=sec.duration("write", default.write),
        pool=sec.duration("pool", default.pool),
    )
    sec.close()
    return t


def _limits(sec: _Section, default: PoolLimits) -> PoolLimits:
    lim = PoolLimits(
        max_connections=sec.integer("max_connections", default.max_connections, minimum=1),
        max_keepalive_connections=sec.integer(
            "max_keepalive_connections", default.max_keepalive_connections, minimum=0
        ),
        keepalive_expiry=sec.duration("keepalive_expiry", default.keepalive_expiry, positive=False),
    )
    if lim.max_keepalive_connections > lim.max_connections:
        sec.problem(
            "max_keepalive_connections",
            sec.node_of("max_keepalive_connections"),
            f"must be <= max_connections ({lim.max_connections})",
            lim.max_keepalive_connections,
        )
    sec.close()
    return lim


def _upstream(sec: _Section, problems: list[ConfigProblem]) -> Upstream:
    d = Upstream()
    url = d.url
    if sec.has("url"):
        node = sec.node_of("url")
        assert node is not None
        url = _check_url(_value(node), _join(sec.path, "url"), _line(node), problems)
    timeouts = _timeouts(sec.section("timeouts"), d.timeouts)
    limits = _limits(sec.section("limits"), d.limits)
    pt = sec.section("passthrough")
    passthrough = Pool(
        timeouts=_timeouts(pt.section("timeouts"), d.passthrough.timeouts),
        limits=_limits(pt.section("limits"), d.passthrough.limits),
    )
    pt.close()
    pr = sec.section("probe")
    probe = Probe(
        path=pr.get("path", d.probe.path, _check_path_glob),
        interval=pr.duration("interval", d.probe.interval),
        timeout=pr.duration("timeout", d.probe.timeout),
    )
    pr.close()
    sec.close()
    return Upstream(url, timeouts, limits, passthrough, probe)


def _threshold(sec: _Section, default: Threshold) -> Threshold:
    t = Threshold(
        reject_above=sec.number("reject_above", default.reject_above, maximum=100),
        recover_below=sec.number("recover_below", default.recover_below, maximum=100),
    )
    if t.recover_below > t.reject_above:
        sec.problem(
            "recover_below",
            sec.node_of("recover_below"),
            f"must be <= reject_above ({t.reject_above:g}) for hysteresis",
            t.recover_below,
        )
    sec.close()
    return t


def _admission(sec: _Section) -> Admission:
    d = Admission()
    rs = sec.section("resources")
    dr = d.resources
    source = rs.string("source", dr.source, choices=("psutil", "file"))
    file = rs.get(
        "file",
        dr.file,
        lambda v: None if isinstance(v, str) and v else "must be a path",
        allow_none=True,
    )
    if source == "file" and not file:
        rs.problem("file", rs.node_of("file"), "is required when source is 'file'")
    resources = Resources(
        source=source,  # type: ignore[arg-type]
        file=file,
        cpu_smoothing=rs.number("cpu_smoothing", dr.cpu_smoothing, maximum=1.0, exclusive_min=True),
        cpu_percent=_threshold(rs.section("cpu_percent"), dr.cpu_percent),
        memory_percent=_threshold(rs.section("memory_percent"), dr.memory_percent),
    )
    rs.close()
    a = Admission(
        max_in_flight=sec.integer("max_in_flight", d.max_in_flight, minimum=0),
        sample_interval=sec.duration("sample_interval", d.sample_interval),
        reject_status=sec.integer("reject_status", d.reject_status, minimum=400, maximum=599),
        retry_after_default=sec.integer("retry_after_default", d.retry_after_default, minimum=1),
        on_client_disconnect=sec.string(  # type: ignore[arg-type]
            "on_client_disconnect", d.on_client_disconnect, choices=("finish", "cancel")
        ),
        expected_seconds=sec.duration("expected_seconds", d.expected_seconds),
        resources=resources,
    )
    sec.close()
    return a


def _routes(node: yaml.Node | None, problems: list[ConfigProblem]) -> tuple[Route, ...]:
    if node is None:
        return DEFAULT_ROUTES
    if not isinstance(node, yaml.SequenceNode):
        problems.append(ConfigProblem("routes", _line(node), "must be a list of routes"))
        return DEFAULT_ROUTES
    routes: list[Route] = []
    names: set[str] = set()
    for i, item in enumerate(node.value):
        sec = _Section(item, f"routes[{i}]", problems)
        name = sec.string("name", f"route{i}")
        if not sec.has("name"):
            sec.problem("name", None, "is required")
        elif name in names:
            sec.problem("name", sec.node_of("name"), "duplicate route name", name)
        names.add(name)
        action = sec.string("action", "pass", choices=ACTIONS)
        if not sec.has("action"):
            sec.problem("action", None, "is required (admit, pass or block)")
        match = sec.section("match")
        path = match.get("path", "/**", _check_path_glob)
        if not match.has("path"):
            match.problem("path", None, "is required")
        methods = match.get("methods", None, _check_methods, allow_none=True)
        match.close()
        status = sec.get(
            "status",
            None,
            lambda v: (
                None
                if isinstance(v, int) and not isinstance(v, bool) and 200 <= v <= 599
                else "must be an HTTP status 200-599"
            ),
            allow_none=True,
        )
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
        routes.append(
            Route(
                name=name,
                path=path,
                action=action,  # type: ignore[arg-type]
                methods=frozenset(m.upper() for m in methods) if methods else None,
                status=status if action == "block" else None,
                detail=detail if action == "block" else None,
            )
        )
    return tuple(routes)


def _check_methods(v: Any) -> str | None:
    if not isinstance(v, list) or not v or not all(isinstance(m, str) for m in v):
        return "must be a non-empty list of HTTP methods"
    bad = [m for m in v if m.upper() not in HTTP_METHODS]
    if bad:
        return f"unknown HTTP method(s) {bad}"
    return None


def _messages(sec: _Section) -> dict[str, str]:
    messages = dict(DEFAULT_MESSAGES)
    for key in list(sec.items):
        if key not in REASONS:
            continue
        messages[key] = sec.get(key, messages[key], _check_message)
    for key, (key_node, _) in sec.items.items():
        if key not in REASONS:
            sec.problem(key, key_node, "unknown reason code; known: " + ", ".join(REASONS))
            sec.used.add(key)
    sec.close()
    return messages


_EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The only template constructs gatekeeper renders itself; Prometheus renders them the
# same way, so a rule reads the same in both (see alerts.render).
_TEMPLATE = re.compile(r"\{\{(.*?)\}\}")
_TEMPLATE_OK = re.compile(
    r"^\s*(\$value(\s*\|\s*(humanize|humanizeDuration))?|\$labels\.[A-Za-z_][A-Za-z0-9_]*)\s*$"
)


def parse_expr(text: object) -> tuple[str, str, float] | str:
    """``"cpu_percent > 90"`` → (signal, op, threshold), or an error text."""
    m = _EXPR.match(text) if isinstance(text, str) else None
    if m is None:
        return "must be '<signal> <op> <number>', e.g. 'cpu_percent > 90'"
    signal, op, number = m.groups()
    if signal not in SIGNALS:
        return f"unknown signal {signal!r}; known: " + ", ".join(SIGNALS)
    try:
        threshold = float(number)
    except ValueError:
        return f"threshold {number!r} is not a number"
    if not math.isfinite(threshold):
        return f"threshold {number!r} must be finite"
    return signal, op, threshold


def _check_annotation(v: Any) -> str | None:
    if not isinstance(v, str) or not v.strip():
        return "must be a non-empty string"
    for m in _TEMPLATE.finditer(v):
        if not _TEMPLATE_OK.match(m.group(1)):
            return (
                f"unsupported template {m.group(0)!r}; allowed: {{{{ $value }}}},"
                " {{ $value | humanize }}, {{ $value | humanizeDuration }}, {{ $labels.<name> }}"
            )
    if "{{" in _TEMPLATE.sub("", v):
        return "unclosed '{{' template"
    return None


def _receivers(node: yaml.Node | None, problems: list[ConfigProblem]) -> tuple[Receiver, ...]:
    if node is None:
        return Alerts().receivers
    if not isinstance(node, yaml.SequenceNode):
        problems.append(
            ConfigProblem("alerts.receivers", _line(node), "must be a list of receivers")
        )
        return Alerts().receivers
    out: list[Receiver] = []
    names: set[str] = set()
    for i, item in enumerate(node.value):
        sec = _Section(item, f"alerts.receivers[{i}]", problems)
        name = sec.get("name", f"receiver{i}", _check_name)
        if not sec.has("name"):
            sec.problem("name", None, "is required")
        elif name in names:
            sec.problem("name", sec.node_of("name"), "duplicate receiver name", name)
        names.add(name)
        kind = sec.string("type", "log", choices=RECEIVER_TYPES)
        if not sec.has("type"):
            sec.problem("type", None, "is required (" + ", ".join(RECEIVER_TYPES) + ")")
        url: str | None = None
        if kind == "log":
            if sec.has("url"):
                sec.problem("url", sec.node_of("url"), "does not apply to a 'log' receiver")
        elif sec.has("url"):
            url_node = sec.node_of("url")
            assert url_node is not None
            url = _check_url(_value(url_node), _join(sec.path, "url"), _line(url_node), problems)
        else:
            sec.problem("url", None, f"is required for a {kind!r} receiver")
        timeout = sec.duration("timeout", Receiver.timeout)
        sec.close()
        out.append(Receiver(name=name, type=kind, url=url, timeout=timeout))  # type: ignore[arg-type]
    return tuple(out)


def _check_name(v: Any) -> str | None:
    return None if isinstance(v, str) and _NAME.match(v) else "must match [A-Za-z_][A-Za-z0-9_]*"


def _alert_rules(
    node: yaml.Node | None, problems: list[ConfigProblem], read_timeout: float
) -> tuple[AlertRule, ...]:
    if node is None:
        return default_alert_rules(read_timeout)
    if not isinstance(node, yaml.SequenceNode):
        problems.append(ConfigProblem("alerts.rules", _line(node), "must be a list of rules"))
        return default_alert_rules(read_timeout)
    out: list[AlertRule] = []
    names: set[str] = set()
    for i, item in enumerate(node.value):
        sec = _Section(item, f"alerts.rules[{i}]", problems)
        alert = sec.get("alert", f"Rule{i}", _check_name)
        if alert in names:
            sec.problem("alert", sec.node_of("alert"), "duplicate alert name", alert)
        names.add(alert)
        expr: tuple[str, str, float] = ("in_flight", ">", math.inf)
        expr_node = sec.node_of("expr")
        if expr_node is not None:
            parsed = parse_expr(_value(expr_node))
            if isinstance(parsed, str):
                sec.problem("expr", expr_node, parsed, _value(expr_node))
            else:
                expr = parsed
        for_seconds = sec.duration("for", 0.0, positive=False)
        severity = sec.string("severity", "warning", choices=SEVERITIES)
        summary = sec.get("summary", "", _check_annotation)
        runbook = sec.get("runbook", "", _check_annotation)
        for key in ("alert", "expr", "severity", "summary", "runbook"):
            if not sec.has(key):
                sec.problem(key, None, "is required")
        labels = _rule_labels(sec.section("labels"))
        sec.close()
        out.append(
            AlertRule(
                alert=alert,
                signal=expr[0],
                op=expr[1],
                threshold=expr[2],
                for_seconds=for_seconds,
                severity=severity,
                summary=summary,
                runbook=runbook,
                labels=labels,
            )
        )
    return tuple(out)


def _rule_labels(sec: _Section) -> dict[str, str]:
    labels: dict[str, str] = {}
    for key, (key_node, value_node) in sec.items.items():
        sec.used.add(key)
        value = _value(value_node)
        if not _NAME.match(key) or key.startswith("__"):
            sec.problem(key, key_node, "label names must match [A-Za-z_][A-Za-z0-9_]*", key)
        elif key in RESERVED_LABELS:
            sec.problem(key, key_node, "is set by gatekeeper; use another label name", key)
        elif not isinstance(value, str | int | float) or isinstance(value, bool):
            sec.problem(key, value_node, "label values must be strings", value)
        else:
            labels[key] = str(value)
    sec.close()
    return labels


def _alerts(sec: _Section, problems: list[ConfigProblem], read_timeout: float) -> Alerts:
    d = Alerts()
    external_url = None
    if sec.has("external_url"):
        node = sec.node_of("external_url")
        assert node is not None
        if _value(node) is not None:
            external_url = _check_url(
                _value(node), _join(sec.path, "external_url"), _line(node), problems
            )
    a = Alerts(
        evaluation_interval=sec.duration("evaluation_interval", d.evaluation_interval),
        resend_interval=sec.duration("resend_interval", d.resend_interval),
        instance=sec.get(
            "instance",
            d.instance,
            lambda v: None if isinstance(v, str) and v else "must be a non-empty string",
            allow_none=True,
        ),
        external_url=external_url,
        receivers=_receivers(sec.node_of("receivers"), problems),
        rules=_alert_rules(sec.node_of("rules"), problems, read_timeout),
    )
    sec.close()
    return a


def _build(root: _Section, problems: list[ConfigProblem]) -> Config:
    d = Config()
    listen, admin_listen = d.listen, d.admin_listen
    for key in ("listen", "admin_listen"):
        node = root.node_of(key)
        if node is not None:
            hp = _parse_hostport(_value(node), key, _line(node), problems)
            if hp is not None:
                listen, admin_listen = (hp, admin_listen) if key == "listen" else (listen, hp)
    upstream = _upstream(root.section("upstream"), problems)
    lim = root.section("limits")
    limits = BodyLimits(
        max_body_bytes=lim.integer("max_body_bytes", d.limits.max_body_bytes, minimum=0),
        client_body_timeout=lim.duration("client_body_timeout", d.limits.client_body_timeout),
        client_send_timeout=lim.duration("client_send_timeout", d.limits.client_send_timeout),
    )
    lim.close()
    admission = _admission(root.section("admission"))
    routes = _routes(root.node_of("routes"), problems)
    messages = _messages(root.section("messages"))
    status_path = root.get("status_path", d.status_path, _check_path_glob, allow_none=True)
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
    alerts = _alerts(root.section("alerts"), problems, upstream.timeouts.read)
    if listen == admin_listen and listen.port != 0:
        root.problem(
            "admin_listen",
            root.node_of("admin_listen"),
            "must differ from listen",
            str(admin_listen),
        )
    root.close()
    return Config(
        listen=listen,
        admin_listen=admin_listen,
        upstream=upstream,
        limits=limits,
        admission=admission,
        routes=routes,
        messages=messages,
        status_path=status_path,
        shutdown=shutdown,
        reload=reload,
        alerts=alerts,
    )
