"""The live state shared by the proxy and admin handlers.

``Runtime`` bundles everything derived from one validated ``Config`` (the
compiled router and the two upstream pools). A request takes one ``Runtime``
reference at its start and uses it to the end, so a reload — which builds a
new ``Runtime`` and swaps ``AppState.runtime`` in one assignment — can never
hand a request half of the old rules and half of the new.

``AppState`` holds what outlives a reload: the admission gate (running
generations keep their slots across reloads), metrics, the monitor's view,
the upstream probe's verdict and the draining flag.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .admission import DurationEstimator, EngineSlots, Gate, Limits
from .config import DEFAULT_ENGINE, Config, Engine, Pool, Upstream
from .counters import Counters
from .gradioevents import GradioEvents
from .metrics import Metrics
from .routes import PASS_ROUTE, Router
from .upstream import UpstreamPool
from .usage import RuntimeUsage
from .vocab import ErrorKind, Outcome

log = logging.getLogger("gatekeeper.probe")

if TYPE_CHECKING:  # jobs imports state; the waiting room is attached after both exist
    from .jobs import Jobs
    from .sources import Sample


@dataclass(frozen=True)
class EnginePools:
    """One engine's two pools: gated generations, and everything passed through."""

    gated: UpstreamPool
    passthrough: UpstreamPool

    @classmethod
    def build(cls, engine: Engine, up: Upstream, old: EnginePools | None = None) -> EnginePools:
        """The engine's pools; with ``old`` (a reload), each pool whose URL and settings
        did not change is kept, warm connections included, a changed one built anew."""
        suffix = "" if engine.name == DEFAULT_ENGINE else f"-{engine.name}"

        def pool(which: str, settings: Pool, before: UpstreamPool | None) -> UpstreamPool:
            same_url = before is not None and before.base == engine.url.rstrip("/")
            if before is not None and same_url and before.pool == settings:
                return before
            return UpstreamPool(which + suffix, engine.url, settings)

        return cls(
            gated=pool("gated", up.gated, old.gated if old else None),
            passthrough=pool("passthrough", up.passthrough, old.passthrough if old else None),
        )

    def all(self) -> tuple[UpstreamPool, UpstreamPool]:
        return (self.gated, self.passthrough)


@dataclass(frozen=True)
class Runtime:
    config: Config
    router: Router
    # Every engine's pools, by engine name, in the file's order (issue #11 §1).
    engines: Mapping[str, EnginePools]

    @classmethod
    def build(cls, config: Config) -> Runtime:
        """Must run inside the event loop (aiohttp sessions bind to it)."""
        up = config.upstream
        return cls(
            config=config,
            router=Router(config.routes),
            engines={e.name: EnginePools.build(e, up) for e in up.engines},
        )

    def successor(self, config: Config) -> Runtime:
        """The runtime for a reloaded ``config`` (issue #5 §1; engines: issue #11 §1).

        A pool whose URL, timeouts and limits did not change is kept, warm
        connections included; a changed one (or a new engine's) is built anew for
        new requests. The caller closes the pools the successor no longer holds
        (a removed engine's too), once no request uses them any more
        (``reload.Reloader``): a removed engine's running job holds its epoch.
        """
        up = config.upstream
        engines: dict[str, EnginePools] = {}
        for e in up.engines:
            engines[e.name] = EnginePools.build(e, up, self.engines.get(e.name))
        return Runtime(config=config, router=Router(config.routes), engines=engines)

    def pools(self) -> list[UpstreamPool]:
        return [p for e in self.engines.values() for p in e.all()]

    @property
    def first(self) -> EnginePools:
        return next(iter(self.engines.values()))

    @property
    def gated(self) -> UpstreamPool:
        """The first engine's gated pool (the one engine's, with ``upstream.url``)."""
        return self.first.gated

    @property
    def passthrough(self) -> UpstreamPool:
        """The first engine's passthrough pool (a gradio route's: it has one engine)."""
        return self.first.passthrough

    def gated_for(self, engine: str) -> UpstreamPool:
        """The gated pool of the engine a ticket names (it exists: the gate picks from
        the same reload's engines, in the same synchronous step)."""
        return self.engines[engine].gated

    def pass_pool(self, up: Mapping[str, bool | None]) -> UpstreamPool:
        """Where a pass route goes: the first engine (file order) not known to be down;
        with every engine down, the first (its failure is answered 502 as usual)."""
        for name, pools in self.engines.items():
            if up.get(name) is not False:
                return pools.passthrough
        return self.first.passthrough

    async def close(self) -> None:
        for pool in self.pools():
            await pool.close()


def admission_limits(config: Config) -> Limits:
    up = config.upstream
    return Limits(
        max_in_flight=config.admission.max_in_flight,
        retry_after_default=config.admission.retry_after_default,
        engines=tuple(EngineSlots(e.name, e.max_in_flight) for e in up.engines),
        down_retry_after=max(1, math.ceil(up.probe.interval)),
    )


@dataclass
class AppState:
    runtime: Runtime
    gate: Gate
    metrics: Metrics
    clock: Callable[[], float]
    counters: Counters
    started_monotonic: float = 0.0
    started_wall: float = field(default_factory=time.time)
    # Which reload generation ("epoch") of the rules each open request may use.
    usage: RuntimeUsage = field(default_factory=RuntimeUsage)
    # Set by the reload feature: True from a failed reload until the next good one.
    config_reload_failed: bool = False
    # Set by the alert loop (issue #4): the firing alerts as /status lists them.
    alerts_firing: list[dict[str, Any]] = field(default_factory=list)
    # The waiting room (issue #9): queue routes, async jobs, kept results.
    jobs: Jobs | None = None
    # The gated Gradio events in flight (issue #10): gradio routes.
    gradio: GradioEvents | None = None
    # The monitor's last sample (issue #11 §3): which signals are live, PSI, GPUs, cgroup.
    host: Sample | None = None

    @property
    def upstream_up(self) -> bool | None:
        """Any engine up: True; every engine down: False; else None (no answer yet).

        One engine: its probe's verdict, as before several engines existed. The gate
        holds the per-engine verdicts (``Gate.engine_up``): admission reads them.
        """
        verdicts = [self.gate.engine_up.get(e.name) for e in self.config.upstream.engines]
        if any(v is True for v in verdicts):
            return True
        if verdicts and all(v is False for v in verdicts):
            return False
        return None

    @upstream_up.setter
    def upstream_up(self, up: bool | None) -> None:
        for e in self.config.upstream.engines:
            self.gate.engine_up[e.name] = up

    def set_upstream_up(self, up: bool) -> None:
        """Every engine's verdict at once (one engine: the probe's latest)."""
        self.upstream_up = up

    def set_engine_up(self, engine: str, up: bool) -> None:
        """One engine's probe verdict (``gatekeeper_engine_up`` reads it at scrape time).

        A verdict that changes the set of engines that may take a job wakes the
        waiting room: a job may now start on the engine that came back.
        """
        before = self.gate.engine_up.get(engine)
        self.gate.engine_up[engine] = up
        if before is False and up and self.gate.on_free is not None:
            self.gate.on_free()

    def engine_refused(self, engine: str, kind: ErrorKind) -> None:
        """A generation sent to ``engine`` could not connect (``kind`` connect): the
        engine is down from now, not from its next probe (issue #11 §1). Until then the
        gate would send it every next job (it is the least loaded: nothing runs there),
        and each would fail in milliseconds while another engine idled; a crash would
        empty the waiting room into 502s. The probe's next answer says up again (and
        wakes the waiting room). Any other failure (a timeout, a broken answer) is not
        a verdict on the engine: a live engine can time out one song.
        """
        if kind != ErrorKind.CONNECT or self.gate.engine_up.get(engine) is False:
            return
        self.gate.engine_up[engine] = False
        log.warning(
            "engine %s refused a generation's connection: down until its probe answers", engine
        )

    # The proxy handler's names for the ``Counters`` writers.

    def count(self, route: str, outcome: Outcome) -> None:
        self.counters.request(route, outcome)

    def count_rejection(self, route: str, reason: str) -> None:
        self.counters.rejection(route, reason)

    def count_upstream_error(self, route: str, kind: ErrorKind) -> None:
        self.counters.upstream_error(route, kind)

    def prime_metrics(self) -> None:
        """Series of the current routes (and the default pass route) at 0; at start and
        after each reload."""
        routes = (*self.config.routes, PASS_ROUTE)
        self.metrics.prime_routes((r.name, r.action) for r in routes)

    @classmethod
    def create(cls, runtime: Runtime, metrics: Metrics, clock: Callable[[], float]) -> AppState:
        cfg = runtime.config
        gate = Gate(admission_limits(cfg), DurationEstimator(cfg.admission.expected_seconds))
        counters = Counters(metrics)
        gate.on_admit = lambda t: metrics.engine_admitted.labels(t.engine).inc()
        return cls(
            runtime=runtime,
            gate=gate,
            metrics=metrics,
            clock=clock,
            counters=counters,
            started_monotonic=clock(),
            gradio=GradioEvents(gate, metrics, clock, counters.upstream_error),
        )

    @property
    def config(self) -> Config:
        return self.runtime.config

    @property
    def draining(self) -> bool:
        return self.gate.draining


# The typed key under which both aiohttp apps (proxy and admin) find the shared state.
STATE = web.AppKey("state", AppState)
