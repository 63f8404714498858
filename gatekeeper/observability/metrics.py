"""Every Prometheus metric gatekeeper exports, defined once, on a registry passed in.

Names and labels are a contract (issue #3): the Grafana dashboard, the alert
rules and the tests use them. Never the global default registry: two apps in
one test process must not share counters.

Gauges that mirror live state (in-flight count, age of the running generation)
are pointed at it with ``set_function`` (``gauges``) so a scrape reads the truth
at that instant instead of a value someone forgot to update.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

# The label values (outcomes, reasons, error kinds) are defined once, in core.vocab.
from gatekeeper.core.vocab import (
    ADMIT_REASONS,
    ERROR_KINDS,
    JOB_STATES,
    OUTCOMES,
    QUEUE_REASONS,
    RESOURCE_REASONS,
    Outcome,
)
from gatekeeper.observability.jobmetrics import ETA_ERROR_BUCKETS, QUEUE_WAIT_BUCKETS, JobMetrics

__all__ = [
    "ADMIT_REASONS",
    "DURATION_BUCKETS",
    "ERROR_KINDS",
    "ETA_ERROR_BUCKETS",
    "OUTCOMES",
    "QUEUE_WAIT_BUCKETS",
    "Metrics",
]

# Resolution at the seed's scale: sub-second passthrough calls up to 30-minute jobs.
DURATION_BUCKETS = (
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    15,
    30,
    60,
    120,
    300,
    450,
    600,
    750,
    900,
    1200,
    1800,
)
# Waits in the waiting room (issue #9): seconds up to an hour, twice the default max_wait.

# What ``observability.ungated`` reports of a pass request that looks like a generation.
UNGATED_KINDS = ("slow_answer", "gradio_join")

# A queue route's requests can end in every outcome but those of pass and block routes.
_NOT_GATED = (Outcome.PASSED, Outcome.BLOCKED)


class Metrics(JobMetrics):
    def __init__(self, registry: CollectorRegistry | None = None, version: str = "0"):
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gatekeeper_requests",
            "Requests by route and outcome.",
            ["route", "outcome"],
            registry=r,
        )
        self.rejections = Counter(
            "gatekeeper_rejections",
            "Requests turned away, by route and reason code.",
            ["route", "reason"],
            registry=r,
        )
        self.in_flight = Gauge(
            "gatekeeper_in_flight", "Admitted generations running now.", registry=r
        )
        self.max_in_flight = Gauge(
            "gatekeeper_max_in_flight", "Current admission limit.", registry=r
        )
        self.generation_elapsed = Gauge(
            "gatekeeper_generation_elapsed_seconds",
            "Age of the oldest running generation (0 when idle).",
            registry=r,
        )
        self.generation_progress = Gauge(
            "gatekeeper_generation_progress_ratio",
            "Progress (0-1) the engine reports for the oldest running generation that "
            "reports one (a Gradio app's progress frames); 0 when none does.",
            registry=r,
        )
        self.generation_expected = Gauge(
            "gatekeeper_generation_expected_seconds",
            "Current estimate of one generation's duration.",
            registry=r,
        )
        self.cpu_percent = Gauge(
            "gatekeeper_cpu_percent", "System CPU % as admission sees it (smoothed).", registry=r
        )
        self.memory_percent = Gauge(
            "gatekeeper_memory_percent", "System memory % as admission sees it.", registry=r
        )
        self.overloaded = Gauge(
            "gatekeeper_overloaded",
            "1 while a resource is over its threshold (hysteresis).",
            ["resource"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            "gatekeeper_upstream_request_duration_seconds",
            "Time from sending a request upstream to the end of its response.",
            ["route", "code"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "gatekeeper_upstream_errors",
            "Upstream failures by route and kind.",
            ["route", "kind"],
            registry=r,
        )
        self.upstream_up = Gauge(
            "gatekeeper_upstream_up",
            "1 when the periodic upstream probe got an answer.",
            registry=r,
        )
        self.ungated = Counter(
            "gatekeeper_ungated_generations",
            "Requests on pass routes that looked like generations passing ungated, by route"
            " and kind (slow_answer: log.ungated.slow_answer before the head; gradio_join).",
            ["route", "kind"],
            registry=r,
        )
        self.draining = Gauge(
            "gatekeeper_draining",
            "1 while shutting down: waiting for running generations, admitting none.",
            registry=r,
        )
        self.client_connections = Gauge(
            "gatekeeper_client_connections",
            "Client connections open on the public listener.",
            registry=r,
        )
        self.client_connections_closed = Counter(
            "gatekeeper_client_connections_closed",
            "Client connections closed by gatekeeper: header_timeout (no complete request"
            " head in time) or connection_limit (over limits.max_client_connections).",
            ["reason"],
            registry=r,
        )
        for reason in ("header_timeout", "connection_limit"):
            self.client_connections_closed.labels(reason)
        self.refusals_paced = Counter(
            "gatekeeper_refusals_paced",
            "Refusals answered later than decided: past limits.refusal_pacing.rate a second"
            " (a retry storm), each waited for its turn (at most max_delay).",
            registry=r,
        )
        self.refusal_pacing_delay = Gauge(
            "gatekeeper_refusal_pacing_delay_seconds",
            "How far ahead the refusal schedule runs: the wait of a refusal decided now"
            " (0: refusals are answered at once).",
            registry=r,
        )
        self.config_reloads = Counter(
            "gatekeeper_config_reloads", "Config reloads by result.", ["result"], registry=r
        )
        self.config_last_reload_success = Gauge(
            "gatekeeper_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load.",
            registry=r,
        )
        self.build_info = Info("gatekeeper_build", "gatekeeper build.", registry=r)
        self.build_info.info({"version": version})
        for res in RESOURCE_REASONS:
            self.overloaded.labels(res).set(0)
        for result in ("success", "failure"):
            self.config_reloads.labels(result)
        self._alert_metrics(r)
        self._queue_metrics(r)
        self._webhook_metrics(r)
        self._box_metrics(r)
        self._engine_metrics(r)
        self._signal_metrics(r)

    def _engine_metrics(self, r: CollectorRegistry) -> None:
        """One series per engine (issue #11 §1); the totals above stay the box's."""
        self.engine_up = Gauge(
            "gatekeeper_engine_up",
            "1 when the engine answered its last probe (0: down or no answer yet).",
            ["engine"],
            registry=r,
        )
        self.engine_in_flight = Gauge(
            "gatekeeper_engine_in_flight",
            "Generations running on the engine now.",
            ["engine"],
            registry=r,
        )
        self.engine_max_in_flight = Gauge(
            "gatekeeper_engine_max_in_flight",
            "The engine's own slots (upstream.engines[].max_in_flight).",
            ["engine"],
            registry=r,
        )
        self.engine_admitted = Counter(
            "gatekeeper_engine_admitted",
            "Generations started on the engine (admit, queue and gradio routes).",
            ["engine"],
            registry=r,
        )

    def prime_routes(self, routes: Iterable[tuple[str, str]]) -> None:
        """Create each configured route's usual series at 0: (name, action) pairs.

        A counter series that is born at 1 has no earlier sample, so Prometheus'
        ``increase()``/``rate()`` never see that first request: a route's first
        rejection would be missing from the dashboard (issue #3).
        """
        for name, action in routes:
            outcomes: tuple[str, ...]
            reasons: tuple[str, ...]
            if action == "admit":
                outcomes, reasons = (Outcome.ADMITTED, Outcome.REJECTED), ADMIT_REASONS
            elif action == "gradio":  # joins of gated functions are admitted or rejected
                outcomes = (Outcome.ADMITTED, Outcome.REJECTED, Outcome.PASSED, Outcome.BLOCKED)
                reasons = (*ADMIT_REASONS, "blocked")
            elif action == "queue":
                outcomes = tuple(o for o in OUTCOMES if o not in _NOT_GATED)
                reasons = (*ADMIT_REASONS, *QUEUE_REASONS)
                self.queue_wait.labels(name)
                self.coalesced.labels(name)
                for state in JOB_STATES:
                    self.jobs.labels(name, state)
            elif action == "block":
                outcomes, reasons = (Outcome.BLOCKED,), ("blocked",)
            else:
                outcomes, reasons = (Outcome.PASSED,), ()
                for kind in UNGATED_KINDS:
                    self.ungated.labels(name, kind)
            for outcome in outcomes:
                self.requests.labels(name, outcome)
            for reason in reasons:
                self.rejections.labels(name, reason)
            if action != "block":
                for kind in ERROR_KINDS:
                    self.upstream_errors.labels(name, kind)
            if action in ("admit", "queue", "gradio"):
                # The duration panel draws the 2xx generations of the gated routes.
                self.upstream_duration.labels(name, "200")

    def prime_alerts(self, rules: Iterable[tuple[str, str]]) -> None:
        """``gatekeeper_alerts_firing`` at 0 for each (alert, severity) rule, before the
        alert loop's first evaluation; a series already set keeps its value."""
        for alert, severity in rules:
            self.alerts_firing.labels(alert, severity)

    def _signal_metrics(self, r: CollectorRegistry) -> None:
        """The signals of a real engine box (issue #11 §3); wired in ``gauges``. Percent,
        like gatekeeper_cpu_percent and the thresholds they are compared with."""
        self.signal_live = Gauge(
            "gatekeeper_signal_live",
            "1 while a resource signal is read (cgroup, cpu, memory, psi, gpu), 0 if absent.",
            ["signal"],
            registry=r,
        )
        self.pressure = Gauge(
            "gatekeeper_pressure_avg10_percent",
            "PSI avg10: % of the last 10 s that some / all non-idle tasks stalled on the"
            " resource (the engine's cgroup, else /proc/pressure).",
            ["resource", "line"],
            registry=r,
        )
        self.gpu_memory = Gauge(
            "gatekeeper_gpu_memory_percent",
            "GPU memory used %, per NVML device.",
            ["device"],
            registry=r,
        )
        self.gpu_utilization = Gauge(
            "gatekeeper_gpu_utilization_percent",
            "GPU utilisation % (time a kernel ran), per NVML device.",
            ["device"],
            registry=r,
        )
        self.cgroup_memory_max = Gauge(
            "gatekeeper_cgroup_memory_max_bytes",
            "memory.max of the cgroup admission reads (0: no limit; memory is host-wide).",
            registry=r,
        )
        self.cgroup_cpu_limit = Gauge(
            "gatekeeper_cgroup_cpu_limit_cores",
            "cpu.max quota / period of the cgroup admission reads (0: no limit; CPU is host-wide).",
            registry=r,
        )

    def _alert_metrics(self, r: CollectorRegistry) -> None:
        """The built-in alerts (issue #4)."""
        self.alerts_firing = Gauge(
            "gatekeeper_alerts_firing",
            "1 while the built-in alert is firing, 0 otherwise (one series per rule).",
            ["alertname", "severity"],
            registry=r,
        )
        self.alert_notifications = Counter(
            "gatekeeper_alert_notifications",
            "Alert delivery attempts by receiver and result (success, failure, dropped).",
            ["receiver", "result"],
            registry=r,
        )
        self.config_reload_failed = Gauge(
            "gatekeeper_config_reload_failed",
            "1 from a failed config reload until the next good one (alert signal).",
            registry=r,
        )
