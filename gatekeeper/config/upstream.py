"""``upstream``: the engine(s), the gated and passthrough pools, the probe.

One engine is ``upstream.url`` (its slots: ``admission.max_in_flight``). Several
are ``upstream.engines: [{name, url, max_in_flight}]`` (issue #11 §1): each has
its own slots, pools, probe and up/down state; ``admission.max_in_flight`` is then
their sum (``root._build`` fills it in; setting it too is an error, so nobody
wonders which of two numbers wins). Either way ``Upstream.engines`` lists them,
so the rest of gatekeeper has one shape to read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

from gatekeeper.config.reader import Section, join, line_of, value_of
from gatekeeper.config.values import check_path_glob, check_url
from gatekeeper.core.errors import ConfigProblem


@dataclass(frozen=True)
class Timeouts:
    """The seed's httpx.Timeout, mapped onto aiohttp by ``gatekeeper.upstream``."""

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


DEFAULT_URL = "http://127.0.0.1:8000"
# The engine's name when there is one (``upstream.url``): the ``engine`` label's value.
DEFAULT_ENGINE = "default"
_ENGINE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Engine:
    """One engine: where it is and how many generations it runs at once."""

    name: str
    url: str
    max_in_flight: int = 1


@dataclass(frozen=True)
class Upstream:
    # The first engine's URL (the one engine's, unless ``engines`` lists several).
    url: str = DEFAULT_URL
    # The gated pool (admit routes): the seed's numbers.
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: PoolLimits = field(default_factory=PoolLimits)
    # Pass routes get their own pool so a 15-minute job never starves status polls.
    passthrough: Pool = field(default_factory=lambda: Pool(limits=PASSTHROUGH_LIMITS))
    probe: Probe = field(default_factory=Probe)
    # Every engine, in the file's order (one, named "default", for ``upstream.url``).
    engines: tuple[Engine, ...] = (Engine(DEFAULT_ENGINE, DEFAULT_URL),)
    # True when the file listed ``upstream.engines`` (not a single ``upstream.url``).
    listed: bool = False

    def engine(self, name: str) -> Engine | None:
        return next((e for e in self.engines if e.name == name), None)

    @property
    def gated(self) -> Pool:
        return Pool(timeouts=self.timeouts, limits=self.limits)


def _timeouts(sec: Section, default: Timeouts) -> Timeouts:
    t = Timeouts(
        connect=sec.duration("connect", default.connect),
        read=sec.duration("read", default.read),
        write=sec.duration("write", default.write),
        pool=sec.duration("pool", default.pool),
    )
    sec.close()
    return t


def _limits(sec: Section, default: PoolLimits) -> PoolLimits:
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


def _check_engine_name(v: object) -> str | None:
    if isinstance(v, str) and _ENGINE_NAME.match(v):
        return None
    return "must be 1-32 characters of a-z, 0-9, '_' or '-', starting with a letter or digit"


def _engines(sec: Section, problems: list[ConfigProblem]) -> tuple[Engine, ...] | None:
    """``upstream.engines``, or None when the file does not list them."""
    node = sec.node_of("engines")
    if node is None or (isinstance(node, yaml.ScalarNode) and value_of(node) is None):
        return None
    path = join(sec.path, "engines")
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        sec.problem(
            "engines",
            node,
            "must be a non-empty list of {name, url, max_in_flight}",
            value_of(node),
        )
        return None
    engines: list[Engine] = []
    names: set[str] = set()
    urls: dict[str, str] = {}
    for i, item in enumerate(node.value):
        es = Section(item, join(path, i), problems)
        name = es.get("name", f"engine{i}", _check_engine_name)
        es.unique_name(name, names, "engine")
        url_node = es.node_of("url")
        if url_node is None:
            es.problem("url", None, "is required")
            url = DEFAULT_URL
        else:
            where = join(es.path, "url")
            url = check_url(value_of(url_node), where, line_of(url_node), problems, "")
            if url and url in urls:
                other = urls[url]
                es.problem("url", url_node, f"is also engine {other!r}'s url (one entry each)", url)
            urls.setdefault(url, name)
        slots = es.integer("max_in_flight", 1, minimum=1)
        es.close()
        engines.append(Engine(name, url or DEFAULT_URL, slots))
    return tuple(engines)


def read_upstream(sec: Section, problems: list[ConfigProblem]) -> Upstream:
    d = Upstream()
    url = d.url
    node = sec.node_of("url")
    if node is not None:
        url = check_url(value_of(node), join(sec.path, "url"), line_of(node), problems, d.url)
    engines = _engines(sec, problems)
    if engines is not None and node is not None:
        sec.problem(
            "url",
            node,
            "cannot be set with upstream.engines (each engine names its own url); remove one",
            url,
        )
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
        path=pr.get("path", d.probe.path, check_path_glob),
        interval=pr.duration("interval", d.probe.interval),
        timeout=pr.duration("timeout", d.probe.timeout),
    )
    pr.close()
    sec.close()
    if engines is None:  # one engine; its slots (admission.max_in_flight) are set by root
        return Upstream(url, timeouts, limits, passthrough, probe, (Engine(DEFAULT_ENGINE, url),))
    return Upstream(engines[0].url, timeouts, limits, passthrough, probe, engines, listed=True)
