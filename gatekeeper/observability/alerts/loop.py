"""The alert loop: live state in, the pure evaluator in the middle, delivery out.

Every ``alerts.evaluation_interval`` the loop reads the signals from the
running gatekeeper (``SignalReader``, over the table in ``inputs``), runs
``rules.Evaluator``, publishes the result (``gatekeeper_alerts_firing``,
``Alerting.alerts_firing`` for ``/status``) and hands it to
``notify.Notifier``, which never blocks. The config is read from the current
``Runtime`` at every tick, so a reload that changes rules, receivers or
intervals applies at the next evaluation.

Rates: gatekeeper's counters only ever grow, so "per minute" is the increase
over the last 60 seconds, taken from the snapshots this loop records at each
tick (``CounterWindow``). That matches ``rate(x[1m]) * 60`` in the exported
Prometheus rules; before a full window has passed, the increase since start
is used (never extrapolated: three rejections in the first second are three,
not 180 a minute).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gatekeeper.config import Config
from gatekeeper.observability.alerts.inputs import SIGNALS, Readings
from gatekeeper.observability.alerts.notify import Batch, Notifier, rfc3339
from gatekeeper.observability.alerts.rules import Evaluation, Evaluator
from gatekeeper.observability.logs import redact_url
from gatekeeper.observability.metrics import Metrics

log = logging.getLogger("gatekeeper.alerts")


class Alerting(Readings, Protocol):
    """What the alert loop reads, and where it publishes the firing alerts (the app's
    state is one)."""

    alerts_firing: list[dict[str, Any]]  # as ``/status`` lists them

    @property
    def metrics(self) -> Metrics: ...

    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def started_monotonic(self) -> float: ...


class CounterWindow:
    """Increase of a monotonic counter over the last ``window`` seconds (pure)."""

    def __init__(self, window: float, *, start: float, initial: float = 0.0):
        self.window = window
        self._samples: deque[tuple[float, float]] = deque([(start, initial)])

    def observe(self, now: float, value: float) -> float:
        """Record ``value`` at ``now``; returns the increase over the window ending now."""
        self._samples.append((now, value))
        # Keep exactly one sample at or before the window's start: the baseline.
        while len(self._samples) >= 2 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()
        base = self._samples[0][1]
        return value - base if value >= base else value  # a reset counts from zero


class SignalReader:
    """Adapter: live readings → ``{signal: value}`` for the pure evaluator (``inputs.SIGNALS``)."""

    def __init__(self, st: Alerting):
        self.st = st
        self._windows = {
            s.name: CounterWindow(s.window, start=st.started_monotonic)
            for s in SIGNALS.values()
            if s.window is not None
        }

    def read(self, now: float) -> dict[str, float | None]:
        values: dict[str, float | None] = {}
        for s in SIGNALS.values():
            value = s.read(self.st, now)
            if s.window is not None and value is not None:
                value = self._windows[s.name].observe(now, value)
            values[s.name] = value
        return values


@dataclass(frozen=True)
class Identity:
    """Who is alerting: the ``instance`` label and the URL receivers link back to."""

    instance: str
    external_url: str

    @classmethod
    def of(cls, config: Config, hostname: str | None = None) -> Identity:
        host = hostname or socket.gethostname()
        admin = config.admin_listen
        a = config.alerts
        listen_host = admin.host if admin.host not in ("0.0.0.0", "::", "") else host
        url_host = f"[{listen_host}]" if ":" in listen_host else listen_host
        return cls(
            instance=a.instance or f"{host}:{admin.port}",
            external_url=a.external_url or f"http://{url_host}:{admin.port}",
        )


def describe_alerts(config: Config) -> list[str]:
    """The alert settings in a few lines (``gatekeeper check`` and the startup log)."""
    a = config.alerts
    receivers = ", ".join(
        f"{r.name} ({r.type}{' ' + redact_url(r.url) if r.url else ''})" for r in a.receivers
    )
    lines = [
        f"alerts: {len(a.rules)} rule(s) every {a.evaluation_interval:g}s, "
        f"resend every {a.resend_interval:g}s; receivers: {receivers or 'none'}"
    ]
    for r in a.rules:
        for_ = f" for {r.for_seconds:g}s" if r.for_seconds else ""
        lines.append(f"  {r.alert}: {r.expr}{for_} [{r.severity}]")
    return lines


class AlertLoop:
    """One ``tick`` per evaluation interval; ``tick`` is callable from tests."""

    def __init__(
        self,
        st: Alerting,
        notifier: Notifier,
        *,
        wall: Callable[[], float] = time.time,
        hostname: str | None = None,
    ):
        self.st = st
        self.notifier = notifier
        self.wall = wall
        self.hostname = hostname
        self.reader = SignalReader(st)
        self.evaluator = Evaluator(instance="")
        self._series: set[tuple[str, str]] = set()

    def tick(self) -> Evaluation:
        st = self.st
        cfg = st.config
        ident = Identity.of(cfg, self.hostname)
        self.evaluator.instance = ident.instance
        self.evaluator.generator_url = ident.external_url + "/"
        now = st.clock()
        ev = self.evaluator.evaluate(
            cfg.alerts.rules,
            self.reader.read(now),
            now=now,
            wall=self.wall(),
            resend_interval=cfg.alerts.resend_interval,
        )
        self._publish(cfg, ev)
        self.notifier.submit(
            Batch(ev, cfg.alerts.receivers, cfg.alerts.resend_interval, ident.external_url)
        )
        return ev

    def _publish(self, cfg: Config, ev: Evaluation) -> None:
        firing = {a.name for a in ev.firing}
        gauge = self.st.metrics.alerts_firing
        series = {(r.alert, r.severity) for r in cfg.alerts.rules}
        for name, severity in self._series - series:  # rules a reload removed
            gauge.remove(name, severity)
        for name, severity in series:
            gauge.labels(name, severity).set(1.0 if name in firing else 0.0)
        self._series = series
        self.st.alerts_firing = [
            {
                "alertname": a.name,
                "severity": a.severity,
                "summary": a.annotations.get("summary", ""),
                "runbook": a.annotations.get("runbook", ""),
                "since": rfc3339(a.starts_at),
            }
            for a in ev.firing
        ]
        for a in ev.changed:
            log.debug("alert %s is now %s", a.name, a.status)

    async def run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # a bug here must never take the proxy down with it
                log.exception("alert evaluation failed; retrying at the next interval")
            await asyncio.sleep(self.st.config.alerts.evaluation_interval)
