"""The alert signals: for each, how to read it live and how to ask Prometheus for it.

One table serves three readers, so a signal can never mean one thing to
gatekeeper's own evaluator and another to Prometheus or the dashboard:

- ``loop.SignalReader`` calls ``read`` every evaluation; for a *rate*
  signal (``window`` set) ``read`` gives the counter's total and the reader
  turns it into the increase over the last ``window`` seconds;
- ``promrules`` exports each rule as ``AlertInput.promql()`` plus its comparison;
- the dashboard draws the gauge signals with ``AlertInput.promql(<instance matcher>)``.

A *ratio* signal (``per`` set) is one gauge over another, 0 where the divisor
is 0 (``queue_full_ratio`` with ``max_waiting: 0``), in both readers.

The waiting room's readers (``queue_*``) are here too, shared with ``gauges``:
``Readings.jobs`` (the waiting room, ``WaitingRoom``: the app passes the
``jobs.service.JobService``) may be None, which reads as an empty queue, so the
metrics exist before the first job.

A rate over ``window`` seconds is ``rate(counter[window]) * window``: the
increase over the window, which is what the built-in evaluator computes.
Every expression is aggregated ``by (instance)``, so one alert fires per
gatekeeper however many label sets a counter has.

The names are ``config.SIGNALS`` (config validates rules against them and
imports nothing of ours); a test holds this table's keys equal to it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from gatekeeper.config import Config
from gatekeeper.core.admission import Gate
from gatekeeper.observability.counters import Counters


class FreeSpace(Protocol):
    """The state directory's last free-space sample (``jobs.floor.DiskFloor``)."""

    @property
    def free(self) -> int | None: ...


class DbPlace(Protocol):
    """Whether the job database is at its path (``jobs.dbwatch.DbWatch``)."""

    @property
    def detached(self) -> str | None: ...


class WaitingRoom(Protocol):
    """The waiting room as the alert inputs and the gauges read it."""

    @property
    def floor(self) -> FreeSpace: ...

    @property
    def db(self) -> DbPlace: ...

    def depth(self) -> int: ...

    def oldest_wait(self, now: float) -> float: ...

    def results_bytes(self) -> int: ...


class FailingDestinations(Protocol):
    """The webhook deliverer (``jobs.webhooks.deliver.Deliverer``), as the alert reads it."""

    def longest_failing(self) -> float: ...


class Boxes(Protocol):
    """The boxes sharing the job store as last read (``jobs.fleet.FleetWatch``; issue #21)."""

    def ages(self, now: float) -> Mapping[str, float]:
        """Each running box's heartbeat age in seconds, by box id."""

    def running_on(self) -> Mapping[str, int]:
        """Each running box's running jobs, by box id."""

    @property
    def queued(self) -> int | None:
        """Jobs waiting in the whole shared queue; None before the first read."""

    @property
    def running(self) -> int | None:
        """Jobs running on any box; None before the first read."""


class Readings(Protocol):
    """What the alert inputs read of the running gatekeeper (the app's state is one)."""

    @property
    def config(self) -> Config: ...

    @property
    def gate(self) -> Gate: ...

    @property
    def counters(self) -> Counters: ...

    @property
    def upstream_up(self) -> bool | None: ...

    @property
    def config_reload_failed(self) -> bool: ...

    @property
    def jobs(self) -> WaitingRoom | None: ...

    @property
    def webhooks(self) -> FailingDestinations | None: ...

    @property
    def boxes(self) -> Boxes | None: ...


Reader = Callable[[Readings, float], "float | None"]


def prom_duration(seconds: float) -> str:
    """Seconds in Prometheus' duration syntax: ``2m``, ``90s``, ``1h``, ``500ms``."""
    ms = round(seconds * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


@dataclass(frozen=True)
class AlertInput:
    name: str
    metric: str  # the series gatekeeper exports for it
    read: Reader  # (state, now) -> the gauge's value, or a rate signal's counter total
    window: float | None = None  # seconds: a rate signal, the increase over this window
    matchers: tuple[str, ...] = ()  # label matchers on ``metric``, e.g. 'kind="timeout"'
    per: str | None = None  # a ratio signal: ``metric`` / this gauge, 0 where it is 0

    def promql(self, *extra: str) -> str:
        """The signal as PromQL; ``extra`` matchers go first (the dashboard's instance)."""
        matchers = (*extra, *self.matchers)
        braces = "{" + ",".join(matchers) + "}" if matchers else ""
        series = self.metric + braces
        if self.per is not None:
            # `> 0` drops a zero divisor, `or` puts 0 in its place; the outer parentheses
            # keep a rule's comparison (which binds tighter than `or`) on the whole.
            num = f"max by (instance) ({series})"
            den = f"max by (instance) ({self.per}{braces} > 0)"
            return f"(({num} / {den}) or ({num} * 0))"
        if self.window is None:
            return f"max by (instance) ({series})"
        return f"sum by (instance) (rate({series}[{prom_duration(self.window)}])) * {self.window:g}"


def _oldest_elapsed(st: Readings, now: float) -> float:
    elapsed = st.gate.elapsed(now)
    return max(elapsed) if elapsed else 0.0


def _upstream_up(st: Readings, now: float) -> float | None:
    return None if st.upstream_up is None else float(st.upstream_up)


def _upstream_errors(st: Readings, now: float) -> float:
    # A client hanging up is not the engine's fault.
    errors = st.counters.upstream_errors_by_kind
    return float(sum(v for k, v in errors.items() if k != "client_disconnect"))


# --------------------------------------------------------------------------- the waiting room


def queue_depth(st: Readings) -> int:
    return 0 if st.jobs is None else st.jobs.depth()


def queue_oldest_wait(st: Readings, now: float) -> float:
    return 0.0 if st.jobs is None else st.jobs.oldest_wait(now)


def results_bytes(st: Readings) -> int:
    return 0 if st.jobs is None else st.jobs.results_bytes()


def state_free_bytes(st: Readings, now: float = 0.0) -> float | None:
    """Free bytes of the state directory; None before the first sample (no alert fires)."""
    free = None if st.jobs is None else st.jobs.floor.free
    return None if free is None else float(free)


def state_db_detached(st: Readings, now: float = 0.0) -> float:
    """1 while the job database is not at its path and could not be put back."""
    return float(st.jobs is not None and st.jobs.db.detached is not None)


def queue_bounds(st: Readings) -> tuple[int, float]:
    """(max_waiting, max_wait) of the live rules."""
    queue = st.config.admission.queue
    return queue.max_waiting, queue.max_wait


def _queue_full_ratio(st: Readings, now: float) -> float:
    capacity = queue_bounds(st)[0]
    return queue_depth(st) / capacity if capacity > 0 else 0.0


def box_heartbeat_age(st: Readings, now: float) -> float:
    """The oldest heartbeat of the boxes sharing the job store; 0 with a store of one box."""
    ages = {} if st.boxes is None else st.boxes.ages(now)
    return max(ages.values(), default=0.0)


def _table(*signals: AlertInput) -> Mapping[str, AlertInput]:
    return {s.name: s for s in signals}


SIGNALS: Mapping[str, AlertInput] = _table(
    AlertInput(
        "cpu_percent",
        "gatekeeper_cpu_percent",
        lambda st, now: st.gate.resources.cpu_percent,
    ),
    AlertInput(
        "memory_percent",
        "gatekeeper_memory_percent",
        lambda st, now: st.gate.resources.memory_percent,
    ),
    AlertInput("in_flight", "gatekeeper_in_flight", lambda st, now: float(st.gate.in_flight)),
    AlertInput(
        "rejections_per_minute",
        "gatekeeper_rejections_total",
        lambda st, now: float(sum(st.counters.rejections_by_reason.values())),
        window=60.0,
    ),
    AlertInput(
        "blocked_per_minute",
        "gatekeeper_rejections_total",
        lambda st, now: float(st.counters.rejections_by_reason.get("blocked", 0)),
        window=60.0,
        matchers=('reason="blocked"',),
    ),
    AlertInput(
        "upstream_errors_per_minute",
        "gatekeeper_upstream_errors_total",
        _upstream_errors,
        window=60.0,
        matchers=('kind!="client_disconnect"',),
    ),
    AlertInput(
        "upstream_timeouts_per_hour",
        "gatekeeper_upstream_errors_total",
        lambda st, now: float(st.counters.upstream_errors_by_kind.get("timeout", 0)),
        window=3600.0,
        matchers=('kind="timeout"',),
    ),
    AlertInput("upstream_up", "gatekeeper_upstream_up", _upstream_up),
    AlertInput(
        "generation_elapsed_seconds", "gatekeeper_generation_elapsed_seconds", _oldest_elapsed
    ),
    AlertInput(
        "config_reload_failed",
        "gatekeeper_config_reload_failed",
        lambda st, now: float(st.config_reload_failed),
    ),
    AlertInput(
        "queue_full_ratio",
        "gatekeeper_queue_depth",
        _queue_full_ratio,
        per="gatekeeper_queue_capacity",
    ),
    AlertInput(
        "queue_oldest_wait_seconds", "gatekeeper_queue_oldest_wait_seconds", queue_oldest_wait
    ),
    AlertInput("state_free_bytes", "gatekeeper_state_free_bytes", state_free_bytes),
    # The longest failing streak of a webhook destination (issue #20 §1); Prometheus
    # takes the max over the destination label, as the built-in reader does.
    AlertInput(
        "webhook_failing_seconds",
        "gatekeeper_webhook_destination_failing_seconds",
        lambda st, now: 0.0 if st.webhooks is None else st.webhooks.longest_failing(),
    ),
    AlertInput("state_db_detached", "gatekeeper_state_db_detached", state_db_detached),
    # Every box exports every box's age (issue #21); Prometheus takes the max over the
    # box label, as the built-in reader does.
    AlertInput(
        "box_heartbeat_age_seconds", "gatekeeper_box_heartbeat_age_seconds", box_heartbeat_age
    ),
)
