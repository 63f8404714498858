"""The waiting room's, the webhooks' and the shared store's boxes' metrics (issues #9,
#20, #21): a part of ``metrics.Metrics``, which every metric is declared on once."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

QUEUE_WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1200, 1800, 2700, 3600)
# |actual - predicted| / actual of a job's done time, predicted at its arrival (goal: 0.2).
ETA_ERROR_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5)


class JobMetrics:
    """Mixed into ``Metrics``: its queue and webhook series."""

    def _box_metrics(self, r: CollectorRegistry) -> None:
        """The boxes sharing a job store (``jobs.store: postgres``, issue #21), read from it
        every second; absent with a store of one box. Every box exports every box's series
        (any one scraped shows the whole system); the gauges are wired in ``gauges``."""
        self.shared_queue_depth = Gauge(
            "gatekeeper_shared_queue_depth",
            "Jobs waiting in the whole queue of the shared job store, every box's"
            " (gatekeeper_queue_depth is this box's waiting room).",
            registry=r,
        )
        self.shared_queue_running = Gauge(
            "gatekeeper_shared_queue_running",
            "Jobs running on any box of the shared job store.",
            registry=r,
        )
        self.box_running_jobs = Gauge(
            "gatekeeper_box_running_jobs",
            "Jobs running on each box of the shared job store.",
            ["box"],
            registry=r,
        )
        self.box_heartbeat_age = Gauge(
            "gatekeeper_box_heartbeat_age_seconds",
            "Seconds since each box of the shared job store last stamped its heartbeat"
            " (boxes.seen, on the database's clock).",
            ["box"],
            registry=r,
        )

    def _queue_metrics(self, r: CollectorRegistry) -> None:
        """The waiting room and its jobs (issue #9); the gauges are wired in ``gauges``."""
        self.queue_depth = Gauge(
            "gatekeeper_queue_depth", "Jobs waiting in the queue now (not running).", registry=r
        )
        self.queue_capacity = Gauge(
            "gatekeeper_queue_capacity",
            "How many jobs may wait (admission.queue.max_waiting).",
            registry=r,
        )
        self.queue_oldest_wait = Gauge(
            "gatekeeper_queue_oldest_wait_seconds",
            "How long the longest-waiting job has waited (0 when nobody waits).",
            registry=r,
        )
        self.queue_max_wait = Gauge(
            "gatekeeper_queue_max_wait_seconds",
            "How long a job may wait before queue_timeout (admission.queue.max_wait).",
            registry=r,
        )
        self.queue_wait = Histogram(
            "gatekeeper_queue_wait_seconds",
            "Time a job waited in the queue before it was dispatched, by route.",
            ["route"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=r,
        )
        self.jobs = Counter(
            "gatekeeper_jobs",
            "Jobs entering each state (queued, running, done, failed, cancelled, expired).",
            ["route", "state"],
            registry=r,
        )
        self.coalesced = Counter(
            "gatekeeper_coalesced",
            "Requests attached to an existing job or answered from a kept result.",
            ["route"],
            registry=r,
        )
        self.body_fetches = Counter(
            "gatekeeper_body_fetches",
            "Large request bodies fetched from the box that took the job (jobs.store:"
            " postgres), by result: fetched (run here), given_back (the fetch failed: queued"
            " again in its place), lost (the taking box has it no more: body_lost).",
            ["result"],
            registry=r,
        )
        for result in ("fetched", "given_back", "lost"):
            self.body_fetches.labels(result)
        self.state_free_bytes = Gauge(
            "gatekeeper_state_free_bytes",
            "Free bytes on the state directory's file system (sampled every 0.25 s by the"
            " jobs tick; below jobs.min_free_bytes new jobs are refused storage_full).",
            registry=r,
        )
        self.state_db_detached = Gauge(
            "gatekeeper_state_db_detached",
            "1 while the job database was deleted or replaced under gatekeeper and could not"
            " be put back at its path (new jobs are refused storage_error).",
            registry=r,
        )
        self.state_db_rehomed = Counter(
            "gatekeeper_state_db_rehomed",
            "Times the job database, deleted or replaced under gatekeeper, was put back at"
            " its path whole (the open database copied; a replacement kept aside).",
            registry=r,
        )
        self.results_bytes = Gauge(
            "gatekeeper_results_bytes",
            "Bytes of job results kept on disk (partial results of running jobs included).",
            registry=r,
        )
        self.eta_error = Histogram(
            "gatekeeper_eta_error_ratio",
            "|actual - predicted| / actual of a job's done time, as predicted at its arrival.",
            buckets=ETA_ERROR_BUCKETS,
            registry=r,
        )

    def _webhook_metrics(self, r: CollectorRegistry) -> None:
        """Job webhooks (issue #20 §1): attempts, the outbox, failing destinations."""
        self.webhook_deliveries = Counter(
            "gatekeeper_webhook_deliveries",
            "Webhook delivery attempts by outcome (delivered 2xx, gone 410, retry: another"
            " answer or none, expired: given up at jobs.webhooks.max_age).",
            ["outcome"],
            registry=r,
        )
        self.webhook_backlog = Gauge(
            "gatekeeper_webhook_backlog",
            "Webhook deliveries in the outbox not yet delivered.",
            registry=r,
        )
        self.webhook_oldest_undelivered = Gauge(
            "gatekeeper_webhook_oldest_undelivered_seconds",
            "Age of the oldest undelivered webhook delivery (0 when none waits).",
            registry=r,
        )
        self.webhook_failing = Gauge(
            "gatekeeper_webhook_destination_failing_seconds",
            "How long a destination's attempts have failed without a success (0: its last"
            " attempt succeeded); requests' own destinations are '@request'.",
            ["destination"],
            registry=r,
        )
