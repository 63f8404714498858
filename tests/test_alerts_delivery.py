"""Alert delivery in process, on real loopback sockets: webhook payloads, a receiver that is
down, the live-state adapter and the alert loop's outputs (metrics, /status, log line)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from support import free_port

from gatekeeper.app.state import AppState
from gatekeeper.app.wiring import create_state
from gatekeeper.config import SIGNALS, AlertRule, Config, Receiver, load_config
from gatekeeper.core.admission import Rejection
from gatekeeper.core.readings import ResourceState
from gatekeeper.observability.alerts.loop import AlertLoop, SignalReader
from gatekeeper.observability.alerts.notify import Batch, Notifier, fingerprint
from gatekeeper.observability.alerts.rules import Evaluation, Evaluator
from gatekeeper.observability.metrics import Metrics
from gatekeeper.observability.status import status_document

RULE = AlertRule(
    alert="CPUHigh",
    signal="cpu_percent",
    op=">",
    threshold=90.0,
    for_seconds=0.0,
    severity="warning",
    summary="CPU at {{ $value | humanize }}%",
    runbook="stop the other thing",
)


class Hook:
    """A webhook receiver on a loopback port that records every JSON body it is sent."""

    def __init__(self, port: int | None = None, status: int = 200):
        self.port = port or free_port()
        self.status = status
        self.bodies: asyncio.Queue[tuple[float, Any]] = asyncio.Queue()
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Hook:
        async def hook(request: web.Request) -> web.Response:
            await self.bodies.put((time.monotonic(), await request.json()))
            return web.json_response({}, status=self.status)

        app = web.Application()
        app.router.add_post("/hook", hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    async def next(self, timeout: float = 5.0) -> Any:
        return (await asyncio.wait_for(self.bodies.get(), timeout))[1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    h = await Hook().start()
    yield h
    await h.stop()


def evaluate(ev: Evaluator, value: float, t: float) -> Evaluation:
    return ev.evaluate([RULE], {"cpu_percent": value}, now=t, wall=1e9 + t, resend_interval=60)


async def until(predicate: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Poll ``predicate`` until it holds or ``seconds`` pass; returns its last value."""
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return predicate()


def counter(metrics: Metrics, receiver: str, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "gatekeeper_alert_notifications_total", {"receiver": receiver, "result": result}
    )
    return value or 0.0


async def test_webhook_receiver_gets_alertmanager_payload(hook: Hook) -> None:
    """A webhook receiver is POSTed the Alertmanager v4 JSON: firing, then resolved."""
    metrics = Metrics()
    receivers = (Receiver("chat", "webhook", hook.url),)
    ev = Evaluator(instance="box:9090", generator_url="http://box:9090/")
    async with Notifier(metrics) as n:
        n.submit(Batch(evaluate(ev, 97, 0), receivers, 60, "http://box:9090"))
        body = await hook.next()
        assert body["version"] == "4"
        assert (body["status"], body["receiver"]) == ("firing", "chat")
        assert body["groupLabels"] == {"alertname": "CPUHigh"}
        assert body["externalURL"] == "http://box:9090"
        assert body["commonLabels"] == {
            "alertname": "CPUHigh",
            "severity": "warning",
            "instance": "box:9090",
            "service": "gatekeeper",
        }
        assert body["commonAnnotations"] == {
            "summary": "CPU at 97%",
            "runbook": "stop the other thing",
        }
        (a,) = body["alerts"]
        assert a["status"] == "firing" and a["generatorURL"] == "http://box:9090/"
        # Re-sends go to Alertmanager receivers only: a chat is told about changes.
        n.submit(Batch(evaluate(ev, 97, 61), receivers, 60, "http://box:9090"))
        n.submit(Batch(evaluate(ev, 20, 62), receivers, 60, "http://box:9090"))
        body = await hook.next()
        assert body["status"] == "resolved"
        assert body["alerts"][0]["fingerprint"] == a["fingerprint"]
        assert body["alerts"][0]["endsAt"] == "2001-09-09T01:47:42.000Z"
        assert hook.bodies.empty()
        assert await until(lambda: counter(metrics, "chat", "success") == 2)
    assert counter(metrics, "chat", "failure") == 0


async def test_receiver_down_is_retried_counted_and_then_gets_the_current_state() -> None:
    """While a receiver is down every attempt fails, is counted and retried with backoff; when
    it returns it gets the newest state of each alert (here: resolved), not a replay."""
    metrics = Metrics()
    down = Hook()  # not started: nothing listens on its port
    receivers = (Receiver("chat", "webhook", down.url, timeout=0.5),)
    ev = Evaluator(instance="i")
    async with Notifier(metrics, rng=lambda: 1.0, backoff=(0.05, 0.2)) as n:
        n.submit(Batch(evaluate(ev, 97, 0), receivers, 60, ""))
        assert await until(lambda: counter(metrics, "chat", "failure") >= 3)
        n.submit(Batch(evaluate(ev, 20, 1), receivers, 60, ""))  # resolved while it is down
        await down.start()
        try:
            body = await down.next()
            assert body["status"] == "resolved"
            assert [a["status"] for a in body["alerts"]] == ["resolved"]
            assert await until(lambda: counter(metrics, "chat", "success") == 1)
            # Quiet: nothing queued, nothing in the outbox, no retry pending, so nothing more
            # can go out until the next evaluation.
            (worker,) = n.receivers.values()
            assert (n.queue.empty(), worker.outbox, worker.failures) == (True, {}, 0)
            # The stale "firing" is never delivered late: the next body is a new change.
            n.submit(Batch(evaluate(ev, 97, 2), receivers, 60, ""))
            body = await down.next()
            assert [(a["status"], a["startsAt"]) for a in body["alerts"]] == [
                ("firing", "2001-09-09T01:46:42.000Z")  # wall 1e9 + 2: the new firing
            ]
            assert await until(lambda: counter(metrics, "chat", "success") == 2)
            assert down.bodies.empty()
        finally:
            await down.stop()


async def test_receiver_answering_500_counts_as_failure(hook: Hook) -> None:
    """A receiver that answers an error status is a failed attempt, retried until it accepts."""
    metrics = Metrics()
    hook.status = 500
    ev = Evaluator(instance="i")
    async with Notifier(metrics, rng=lambda: 0.0, backoff=(0.05, 0.1)) as n:
        n.submit(Batch(evaluate(ev, 97, 0), (Receiver("chat", "webhook", hook.url),), 60, ""))
        await hook.next()
        await hook.next()
        hook.status = 200
        await hook.next()
        assert await until(lambda: counter(metrics, "chat", "success") == 1)
    assert counter(metrics, "chat", "failure") >= 2


async def test_submit_never_blocks_when_the_queue_is_full() -> None:
    """submit() returns at once even with a full queue; the dropped batch is counted."""
    metrics = Metrics()
    n = Notifier(metrics, queue_size=1)  # not entered: nothing drains the queue
    batch = Batch(Evaluation((), (), (), ()), (Receiver("log", "log"),), 60, "")
    t0 = time.perf_counter()
    for _ in range(100):
        n.submit(batch)
    assert time.perf_counter() - t0 < 0.05
    assert counter(metrics, "log", "dropped") == 99
    await n.client.aclose()


@pytest.fixture
async def state() -> AsyncIterator[tuple[AppState, list[float]]]:
    now = [1000.0]
    st = await create_state(Config(), clock=lambda: now[0], metrics=Metrics())
    yield st, now
    await st.runtime.close()


async def test_signal_reader_reads_live_state(state: tuple[AppState, list[float]]) -> None:
    """Every signal comes from live state; rates are the increase over the last minute/hour."""
    st, now = state
    reader = SignalReader(st)
    st.gate.resources = ResourceState(cpu_percent=95.5, memory_percent=40.0)
    st.upstream_up = True
    for _ in range(3):
        st.count_rejection("generate", "busy")
    st.count_rejection("batch-generate", "blocked")
    st.count_upstream_error("generate", "timeout")
    st.count_upstream_error("generate", "connect")
    st.count_upstream_error("generate", "client_disconnect")  # not the engine's fault
    ticket = st.gate.try_admit("generate", now[0] - 30)
    now[0] += 10
    values = reader.read(now[0])
    assert set(values) == set(SIGNALS)
    assert values == {
        "cpu_percent": 95.5,
        "memory_percent": 40.0,
        "in_flight": 1.0,
        "rejections_per_minute": 4.0,
        "blocked_per_minute": 1.0,
        "upstream_errors_per_minute": 2.0,
        "upstream_timeouts_per_hour": 1.0,
        "upstream_up": 1.0,
        "generation_elapsed_seconds": 40.0,
        "config_reload_failed": 0.0,
        "queue_full_ratio": 0.0,  # no waiting room wired: an empty queue
        "queue_oldest_wait_seconds": 0.0,
        "state_free_bytes": None,  # no waiting room wired: no free-space sample
        "webhook_failing_seconds": 0.0,  # no webhook deliverer wired: nothing failing
        "state_db_detached": 0.0,  # nor a database that could be detached
        "box_heartbeat_age_seconds": 0.0,  # a store of one box: no other box to hear from
    }
    now[0] += 61  # a minute later, with no new events: per-minute rates fall to 0
    st.upstream_up, st.config_reload_failed = False, True
    values = reader.read(now[0])
    assert values["rejections_per_minute"] == 0 and values["upstream_timeouts_per_hour"] == 1
    assert (values["upstream_up"], values["config_reload_failed"]) == (0.0, 1.0)
    st.upstream_up = None  # before the first probe: no data, so "upstream_up == 0" cannot fire
    assert reader.read(now[0])["upstream_up"] is None
    assert not isinstance(ticket, Rejection)


class FakeJobs:
    """The three readers ``JobService`` provides to metrics and signals."""

    floor = SimpleNamespace(free=None)  # no free-space sample yet
    db = SimpleNamespace(detached=None)  # the job database at its path

    def __init__(self, depth: int, arrivals: list[float], results: int = 0):
        self._depth, self.arrivals, self.results = depth, arrivals, results

    def depth(self) -> int:
        return self._depth

    def oldest_wait(self, now: float) -> float:
        return max((now - a for a in self.arrivals), default=0.0)

    def results_bytes(self) -> int:
        return self.results


async def test_queue_signals_read_the_waiting_room(state: tuple[AppState, list[float]]) -> None:
    """queue_full_ratio is depth / admission.queue.max_waiting (default 20), 0 when the
    capacity is 0; queue_oldest_wait_seconds is the longest wait at the reader's clock."""
    st, now = state
    reader = SignalReader(st)
    st.jobs = FakeJobs(5, [now[0] - 100, now[0] - 40])  # type: ignore[attr-defined]
    values = reader.read(now[0])
    assert values["queue_full_ratio"] == 5 / 20
    assert values["queue_oldest_wait_seconds"] == 100
    st.jobs = FakeJobs(20, [now[0] - 1])  # type: ignore[attr-defined]
    assert reader.read(now[0] + 9)["queue_full_ratio"] == 1.0
    assert reader.read(now[0] + 9)["queue_oldest_wait_seconds"] == 10
    st.jobs = None  # type: ignore[attr-defined]
    assert reader.read(now[0])["queue_full_ratio"] == 0.0


async def test_alert_loop_publishes_metrics_status_and_log_line(
    state: tuple[AppState, list[float]], caplog: pytest.LogCaptureFixture
) -> None:
    """A firing alert sets gatekeeper_alerts_firing, is listed by /status and the log receiver
    writes one structured line; resolving clears all three."""
    st, now = state
    cfg = load_config(
        "alerts:\n  instance: box-1\n  rules:\n"
        "    - {alert: CPUHigh, expr: 'cpu_percent > 90', for: 0s, severity: critical,"
        " summary: 'CPU {{ $value }}%', runbook: 'stop it'}\n"
        "    - {alert: Idle, expr: 'in_flight == 5', severity: info, summary: s, runbook: r}\n"
    )
    st.runtime = replace(st.runtime, config=cfg)
    caplog.set_level(logging.INFO, logger="gatekeeper.alerts")
    async with Notifier(st.metrics) as n:
        loop = AlertLoop(st, n, wall=lambda: 1_700_000_000.0, hostname="h")
        st.gate.resources = ResourceState(cpu_percent=99.0)
        loop.tick()
        gauge = st.metrics.registry.get_sample_value
        assert (
            gauge("gatekeeper_alerts_firing", {"alertname": "CPUHigh", "severity": "critical"}) == 1
        )
        assert gauge("gatekeeper_alerts_firing", {"alertname": "Idle", "severity": "info"}) == 0
        assert status_document(st)["alerts"] == [
            {
                "alertname": "CPUHigh",
                "severity": "critical",
                "summary": "CPU 99%",
                "runbook": "stop it",
                "since": "2023-11-14T22:13:20.000Z",
            }
        ]
        assert await until(lambda: any(r.message == "alert CPUHigh firing" for r in caplog.records))
        (rec,) = [r for r in caplog.records if r.message == "alert CPUHigh firing"]
        fields = rec.fields  # type: ignore[attr-defined]
        assert fields["instance"] == "box-1" and fields["summary"] == "CPU 99%"
        assert fields["severity"] == "critical" and rec.levelno == logging.WARNING
        st.gate.resources = ResourceState(cpu_percent=10.0)
        now[0] += 1
        loop.tick()
        assert (
            gauge("gatekeeper_alerts_firing", {"alertname": "CPUHigh", "severity": "critical"}) == 0
        )
        assert status_document(st)["alerts"] == []
        assert await until(
            lambda: any(r.message == "alert CPUHigh resolved" for r in caplog.records)
        )
    assert counter(st.metrics, "log", "success") == 2


def test_fingerprint_is_stable_for_the_same_labels() -> None:
    """The outbox key of an alert is its label set's fingerprint."""
    assert fingerprint({"alertname": "A", "instance": "i"}) == fingerprint(
        {"instance": "i", "alertname": "A"}
    )
