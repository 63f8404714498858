"""Alert delivery: the edge where alerts leave gatekeeper for on-call.

The alert loop hands each evaluation to ``Notifier.submit``, which never
blocks and never does I/O: it puts the batch on a bounded queue and returns.
One task drains the queue into a per-receiver *outbox*; one task per receiver
delivers its outbox with httpx (never the proxy's aiohttp pools, so a stuck
receiver cannot take a connection a generation needs).

The outbox keeps the newest undelivered version of each alert, keyed by its
label fingerprint, so it is bounded by the number of rules however long a
receiver is down, and when the receiver comes back it gets the *current*
state (the newest firing or resolved version), not a replay of history.
A failed attempt is logged and counted, then retried after an exponential
backoff with jitter; nothing is ever given up on while gatekeeper runs.

Receiver types (``alerts.receivers[].type``):

- ``alertmanager``: ``POST <url>/api/v2/alerts``, a JSON list of
  ``{labels, annotations, startsAt, endsAt, generatorURL}``. Firing alerts are
  re-posted every ``resend_interval`` with ``endsAt`` = now + 4 re-send
  intervals (what Prometheus does), so Alertmanager resolves them by itself
  if gatekeeper dies; a resolved alert carries its real ``endsAt``.
- ``webhook``: ``POST <url>`` with the Alertmanager webhook payload (version
  "4", one group per alert name), so bridges for DingTalk, Feishu, WeCom,
  Slack or PagerDuty that sit behind an Alertmanager work unchanged. Sent on
  changes only (firing, resolved), like Alertmanager without repeats.
- ``log``: one structured log line per change, logger ``gatekeeper.alerts``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from gatekeeper import __version__
from gatekeeper.config import Receiver
from gatekeeper.core.asyncutil import cancel_and_wait
from gatekeeper.observability.alerts.rules import Alert, Evaluation
from gatekeeper.observability.metrics import Metrics

log = logging.getLogger("gatekeeper.alerts")

QUEUE_SIZE = 256
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0
# Alertmanager's "never": the endsAt of an alert still firing, in webhook payloads.
ZERO_TIME = "0001-01-01T00:00:00Z"


# --------------------------------------------------------------------------- payloads (pure)


def rfc3339(wall: float) -> str:
    return (
        datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def fingerprint(labels: Mapping[str, str]) -> str:
    """Alertmanager's label-set fingerprint: FNV-1a 64 over sorted name, value pairs."""
    h = 0xCBF29CE484222325
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode() + b"\xff":
                h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def alertmanager_body(alerts: Iterable[Alert], *, wall: float, resend_interval: float) -> list[Any]:
    """The ``POST /api/v2/alerts`` body (postableAlerts)."""
    out = []
    for a in alerts:
        ends = a.ends_at if a.ends_at is not None else wall + 4 * resend_interval
        out.append(
            {
                "labels": dict(a.labels),
                "annotations": dict(a.annotations),
                "startsAt": rfc3339(a.starts_at),
                "endsAt": rfc3339(ends),
                "generatorURL": a.generator_url,
            }
        )
    return out


def webhook_body(receiver: str, alerts: list[Alert], *, external_url: str) -> dict[str, Any]:
    """Alertmanager's webhook payload (version 4) for one group of alerts."""
    labels = [dict(a.labels) for a in alerts]
    common_labels = _common([a.labels for a in alerts])
    group_labels = {"alertname": alerts[0].name}
    return {
        "version": "4",
        "groupKey": "{}:{alertname=%s}" % _quote(alerts[0].name),  # noqa: UP031
        "truncatedAlerts": 0,
        "status": "firing" if any(a.status == "firing" for a in alerts) else "resolved",
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": common_labels,
        "commonAnnotations": _common([a.annotations for a in alerts]),
        "externalURL": external_url,
        "alerts": [
            {
                "status": a.status,
                "labels": lab,
                "annotations": dict(a.annotations),
                "startsAt": rfc3339(a.starts_at),
                "endsAt": rfc3339(a.ends_at) if a.ends_at is not None else ZERO_TIME,
                "generatorURL": a.generator_url,
                "fingerprint": fingerprint(a.labels),
            }
            for a, lab in zip(alerts, labels, strict=True)
        ],
    }


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _common(maps: list[Mapping[str, str]]) -> dict[str, str]:
    first = maps[0]
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in maps[1:])}


def backoff_delay(
    attempt: int,
    rng: Callable[[], float] = random.random,
    *,
    initial: float = BACKOFF_INITIAL,
    cap: float = BACKOFF_MAX,
) -> float:
    """Seconds before retry ``attempt`` (1, 2, ...): doubling, capped, jittered to 50-100%."""
    base = min(cap, initial * 2.0 ** (attempt - 1))
    return base * (0.5 + 0.5 * rng())


# --------------------------------------------------------------------------- delivery


@dataclass(frozen=True)
class Batch:
    """One evaluation's output plus the settings in force when it was made."""

    evaluation: Evaluation
    receivers: tuple[Receiver, ...]
    resend_interval: float
    external_url: str


class DeliveryError(Exception):
    """One attempt at a receiver failed (connect, timeout, or a non-2xx answer)."""


class _Receiver:
    """One receiver's outbox and the task that empties it."""

    def __init__(self, notifier: Notifier, receiver: Receiver):
        self.n = notifier
        self.receiver = receiver
        self.outbox: dict[str, Alert] = {}
        self.wake = asyncio.Event()
        self.failures = 0  # consecutive failed attempts
        self.task = asyncio.create_task(self._run(), name=f"gatekeeper-notify-{receiver.name}")

    def offer(self, alerts: Iterable[Alert]) -> None:
        for a in alerts:
            self.outbox[fingerprint(a.labels)] = a
        if self.outbox:
            self.wake.set()

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.outbox:
                batch = dict(self.outbox)
                try:
                    await self._deliver(list(batch.values()))
                except DeliveryError as exc:
                    self.failures += 1
                    self.n.count(self.receiver.name, "failure")
                    delay = backoff_delay(
                        self.failures, self.n.rng, initial=self.n.backoff[0], cap=self.n.backoff[1]
                    )
                    if self.failures == 1 or self.failures % 10 == 0:
                        log.warning(
                            "alert delivery to %s failed (attempt %d), retrying in %.1fs: %s",
                            self.receiver.name,
                            self.failures,
                            delay,
                            exc,
                        )
                    await asyncio.sleep(delay)
                    continue
                if self.failures:
                    log.info(
                        "alert delivery to %s recovered after %d failed attempt(s)",
                        self.receiver.name,
                        self.failures,
                    )
                    self.failures = 0
                for key, a in batch.items():
                    if self.outbox.get(key) is a:  # not replaced by a newer version meanwhile
                        del self.outbox[key]

    async def _deliver(self, alerts: list[Alert]) -> None:
        r = self.receiver
        if r.type == "log":
            for a in alerts:
                self.n.log_alert(r.name, a)
                self.n.count(r.name, "success")
            return
        assert r.url is not None
        if r.type == "alertmanager":
            body: Any = alertmanager_body(
                alerts, wall=self.n.wall(), resend_interval=self.n.resend_interval
            )
            await self._post(r.url + "/api/v2/alerts", body)
            return
        groups: dict[str, list[Alert]] = {}
        for a in alerts:
            groups.setdefault(a.name, []).append(a)
        for name, group in groups.items():
            await self._post(r.url, webhook_body(r.name, group, external_url=self.n.external_url))
            for a in group:  # delivered: a later group's failure must not resend it
                key = fingerprint(a.labels)
                if self.outbox.get(key) is a:
                    del self.outbox[key]
            log.debug("alert group %s delivered to %s", name, r.name)

    async def _post(self, url: str, body: Any) -> None:
        try:
            resp = await self.n.client.post(url, json=body, timeout=self.receiver.timeout)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"POST {url}: {exc!r}") from exc
        if not 200 <= resp.status_code < 300:
            raise DeliveryError(f"POST {url}: HTTP {resp.status_code} {resp.text[:200]!r}")
        self.n.count(self.receiver.name, "success")


class Notifier:
    """Fans evaluations out to receivers without ever blocking the caller.

    Usage (``loop`` does this, in the app's wiring)::

        async with Notifier(metrics) as notifier:
            notifier.submit(Batch(evaluation, cfg.receivers, cfg.resend_interval, url))
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        queue_size: int = QUEUE_SIZE,
        rng: Callable[[], float] = random.random,
        wall: Callable[[], float] = time.time,
        backoff: tuple[float, float] = (BACKOFF_INITIAL, BACKOFF_MAX),
    ):
        self.metrics = metrics
        self.rng = rng
        self.backoff = backoff
        self.wall = wall
        self.queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=queue_size)
        self.client = httpx.AsyncClient(
            trust_env=False, headers={"User-Agent": f"gatekeeper/{__version__}"}
        )
        self.receivers: dict[Receiver, _Receiver] = {}
        self.resend_interval = 60.0
        self.external_url = ""
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Notifier:
        self._task = asyncio.create_task(self._dispatch(), name="gatekeeper-notify")
        return self

    async def __aexit__(self, *exc: object) -> None:
        tasks = [t for t in (self._task, *(w.task for w in self.receivers.values())) if t]
        await cancel_and_wait(tasks)
        await self.client.aclose()

    def submit(self, batch: Batch) -> None:
        """Queue one evaluation for delivery; never blocks (a full queue drops and counts)."""
        try:
            self.queue.put_nowait(batch)
        except asyncio.QueueFull:
            for r in batch.receivers:
                self.count(r.name, "dropped")
            log.error("alert queue full (%d batches): dropped one evaluation", self.queue.maxsize)

    def count(self, receiver: str, result: str) -> None:
        self.metrics.alert_notifications.labels(receiver, result).inc()

    def log_alert(self, receiver: str, a: Alert) -> None:
        fields: dict[str, Any] = {
            "receiver": receiver,
            "alertname": a.name,
            "status": a.status,
            **{k: v for k, v in a.labels.items() if k != "alertname"},
            "value": a.value,
            "starts_at": rfc3339(a.starts_at),
        }
        if a.ends_at is not None:
            fields["ends_at"] = rfc3339(a.ends_at)
        fields.update(a.annotations)
        level = logging.WARNING if a.status == "firing" else logging.INFO
        log.log(level, "alert %s %s", a.name, a.status, extra={"fields": fields})

    async def _dispatch(self) -> None:
        while True:
            batch = await self.queue.get()
            self.resend_interval = batch.resend_interval
            self.external_url = batch.external_url
            ev = batch.evaluation
            for worker in self._sync_receivers(batch.receivers):
                worker.offer(ev.firing)  # a receiver new to us gets the current state
            for r, worker in self.receivers.items():
                worker.offer(ev.changed)
                if r.type == "alertmanager":
                    worker.offer(ev.resend)

    def _sync_receivers(self, wanted: tuple[Receiver, ...]) -> list[_Receiver]:
        """Follow reloads: start workers for new receivers (returned), stop removed ones."""
        for r in [r for r in self.receivers if r not in wanted]:
            self.receivers.pop(r).task.cancel()
        new = []
        for r in wanted:
            if r not in self.receivers:
                self.receivers[r] = worker = _Receiver(self, r)
                new.append(worker)
                for result in ("success", "failure"):
                    self.metrics.alert_notifications.labels(r.name, result)
        return new
