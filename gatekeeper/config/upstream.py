"""``upstream``: the engine(s), the gated and passthrough pools, the probe.

One engine is ``upstream.url`` (its slots: ``admission.max_in_flight``). Several
are ``upstream.engines: [{name, url, max_in_flight}]`` (issue #11 §1): each has
its own slots, pools, probe and up/down state; ``admission.max_in_flight`` is then
their sum (the check of ``Config`` fills it in; setting it too is an error, so nobody
wonders which of two numbers wins). Either way ``Upstream.engines`` lists them,
so the rest of gatekeeper has one shape to read.
"""

from __future__ import annotations

import re
from dataclasses import replace

import yaml

from gatekeeper.config.build import read_section, section_check
from gatekeeper.config.declare import checked, custom, declared, duration, integer, section
from gatekeeper.config.reader import Context, Section, join, value_of
from gatekeeper.config.values import (
    PATH_GLOB_SCHEMA,
    URL_SCHEMA,
    check_path_glob,
    to_url,
    url_error,
)


@declared
class Timeouts:
    """The seed's httpx.Timeout, mapped onto aiohttp by ``gatekeeper.upstream``."""

    connect: float = duration(
        "Establishing a TCP connection to the engine (over it: 502 upstream_unavailable).",
        default=30.0,
    )
    read: float = duration(
        "Max gap between two bytes from the engine, the 15-minute job (over it: 504"
        " upstream_timeout).",
        default=900.0,
    )
    write: float = duration(
        "Max time for the engine to accept one chunk of a request body (over it: 504).",
        default=30.0,
    )
    pool: float = duration(
        "Max wait for a free connection of the pool (over it: 503 upstream_busy).", default=10.0
    )


@declared
class PoolLimits:
    """The seed's httpx.Limits."""

    max_connections: int = integer("Connections open to the engine at once.", minimum=1, default=2)
    max_keepalive_connections: int = integer(
        "Idle connections kept for reuse.", minimum=0, default=1
    )
    keepalive_expiry: float = duration(
        "Idle connections are closed after this.", positive=False, default=30.0
    )


@declared
class Pool:
    timeouts: Timeouts = section("Timeouts of this pool.", factory=Timeouts)
    limits: PoolLimits = section("Connection limits of this pool.", factory=PoolLimits)


PASSTHROUGH_LIMITS = PoolLimits(max_connections=10, max_keepalive_connections=5)


_POINTER = re.compile(r"^(/([^~]|~[01])*)*$")
Scalar = bool | int | float | str


def _check_pointer(v: object) -> str | None:
    if isinstance(v, str) and _POINTER.match(v):
        return None
    return "must be a JSON pointer (RFC 6901, e.g. /busy or /engine/running), or '' for none"


def _check_scalar(v: object) -> str | None:
    if isinstance(v, bool | int | float | str):
        return None
    return "must be a boolean, a number or a string"


@declared
class ProbeBusy:
    """The engine's own busy signal, read from its probe's answer (issue #18 §5)."""

    pointer: str = checked(
        "JSON pointer (RFC 6901) into the probe's JSON answer, e.g. /busy; '' (the default):"
        " the engine offers no busy signal. After a restart that found a job running, its"
        " engine gets no new generation until this says idle (without it: until the"
        " interrupted job's expected remaining time has passed).",
        _check_pointer,
        {"type": "string", "pattern": _POINTER.pattern},
        default="",
    )
    equals: Scalar = checked(
        "The value at pointer that means busy (any other value: idle; an answer that is not"
        " JSON or lacks the pointer: no signal).",
        _check_scalar,
        {"type": ["boolean", "number", "string"]},
        default=True,
    )


@declared
class Probe:
    path: str = checked(
        "Path requested on the engine.", check_path_glob, PATH_GLOB_SCHEMA, default="/"
    )
    interval: float = duration("Time between probes.", default=5.0)
    timeout: float = duration("A probe slower than this counts as down.", default=3.0)
    busy: ProbeBusy = section(
        "The engine's busy signal in the probe's JSON answer (engine-sim: pointer /busy).",
        factory=ProbeBusy,
    )


DEFAULT_URL = "http://127.0.0.1:8000"
# The engine's name when there is one (``upstream.url``): the ``engine`` label's value.
DEFAULT_ENGINE = "default"
_ENGINE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def _check_engine_name(v: object) -> str | None:
    if isinstance(v, str) and _ENGINE_NAME.match(v):
        return None
    return "must be 1-32 characters of a-z, 0-9, '_' or '-', starting with a letter or digit"


@declared
class Engine:
    """One engine: where it is and how many generations it runs at once."""

    name: str = checked(
        "The engine's name: the 'engine' label of the metrics.",
        _check_engine_name,
        {"type": "string", "pattern": _ENGINE_NAME.pattern},
        required="is required",
    )
    url: str = checked(
        "The engine's URL.", url_error, URL_SCHEMA, convert=to_url, required="is required"
    )
    max_in_flight: int = integer("Generations this engine runs at once.", minimum=1, default=1)


def _engines(
    sec: Section, key: str, default: object, ctx: Context, done: dict[str, object]
) -> tuple[Engine, ...] | None:
    """``upstream.engines``, or None when the file does not list them."""
    node = sec.node_of(key)
    if node is None or (isinstance(node, yaml.ScalarNode) and value_of(node) is None):
        return None
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        sec.problem(
            key, node, "must be a non-empty list of {name, url, max_in_flight}", value_of(node)
        )
        return None
    engines: list[Engine] = []
    names: set[str] = set()
    urls: dict[str, str] = {}
    for i, item in enumerate(node.value):
        es = Section(item, join(join(sec.path, key), i), ctx.problems)
        engine = read_section(Engine, es, ctx, Engine(f"engine{i}", DEFAULT_URL), close=False)
        if es.has("name") and engine.name in names:
            es.problem("name", es.node_of("name"), "duplicate engine name", engine.name)
        names.add(engine.name)
        url_node = es.node_of("url")
        if url_node is not None and url_error(value_of(url_node)) is None:
            if engine.url in urls:
                other = urls[engine.url]
                es.problem(
                    "url", url_node, f"is also engine {other!r}'s url (one entry each)", engine.url
                )
            urls.setdefault(engine.url, engine.name)
        es.close()
        engines.append(engine)
    return tuple(engines)


@declared
class Upstream:
    url: str = checked(
        "The engine gatekeeper protects (one engine, named 'default'; its slots are"
        " admission.max_in_flight). gatekeeper only ever talks to this URL.",
        url_error,
        URL_SCHEMA,
        convert=to_url,
        default=DEFAULT_URL,
    )
    timeouts: Timeouts = section(
        "Timeouts of the pool used by admitted generations (the gated pool).", factory=Timeouts
    )
    limits: PoolLimits = section("Connection limits of the gated pool.", factory=PoolLimits)
    passthrough: Pool = section(
        "The pool of pass routes (status polls, downloads), so a 15-minute generation"
        " holding a connection never starves them.",
        factory=lambda: Pool(limits=PASSTHROUGH_LIMITS),
        shape=Pool,
    )
    probe: Probe = section(
        "A light periodic request to each engine: any HTTP answer (even 404) counts as up.",
        factory=Probe,
    )
    # Every engine, in the file's order (one, named "default", for ``upstream.url``).
    engines: tuple[Engine, ...] = custom(
        "Several engines behind this one gatekeeper instead of url, each with its own slots,"
        " pools, probe and up/down state; admission.max_in_flight is then their sum and must"
        " not be set. gradio routes need exactly one engine.",
        read=_engines,
        schema={"type": ["array", "null"], "minItems": 1},
        shape=Engine,
        default=(Engine(DEFAULT_ENGINE, DEFAULT_URL),),
    )
    # True when the file listed ``upstream.engines`` (not a single ``upstream.url``).
    listed: bool = False

    def engine(self, name: str) -> Engine | None:
        return next((e for e in self.engines if e.name == name), None)

    @property
    def gated(self) -> Pool:
        return Pool(timeouts=self.timeouts, limits=self.limits)


@section_check(PoolLimits)
def _check_limits(lim: PoolLimits, sec: Section, ctx: Context) -> PoolLimits:
    if lim.max_keepalive_connections > lim.max_connections:
        sec.problem(
            "max_keepalive_connections",
            sec.node_of("max_keepalive_connections"),
            f"must be <= max_connections ({lim.max_connections})",
            lim.max_keepalive_connections,
        )
    return lim


@section_check(Upstream)
def _check_upstream(up: Upstream, sec: Section, ctx: Context) -> Upstream:
    """One engine from ``url``, or the listed ones (``_engines`` left None when not listed)."""
    engines: tuple[Engine, ...] | None = up.engines
    node = sec.node_of("url")
    if engines is not None and node is not None:
        sec.problem(
            "url",
            node,
            "cannot be set with upstream.engines (each engine names its own url); remove one",
            up.url,
        )
    if engines is None:  # one engine; its slots (admission.max_in_flight) are set by root
        return replace(up, engines=(Engine(DEFAULT_ENGINE, up.url),))
    return replace(up, url=engines[0].url, engines=engines, listed=True)
