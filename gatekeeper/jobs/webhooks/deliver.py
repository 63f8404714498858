"""Sending the outbox: due deliveries, per-destination lanes, one attempt at a time each.

``Deliverer.run`` is a background loop of the proxy app (``app/wiring.py``), off
every request path: it never blocks a dispatch, and the store calls it makes are
the same few-statement ones as the jobs tick. Each pass:

1. takes the due, unleased outbox rows (``JobStore.outbox_take``), skipping the
   destinations whose lane is full, and leases them;
2. hands each to its destination's ``Lane``: at most ``jobs.webhooks.concurrency``
   attempts in flight per destination, each bounded by ``jobs.webhooks.timeout``,
   so a receiver that sleeps or is dead holds only its own lane's places and no
   other destination waits for it;
3. records each attempt's outcome (``policy.classify``): delivered and given-up
   rows go, a 410 drops the destination for that job, anything else is due again
   after ``policy.backoff`` (with jitter), the same ``webhook-id`` each time. The
   first success after failures makes the destination's whole backlog due at once
   (``outbox_wake``): after an outage it drains at the receiver's pace instead of
   over each row's backoff step.

It wakes when the emitter wrote rows (``wake``), else polls every
``POLL_SECONDS`` for retries coming due. Redirects are not followed (a
receiver's 3xx is a failed attempt): an allowed URL may not send gatekeeper
elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from gatekeeper.config import Config
from gatekeeper.core.asyncutil import cancel_and_wait
from gatekeeper.jobs.guard import GuardedStore, StorageError
from gatekeeper.jobs.outbox import REQUEST_DESTINATION, Delivery
from gatekeeper.jobs.webhooks.policy import Outcome, backoff, classify
from gatekeeper.jobs.webhooks.secrets import Keys
from gatekeeper.jobs.webhooks.sign import headers
from gatekeeper.observability.metrics import Metrics

log = logging.getLogger("gatekeeper.webhooks")
# Each attempt is a line of the request log, beside the requests' own (key=value).
access = logging.getLogger("gatekeeper.access")

__all__ = ["Deliverer"]

# How often the loop looks for retries coming due when nothing woke it.
POLL_SECONDS = 0.5
# How often the backlog gauges are refreshed (one COUNT over the outbox).
GAUGE_SECONDS = 1.0
# Rows taken per pass (each destination gets at most its free places of them).
TAKE_LIMIT = 200
# A taken row's lease: far beyond an attempt (the lease only matters if this process
# stopped taking care of it without dying; a restart releases every lease).
LEASE_SECONDS = 3600.0


@dataclass
class Lane:
    """One destination's attempts in flight, and its failing streak."""

    in_flight: int = 0
    waiting: deque[Delivery] = field(default_factory=deque)  # taken, not yet attempted
    failing_since: float | None = None  # wall clock of the first failure since a success
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


def metric_label(destination: str) -> str:
    return "@request" if destination.startswith(REQUEST_DESTINATION) else destination


class Deliverer:
    """The outbox's sender (module text)."""

    def __init__(
        self,
        store: GuardedStore,
        config: Callable[[], Config],
        metrics: Metrics,
        *,
        wall: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self._store = store
        self._config = config
        self._metrics = metrics
        self._wall = wall
        self._transport = transport
        self._lanes: dict[str, Lane] = {}
        self._woken = asyncio.Event()
        self._keys_of: tuple[int, Keys] | None = None
        self._next_gauges = 0.0
        self.attempts = 0
        for outcome in Outcome:  # every series at 0 from the start
            metrics.webhook_deliveries.labels(outcome)
        for d in config().jobs.webhooks.destinations:
            metrics.webhook_failing.labels(d.name).set(0)

    def wake(self) -> None:
        """New rows were (or are about to be) written: look now."""
        self._woken.set()

    def keys(self) -> Keys:
        """The secrets of the live rules (read again after a reload changed the rules)."""
        cfg = self._config()
        if self._keys_of is None or self._keys_of[0] != id(cfg):
            keys = Keys.read(cfg)
            for problem in keys.problems:
                log.error("webhooks: %s (its deliveries wait until it can be read)", problem)
            self._keys_of = (id(cfg), keys)
        return self._keys_of[1]

    def longest_failing(self) -> float:
        """Seconds the longest-failing destination has failed since its last success."""
        now = self._wall()
        streaks = [now - lane.failing_since for lane in self._lanes.values() if lane.failing_since]
        return max(streaks, default=0.0)

    def backlog(self) -> dict[str, object]:
        """The ``webhooks`` object of the status document."""
        b = self._store.outbox_backlog()
        now = self._wall()
        return {
            "backlog": b.count,
            "oldest_seconds": round(max(0.0, now - b.oldest), 1) if b.oldest else 0.0,
            "in_flight": sum(lane.in_flight for lane in self._lanes.values()),
            "failing": sorted(
                {
                    metric_label(d): round(now - lane.failing_since, 1)
                    for d, lane in self._lanes.items()
                    if lane.failing_since is not None
                }.items()
            ),
        }

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        async with httpx.AsyncClient(
            transport=self._transport, limits=limits, follow_redirects=False, trust_env=False
        ) as client:
            try:
                while True:
                    try:
                        self._pass(client)
                    except StorageError as exc:
                        log.error("webhooks: the outbox could not be read: %s", exc.detail)
                    except Exception:
                        log.exception("webhooks: a delivery pass failed")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._woken.wait(), POLL_SECONDS)
                    self._woken.clear()
            finally:
                tasks = [t for lane in self._lanes.values() for t in lane.tasks]
                await cancel_and_wait(tasks)

    def _pass(self, client: httpx.AsyncClient) -> None:
        cfg = self._config().jobs.webhooks
        now = self._wall()
        if now >= self._next_gauges:
            self._next_gauges = now + GAUGE_SECONDS
            self._gauges(now)
        # A lane with a full buffer takes nothing more this pass (its rows stay due).
        full = [d for d, lane in self._lanes.items() if len(lane.waiting) >= cfg.concurrency]
        rows = self._store.outbox_take(now, TAKE_LIMIT, now + LEASE_SECONDS, full)
        for row in rows:
            lane = self._lanes.setdefault(row.destination, Lane())
            lane.waiting.append(row)
        for lane in self._lanes.values():
            self._start(client, lane, cfg.concurrency)

    def _start(self, client: httpx.AsyncClient, lane: Lane, concurrency: int) -> None:
        while lane.waiting and lane.in_flight < concurrency:
            row = lane.waiting.popleft()
            lane.in_flight += 1
            task = asyncio.create_task(self._attempt(client, lane, row), name="webhook")
            lane.tasks.add(task)
            task.add_done_callback(lane.tasks.discard)

    def _gauges(self, now: float) -> None:
        b = self._store.outbox_backlog()
        self._metrics.webhook_backlog.set(b.count)
        self._metrics.webhook_oldest_undelivered.set(
            max(0.0, now - b.oldest) if b.oldest is not None else 0.0
        )
        streaks: dict[str, float] = {}  # by label: the requests' own lanes share one
        for d, lane in self._lanes.items():
            since = lane.failing_since
            label = metric_label(d)
            streak = 0.0 if since is None else max(0.0, now - since)
            streaks[label] = max(streaks.get(label, 0.0), streak)
        for label, streak in streaks.items():
            self._metrics.webhook_failing.labels(label).set(streak)

    async def _attempt(self, client: httpx.AsyncClient, lane: Lane, row: Delivery) -> None:
        cfg = self._config().jobs.webhooks
        status: int | None = None
        error = ""
        started = time.monotonic()
        try:
            key = self.keys().key_for(row.destination)
            if key is None:
                error = "no signing secret (see the start log)"
            else:
                sent = headers(key, row.id, int(self._wall()), row.payload)
                resp = await client.post(
                    row.url, content=row.payload, headers=sent, timeout=cfg.timeout
                )
                status = resp.status_code
                error = f"HTTP {status}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        finally:
            lane.in_flight -= 1
        self.attempts += 1
        outcome = classify(status)
        now = self._wall()
        delay = backoff(row.attempts + 1)
        if outcome is Outcome.RETRY and now + delay - row.created > cfg.max_age:
            outcome = Outcome.EXPIRED
        try:
            self._record(row, outcome, now + delay, error)
            # Back after failures: its backlog is due now, not at each row's backoff.
            back = outcome is Outcome.DELIVERED and lane.failing_since is not None
            if back and self._store.outbox_wake(row.destination, now):
                self.wake()
        except StorageError as exc:  # the lease stays: retried after a restart
            log.error("webhooks: delivery %s not recorded: %s", row.id, exc.detail)
        lane.failing_since = (
            None
            if outcome is Outcome.DELIVERED
            else (lane.failing_since or now)
            if outcome is Outcome.RETRY
            else lane.failing_since
        )
        self._metrics.webhook_deliveries.labels(outcome).inc()
        fields: dict[str, object] = {
            "delivery_id": row.id,
            "event": row.event,
            "job": row.job_id[:6] + "…",
            "destination": metric_label(row.destination),
            "attempt": row.attempts + 1,
            "status": status,
            "outcome": str(outcome),
            "total_s": round(time.monotonic() - started, 3),
        }
        if outcome is not Outcome.DELIVERED:
            fields["error"] = error
        level = logging.INFO if outcome is Outcome.DELIVERED else logging.WARNING
        access.log(level, "webhook", extra={"fields": fields})
        self._start(client, lane, self._config().jobs.webhooks.concurrency)
        if outcome is not Outcome.RETRY:
            self.wake()  # the next event of this job (held behind this one) may be taken

    def _record(self, row: Delivery, outcome: Outcome, next_at: float, error: str) -> None:
        if outcome is Outcome.RETRY:
            self._store.outbox_retry(row.id, next_at, error)
        elif outcome is Outcome.GONE:
            self._store.outbox_gone(row.job_id, row.destination)
        else:
            self._store.outbox_delivered(row.id)
