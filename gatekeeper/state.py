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

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .admission import DurationEstimator, Gate, Limits
from .config import Config, Pool
from .counters import Counters
from .gradioevents import GradioEvents
from .metrics import Metrics
from .routes import PASS_ROUTE, Router
from .upstream import UpstreamPool
from .usage import RuntimeUsage
from .vocab import ErrorKind, Outcome

if TYPE_CHECKING:  # jobs imports state; the waiting room is attached after both exist
    from .jobs import Jobs
    from .sources import Sample


@dataclass(frozen=True)
class Runtime:
    config: Config
    router: Router
    gated: UpstreamPool
    passthrough: UpstreamPool

    @classmethod
    def build(cls, config: Config) -> Runtime:
        """Must run inside the event loop (aiohttp sessions bind to it)."""
        up = config.upstream
        return cls(
            config=config,
            router=Router(config.routes),
            gated=UpstreamPool("gated", up.url, up.gated),
            passthrough=UpstreamPool("passthrough", up.url, up.passthrough),
        )

    def successor(self, config: Config) -> Runtime:
        """The runtime for a reloaded ``config`` (issue #5 §1).

        A pool whose URL, timeouts and limits did not change is kept, warm
        connections included; a changed one is built anew for new requests.
        The caller closes the pools the successor no longer holds, once no
        request uses them any more (``reload.Reloader``).
        """
        up = config.upstream

        def pool(old: UpstreamPool, settings: Pool) -> UpstreamPool:
            if old.base == up.url.rstrip("/") and old.pool == settings:
                return old
            return UpstreamPool(old.name, up.url, settings)

        return Runtime(
            config=config,
            router=Router(config.routes),
            gated=pool(self.gated, up.gated),
            passthrough=pool(self.passthrough, up.passthrough),
        )

    async def close(self) -> None:
        await self.gated.close()
        await self.passthrough.close()


def admission_limits(config: Config) -> Limits:
    return Limits(
        max_in_flight=config.admission.max_in_flight,
        retry_after_default=config.admission.retry_after_default,
    )


@dataclass
class AppState:
    runtime: Runtime
    gate: Gate
    metrics: Metrics
    clock: Callable[[], float]
    counters: Counters
    upstream_up: bool | None = None  # None until the first probe answered
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

    def set_upstream_up(self, up: bool) -> None:
        """The probe's latest verdict (``gatekeeper_upstream_up`` reads it at scrape time)."""
        self.upstream_up = up

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
