"""``upstream``: the engine's URL, the gated and passthrough pools, the probe."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigProblem
from .reader import Section, join, line_of, value_of
from .values import check_path_glob, check_url


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


@dataclass(frozen=True)
class Upstream:
    url: str = DEFAULT_URL
    # The gated pool (admit routes): the seed's numbers.
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: PoolLimits = field(default_factory=PoolLimits)
    # Pass routes get their own pool so a 15-minute job never starves status polls.
    passthrough: Pool = field(default_factory=lambda: Pool(limits=PASSTHROUGH_LIMITS))
    probe: Probe = field(default_factory=Probe)

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


def read_upstream(sec: Section, problems: list[ConfigProblem]) -> Upstream:
    d = Upstream()
    url = d.url
    node = sec.node_of("url")
    if node is not None:
        url = check_url(value_of(node), join(sec.path, "url"), line_of(node), problems, d.url)
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
    return Upstream(url, timeouts, limits, passthrough, probe)
