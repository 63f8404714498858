"""Alert rules evaluated with Prometheus semantics: a pure state machine.

Plain values in (the rules, one value per signal, the clock), plain values out
(which alerts changed, which are due for a re-send). No aiohttp, no httpx, no
reading of live state: ``loop`` samples the signals and ``notify``
delivers, so this module is tested with tables and an injected clock.

Each rule is one alert (gatekeeper's signals have no label dimensions)::

                condition true              true for ``for`` seconds
    inactive ------------------> pending ---------------------------> firing
        ^                           |                                    |
        +---- condition false ------+        condition false: resolved --+

Invariants, as in Prometheus' rule manager:

1. An alert fires only after its condition held at *every* evaluation for
   ``for`` seconds; one false evaluation while pending returns it to inactive,
   so flapping input never fires. ``for: 0`` fires at the first true evaluation.
2. A signal without a value (``None``: e.g. no probe answered yet) makes the
   condition false, like an empty PromQL result.
3. Every firing alert is eventually followed by exactly one resolved alert with
   the same labels: when its condition turns false, when its rule disappears
   in a reload, or when a reload changes its labels (the old identity resolves;
   the new one fires at the same evaluation if the condition still holds, since
   it has held all along).
4. Firing alerts are re-sent every ``resend_interval`` (Alertmanager forgets
   alerts that are not re-sent before their ``endsAt``).

Times: ``now`` is a monotonic clock (durations, ``for``, resends); ``wall`` is
Unix time for the ``startsAt``/``endsAt`` receivers see.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from gatekeeper.config import AlertRule

SERVICE = "gatekeeper"

_OPS: Mapping[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


def holds(rule: AlertRule, value: float | None) -> bool:
    """The rule's condition for one signal value; no value (or NaN) is false."""
    if value is None or math.isnan(value):
        return False
    return _OPS[rule.op](value, rule.threshold)


# --------------------------------------------------------------------------- templates


def format_value(v: float) -> str:
    """``{{ $value }}`` as Go prints a float64: ``95``, ``0.5``, ``1e+21``."""
    if math.isfinite(v) and v == int(v) and abs(v) < 1e21:
        return str(int(v))
    text = repr(v)
    return text.replace("inf", "+Inf").replace("-+Inf", "-Inf").replace("nan", "NaN")


def humanize(v: float) -> str:
    """Prometheus' ``humanize`` template function: 4 significant digits, SI prefix."""
    if v == 0 or not math.isfinite(v):
        return f"{v:.4g}"
    prefix = ""
    if abs(v) >= 1:
        for p in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(v) < 1000:
                break
            prefix, v = p, v / 1000
    else:
        for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
            if abs(v) >= 1:
                break
            prefix, v = p, v * 1000
    return f"{v:.4g}{prefix}"


def humanize_duration(v: float) -> str:
    """Prometheus' ``humanizeDuration``: ``18m 0s``, ``2h 0m 5s``, ``1d 0h 0m 0s``."""
    if not math.isfinite(v):
        return f"{v:.4g}"
    if abs(v) >= 1:
        sign = "-" if v < 0 else ""
        t = int(abs(v))
        d, h, m, sec = t // 86400, t // 3600 % 24, t // 60 % 60, t % 60
        if d:
            return f"{sign}{d}d {h}h {m}m {sec}s"
        if h:
            return f"{sign}{h}h {m}m {sec}s"
        if m:
            return f"{sign}{m}m {sec}s"
        return f"{sign}{abs(v):.4g}s"
    prefix = ""
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if v == 0 or abs(v) >= 1:
            break
        prefix, v = p, v * 1000
    return f"{v:.4g}{prefix}s"


_TEMPLATE = re.compile(
    r"\{\{\s*(\$value(?:\s*\|\s*(humanizeDuration|humanize))?|\$labels\.(\w+))\s*\}\}"
)


def render(template: str, value: float, labels: Mapping[str, str]) -> str:
    """Expand the template subset config allows, exactly as Prometheus would."""

    def expand(m: re.Match[str]) -> str:
        if m.group(3) is not None:
            return labels.get(m.group(3), "")
        if m.group(2) == "humanize":
            return humanize(value)
        if m.group(2) == "humanizeDuration":
            return humanize_duration(value)
        return format_value(value)

    return _TEMPLATE.sub(expand, template)


# --------------------------------------------------------------------------- the machine


@dataclass(frozen=True)
class Alert:
    """One alert as receivers see it (the Alertmanager data model)."""

    name: str
    status: Literal["firing", "resolved"]
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: float  # wall clock: when it fired (Prometheus sends FiredAt as startsAt)
    ends_at: float | None  # wall clock; set once resolved
    value: float
    generator_url: str = ""

    @property
    def severity(self) -> str:
        return self.labels.get("severity", "")


@dataclass(frozen=True)
class Evaluation:
    """The outcome of one evaluation."""

    changed: tuple[Alert, ...]  # turned firing or resolved at this evaluation
    resend: tuple[Alert, ...]  # still firing and due for a re-send (Alertmanager)
    firing: tuple[Alert, ...]  # every alert firing now
    pending: tuple[str, ...]  # names of rules whose condition holds, not yet for ``for``


@dataclass
class _State:
    phase: Literal["pending", "firing"]
    active_since: float  # monotonic
    labels: Mapping[str, str]
    value: float
    fired_wall: float = 0.0
    last_sent: float = -math.inf


@dataclass
class Evaluator:
    """Holds each rule's phase between evaluations; feed it one ``evaluate`` per tick."""

    instance: str
    generator_url: str = ""
    _states: dict[str, _State] = field(default_factory=dict)

    def labels(self, rule: AlertRule) -> dict[str, str]:
        return {
            **rule.labels,
            "alertname": rule.alert,
            "severity": rule.severity,
            "instance": self.instance,
            "service": SERVICE,
        }

    def evaluate(
        self,
        rules: Iterable[AlertRule],
        values: Mapping[str, float | None],
        *,
        now: float,
        wall: float,
        resend_interval: float,
    ) -> Evaluation:
        changed: list[Alert] = []
        resend: list[Alert] = []
        firing: list[Alert] = []
        pending: list[str] = []
        seen: set[str] = set()
        for rule in rules:
            seen.add(rule.alert)
            value = values.get(rule.signal)
            st = self._states.get(rule.alert)
            labels = self.labels(rule)
            if st is not None and st.labels != labels and st.phase == "firing":
                # A reload changed the alert's identity: resolve the old one (invariant 3).
                changed.append(self._alert(rule, st, wall, resolved=True))
                st.labels, st.last_sent = labels, -math.inf
                st.phase = "pending"
            if not holds(rule, value):
                if st is not None and st.phase == "firing":
                    changed.append(self._alert(rule, st, wall, resolved=True))
                self._states.pop(rule.alert, None)
                continue
            assert value is not None
            if st is None:
                st = self._states[rule.alert] = _State("pending", now, labels, value)
            st.labels, st.value = labels, value
            if st.phase == "pending" and now - st.active_since >= rule.for_seconds:
                st.phase = "firing"
                st.fired_wall = wall
                st.last_sent = now
                changed.append(self._alert(rule, st, wall))
            elif st.phase == "firing" and now - st.last_sent >= resend_interval:
                st.last_sent = now
                resend.append(self._alert(rule, st, wall))
            if st.phase == "firing":
                firing.append(self._alert(rule, st, wall))
            else:
                pending.append(rule.alert)
        for name in [n for n in self._states if n not in seen]:
            st = self._states.pop(name)
            if st.phase == "firing":
                changed.append(self._orphan(name, st, wall))
        return Evaluation(tuple(changed), tuple(resend), tuple(firing), tuple(pending))

    def _alert(self, rule: AlertRule, st: _State, wall: float, *, resolved: bool = False) -> Alert:
        return Alert(
            name=rule.alert,
            status="resolved" if resolved else "firing",
            labels=dict(st.labels),
            annotations={
                "summary": render(rule.summary, st.value, st.labels),
                "runbook": render(rule.runbook, st.value, st.labels),
            },
            starts_at=st.fired_wall,
            ends_at=wall if resolved else None,
            value=st.value,
            generator_url=self.generator_url,
        )

    def _orphan(self, name: str, st: _State, wall: float) -> Alert:
        """The resolution of an alert whose rule a reload removed."""
        return Alert(
            name=name,
            status="resolved",
            labels=dict(st.labels),
            annotations={"summary": f"rule {name} was removed by a config reload"},
            starts_at=st.fired_wall,
            ends_at=wall,
            value=st.value,
            generator_url=self.generator_url,
        )
