"""The live state of one running gatekeeper: private to the wiring.

``AppState`` holds what outlives a reload: the current ``Runtime`` (swapped in
one assignment by a reload, ``lifecycle.runtime``), the admission gate (running
generations keep their slots across reloads), metrics and counters, the reload
epochs, the waiting room, the Gradio events, the monitor's last sample and the
firing alerts. Nothing outside ``gatekeeper.app`` imports it: each feature
declares the small Protocol it reads (``observability.status.StatusSource``,
``observability.gauges.Mirrored``, ``observability.alerts.loop.Alerting``,
``lifecycle.reload.Reloadable``, ``lifecycle.haproxy_agent.Watched``,
``admin.Observed``, ...) and this class satisfies them all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gatekeeper.config import Config
from gatekeeper.core.admission import Gate
from gatekeeper.core.estimator import DurationEstimator
from gatekeeper.core.routes import PASS_ROUTE
from gatekeeper.core.vocab import ErrorKind, Outcome
from gatekeeper.gradio.events import GradioEvents
from gatekeeper.jobs.service import JobService
from gatekeeper.jobs.views import jobs_status, queue_status
from gatekeeper.jobs.webhooks.deliver import Deliverer
from gatekeeper.lifecycle.epochs import RuntimeUsage
from gatekeeper.lifecycle.probe import engine_busy, engine_refused, engine_verdict
from gatekeeper.lifecycle.runtime import Runtime, admission_limits
from gatekeeper.observability.counters import Counters
from gatekeeper.observability.metrics import Metrics
from gatekeeper.observability.ungated import UngatedWatch
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
    # The waiting room (issue #9): queue routes, async jobs, kept results; attached by
    # ``create_state`` once the state it reads exists.
    jobs: JobService | None = None
    # The webhook outbox's sender (issue #20 §1), while the waiting room runs.
    webhooks: Deliverer | None = None
    # The gated Gradio events in flight (issue #10): gradio routes.
    gradio: GradioEvents | None = None
    # The monitor's last sample (issue #11 §3): which signals are live, PSI, GPUs, cgroup.
    host: Sample | None = None
    # Requests that looked like generations but passed ungated (issue #18 §7).
    ungated: UngatedWatch = field(default_factory=UngatedWatch)

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
        """One engine's probe verdict (``probe.engine_verdict``)."""
        engine_verdict(self.gate, engine, up)

    def set_engine_busy(self, engine: str, busy: bool | None) -> None:
        """One engine's own busy signal (``probe.engine_busy``; issue #18 §5)."""
        engine_busy(self.gate, engine, busy)

    def engine_refused(self, engine: str, gone: bool) -> None:
        """A failed generation's verdict on ``engine`` (``probe.engine_refused``)."""
        engine_refused(self.gate, engine, gone)

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
        self.metrics.prime_alerts((r.alert, r.severity) for r in self.config.alerts.rules)

    def queue_sections(self, now: float, limit: int | None) -> Mapping[str, Any]:
        """The waiting room's sections of the status document (none without one)."""
        if self.jobs is None:
            return {}
        jobs = jobs_status(self.jobs)
        if self.webhooks is not None:
            jobs["webhooks"] = self.webhooks.backlog()
        return {"queue": queue_status(self.jobs, now, limit), "jobs": jobs}

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
