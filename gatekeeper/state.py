"""The live state shared by the proxy and admin handlers (the wiring's hub).

``AppState`` holds what outlives a reload: the current ``Runtime`` (swapped in
one assignment by a reload, ``lifecycle.runtime``), the admission gate (running
generations keep their slots across reloads), metrics and counters, the reload
epochs, the waiting room, the Gradio events and the monitor's last sample.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gatekeeper.config import Config
from gatekeeper.core.admission import DurationEstimator, Gate
from gatekeeper.core.routes import PASS_ROUTE
from gatekeeper.core.vocab import ErrorKind, Outcome
from gatekeeper.gradio.events import GradioEvents
from gatekeeper.jobs.service import JobService
from gatekeeper.lifecycle.epochs import RuntimeUsage
from gatekeeper.lifecycle.runtime import Runtime, admission_limits
from gatekeeper.observability.counters import Counters
from gatekeeper.observability.metrics import Metrics

log = logging.getLogger("gatekeeper.probe")

if TYPE_CHECKING:
    from gatekeeper.resources.samplers import Sample


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
    jobs: JobService | None = None
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
