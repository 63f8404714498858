"""The pure alert core: the state machine on an injected clock, templates, windows, payloads."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gatekeeper.config import AlertRule
from gatekeeper.observability.alerts.loop import CounterWindow
from gatekeeper.observability.alerts.notify import (
    ZERO_TIME,
    alertmanager_body,
    backoff_delay,
    fingerprint,
    rfc3339,
    webhook_body,
)
from gatekeeper.observability.alerts.rules import Evaluator, format_value, holds, humanize, render

RULE = AlertRule(
    alert="CPUHigh",
    signal="cpu_percent",
    op=">",
    threshold=90.0,
    for_seconds=10.0,
    severity="warning",
    summary="CPU at {{ $value | humanize }}% on {{ $labels.instance }}",
    runbook="stop the other thing",
    labels={"team": "music"},
)
WALL0 = 1_700_000_000.0


def run(
    values: list[float | None], *, step: float = 5.0, rule: AlertRule = RULE, resend: float = 60.0
) -> list[str]:
    """Feed one value per tick; return one word per tick: the changes and resends it produced."""
    ev = Evaluator(instance="box:9090")
    out = []
    for i, v in enumerate(values):
        now = i * step
        r = ev.evaluate([rule], {rule.signal: v}, now=now, wall=WALL0 + now, resend_interval=resend)
        words = [a.status for a in r.changed] + ["resend" for _ in r.resend]
        if not words:
            words = ["pending" if r.pending else ("firing" if r.firing else "-")]
            words = [w if w != "firing" else "(firing)" for w in words]
        out.append("+".join(words))
    return out


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # inactive stays quiet
        ([50, 60, 70], ["-", "-", "-"]),
        # pending at the first true evaluation, firing once true for `for` (10 s = 2 steps)
        ([95, 95, 95, 95], ["pending", "pending", "firing", "(firing)"]),
        # flapping before `for` never fires
        ([95, 50, 95, 50, 95, 50, 95, 50], ["pending", "-"] * 4),
        # resolves once, when the condition turns false
        ([95, 95, 95, 50, 50], ["pending", "pending", "firing", "resolved", "-"]),
        # no value (no data) is false, like an empty PromQL result
        ([95, None, 95, 95, 95], ["pending", "-", "pending", "pending", "firing"]),
        # fires again after a resolve, pending first
        (
            [95, 95, 95, 50, 95, 95, 95],
            ["pending", "pending", "firing", "resolved"] + ["pending"] * 2 + ["firing"],
        ),
        # the threshold itself is not "> 90"
        ([90, 90, 90], ["-", "-", "-"]),
    ],
)
def test_state_machine(values: list[float | None], expected: list[str]) -> None:
    """inactive -> pending -> firing after `for` -> resolved; flapping and no data never fire."""
    assert run(values) == expected


def test_for_zero_fires_at_first_true_evaluation() -> None:
    """`for: 0` fires at the first evaluation where the condition holds."""
    assert run([95, 95, 50], rule=replace(RULE, for_seconds=0)) == [
        "firing",
        "(firing)",
        "resolved",
    ]


def test_resend_every_interval_while_firing() -> None:
    """A firing alert is due for a re-send every resend_interval, and only while firing."""
    got = run([95] * 9 + [50], step=5.0, rule=replace(RULE, for_seconds=0), resend=15.0)
    assert got == ["firing", "(firing)", "(firing)", "resend", "(firing)", "(firing)", "resend",
                   "(firing)", "(firing)", "resolved"]  # fmt: skip


@pytest.mark.parametrize(
    ("op", "threshold", "value", "expected"),
    [
        (">", 1, 2, True), (">", 1, 1, False), (">=", 1, 1, True), ("<", 1, 0, True),
        ("<=", 1, 1, True), ("<=", 1, 2, False), ("==", 0, 0, True), ("==", 0, 1, False),
        ("!=", 0, 1, True), ("!=", 0, 0, False), (">", 1, None, False),
        ("<", 1, float("nan"), False),
    ],
)  # fmt: skip
def test_operators(op: str, threshold: float, value: float | None, expected: bool) -> None:
    """Each comparison operator; no value and NaN are always false."""
    assert holds(replace(RULE, op=op, threshold=threshold), value) is expected


def test_alert_labels_annotations_and_times() -> None:
    """A firing alert carries alertname, severity, instance, service and rule labels; rendered
    annotations; startsAt when it fired; endsAt only once resolved."""
    ev = Evaluator(instance="box:9090", generator_url="http://box:9090/")
    ev.evaluate([RULE], {"cpu_percent": 97.25}, now=0, wall=WALL0, resend_interval=60)
    fired = ev.evaluate([RULE], {"cpu_percent": 97.25}, now=10, wall=WALL0 + 10, resend_interval=60)
    (a,) = fired.changed
    assert a.status == "firing"
    assert a.labels == {
        "alertname": "CPUHigh",
        "severity": "warning",
        "instance": "box:9090",
        "service": "gatekeeper",
        "team": "music",
    }
    assert a.annotations == {
        "summary": "CPU at 97.25% on box:9090",
        "runbook": "stop the other thing",
    }
    assert (a.starts_at, a.ends_at, a.generator_url) == (WALL0 + 10, None, "http://box:9090/")
    (r,) = ev.evaluate(
        [RULE], {"cpu_percent": 10}, now=20, wall=WALL0 + 20, resend_interval=60
    ).changed
    assert (r.status, r.starts_at, r.ends_at, r.labels) == (
        "resolved",
        WALL0 + 10,
        WALL0 + 20,
        a.labels,
    )


def test_reload_removing_a_firing_rule_resolves_it() -> None:
    """A rule that disappears in a reload while firing is resolved, with the same labels."""
    ev = Evaluator(instance="i")
    rule = replace(RULE, for_seconds=0)
    (a,) = ev.evaluate([rule], {"cpu_percent": 99}, now=0, wall=WALL0, resend_interval=60).changed
    (r,) = ev.evaluate([], {"cpu_percent": 99}, now=5, wall=WALL0 + 5, resend_interval=60).changed
    assert (r.status, r.labels) == ("resolved", a.labels)


def test_reload_changing_labels_resolves_old_identity_and_fires_new() -> None:
    """Changing a firing rule's severity resolves the old alert and fires the new one at once."""
    ev = Evaluator(instance="i")
    rule = replace(RULE, for_seconds=30)
    for t in (0, 30):
        ev.evaluate([rule], {"cpu_percent": 99}, now=t, wall=WALL0 + t, resend_interval=60)
    crit = replace(rule, severity="critical")
    old, new = ev.evaluate(
        [crit], {"cpu_percent": 99}, now=35, wall=WALL0 + 35, resend_interval=60
    ).changed
    assert (old.status, old.severity) == ("resolved", "warning")
    assert (new.status, new.severity) == ("firing", "critical")


@pytest.mark.parametrize(
    ("value", "plain", "human"),
    [
        (95.0, "95", "95"), (97.25, "97.25", "97.25"), (0.0, "0", "0"),
        (1234.5, "1234.5", "1.234k"), (0.5, "0.5", "500m"),
        (2_500_000.0, "2500000", "2.5M"), (99.99999, "99.99999", "100"),
    ],
)  # fmt: skip
def test_value_templates_match_prometheus(value: float, plain: str, human: str) -> None:
    """{{ $value }} and {{ $value | humanize }} print numbers the way Prometheus does."""
    assert format_value(value) == plain
    assert humanize(value) == human
    assert render("{{$value}} / {{ $value | humanize }}", value, {}) == f"{plain} / {human}"


def test_render_labels() -> None:
    """{{ $labels.x }} expands to the label's value, or nothing when the label is absent."""
    assert (
        render("on {{ $labels.instance }}{{ $labels.nope }}!", 1, {"instance": "a:1"}) == "on a:1!"
    )


@pytest.mark.parametrize(
    ("ticks", "expected"),
    [
        # (time, counter) after start at t=0 with 0; window 60 s: increase over the last minute
        ([(10, 3)], 3),  # young window: increase since start, not extrapolated
        ([(10, 3), (70, 3)], 0),  # the 3 events are older than a minute now
        ([(10, 3), (50, 10), (70, 12)], 9),  # baseline is the sample at t=10
        ([(30, 5), (60, 8), (90, 20)], 15),  # baseline is the sample at t=30 (= 90 - 60)
        ([(10, 5), (20, 1)], 1),  # a counter reset counts from zero
    ],
)
def test_counter_window(ticks: list[tuple[float, float]], expected: float) -> None:
    """Per-minute signals are the increase over the window ending now, from periodic snapshots."""
    w = CounterWindow(60.0, start=0.0)
    got = [w.observe(t, v) for t, v in ticks][-1]
    assert got == expected


@pytest.mark.parametrize(
    ("attempt", "jitter", "expected"),
    [(1, 1.0, 0.5), (1, 0.0, 0.25), (2, 1.0, 1.0), (4, 1.0, 4.0), (10, 1.0, 30.0), (50, 0.0, 15.0)],
)
def test_backoff(attempt: int, jitter: float, expected: float) -> None:
    """Retry delays double from 0.5 s, cap at 30 s, and are jittered to 50-100 %."""
    assert backoff_delay(attempt, lambda: jitter) == pytest.approx(expected)


def _alerts() -> tuple[object, ...]:
    ev = Evaluator(instance="box:9090", generator_url="http://box:9090/")
    rule = replace(RULE, for_seconds=0)
    (firing,) = ev.evaluate(
        [rule], {"cpu_percent": 95}, now=0, wall=WALL0, resend_interval=60
    ).changed
    (resolved,) = ev.evaluate(
        [rule], {"cpu_percent": 5}, now=1, wall=WALL0 + 1.5, resend_interval=60
    ).changed
    return firing, resolved


def test_alertmanager_body() -> None:
    """POST /api/v2/alerts: labels, annotations, startsAt, generatorURL; endsAt is 4 resends ahead
    while firing (Alertmanager expires it if gatekeeper dies) and the real end once resolved."""
    firing, resolved = _alerts()
    body = alertmanager_body([firing, resolved], wall=WALL0 + 2, resend_interval=60)  # type: ignore[list-item]
    assert body[0] == {
        "labels": firing.labels,  # type: ignore[attr-defined]
        "annotations": {"summary": "CPU at 95% on box:9090", "runbook": "stop the other thing"},
        "startsAt": "2023-11-14T22:13:20.000Z",
        "endsAt": rfc3339(WALL0 + 2 + 240),
        "generatorURL": "http://box:9090/",
    }
    assert body[1]["endsAt"] == "2023-11-14T22:13:21.500Z"


def test_webhook_body_is_alertmanager_v4() -> None:
    """The webhook payload has every field of Alertmanager's version 4 webhook JSON."""
    firing, resolved = _alerts()
    body = webhook_body("chat", [firing], external_url="http://box:9090")  # type: ignore[list-item]
    assert set(body) == {
        "version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels",
        "commonLabels", "commonAnnotations", "externalURL", "alerts",
    }  # fmt: skip
    assert body["version"] == "4"
    assert body["status"] == "firing"
    assert body["receiver"] == "chat"
    assert body["groupLabels"] == {"alertname": "CPUHigh"}
    assert body["groupKey"] == '{}:{alertname="CPUHigh"}'
    assert body["commonLabels"]["severity"] == "warning"
    assert body["commonAnnotations"]["runbook"] == "stop the other thing"
    (a,) = body["alerts"]
    assert a["status"] == "firing" and a["endsAt"] == ZERO_TIME
    assert a["fingerprint"] == fingerprint(firing.labels)  # type: ignore[attr-defined]
    done = webhook_body("chat", [resolved], external_url="http://box:9090")  # type: ignore[list-item]
    assert done["status"] == "resolved" and done["alerts"][0]["endsAt"].endswith("21.500Z")


def test_fingerprint_matches_alertmanager() -> None:
    """Label-set fingerprints are Alertmanager's (FNV-1a 64): stable and order-independent."""
    # An empty set hashes to the FNV-64a offset basis, as in prometheus/common/model.
    assert fingerprint({}) == "cbf29ce484222325"
    assert fingerprint({"a": "1", "b": "2"}) == fingerprint({"b": "2", "a": "1"})
    assert fingerprint({"a": "1"}) != fingerprint({"a": "2"})
