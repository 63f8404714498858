"""The waiting room's panels: depth, waits, ETA error, jobs and kept results.

Built like ``panels`` (a function of the config per panel, placed by ``layout``).
"""

from __future__ import annotations

from gatekeeper.config import Config
from gatekeeper.observability.dashboard.grafana import Panel, colored, dashed, timeseries
from gatekeeper.observability.dashboard.promql import (
    DURATION_WINDOW,
    gauge,
    per_minute,
    routes_regex,
    routes_with,
    sel,
    signal,
)


def queue_depth(_config: Config) -> Panel:
    return timeseries(
        "Queue depth vs capacity",
        "Jobs waiting for a slot (not the running ones), and admission.queue.max_waiting: "
        "at capacity a new request gets 503 queue_full (alert GatekeeperQueueFull after 5 "
        "minutes).",
        [
            (gauge("gatekeeper_queue_depth"), "waiting"),
            (gauge("gatekeeper_queue_capacity"), "capacity"),
        ],
        unit="none",
        custom={"lineInterpolation": "stepAfter"},
        decimals=0,
        overrides=[dashed("capacity", "red")],
    )


def queue_wait(config: Config) -> Panel:
    queued = routes_with(config, "queue")
    bucket = (
        "sum by (le, route) (increase(gatekeeper_queue_wait_seconds_bucket"
        + sel(f'route=~"{routes_regex(queued)}"')
        + f"[{DURATION_WINDOW}]))"
    )
    return timeseries(
        f"Queue wait p50 / p95 (trailing {DURATION_WINDOW}) and the oldest waiter",
        "How long dispatched jobs waited (gatekeeper_queue_wait_seconds, buckets up to 1 h) "
        f"on the queue routes ({', '.join(queued) or 'none'}); how long the job waiting "
        "longest has waited now; and admission.queue.max_wait, when a waiter gets 503 "
        "queue_timeout (alert GatekeeperQueueWaitLong over half of it).",
        [
            (f"histogram_quantile(0.5, {bucket})", "p50 {{route}}"),
            (f"histogram_quantile(0.95, {bucket})", "p95 {{route}}"),
            (signal("queue_oldest_wait_seconds"), "oldest waiting"),
            (gauge("gatekeeper_queue_max_wait_seconds"), "max wait"),
        ],
        unit="s",
        overrides=[dashed("max wait", "red")],
    )


def eta_error(_config: Config) -> Panel:
    bucket = (
        "sum by (le) (increase(gatekeeper_eta_error_ratio_bucket" + sel() + f"[{DURATION_WINDOW}]))"
    )
    return timeseries(
        f"ETA error p50 / p90 (trailing {DURATION_WINDOW})",
        "|actual - predicted| / actual of each finished job's done time, predicted when it "
        "arrived (the eta_seconds /status and the job API showed it). Goal: under 20 % "
        "once a few jobs have taught the estimator.",
        [
            (f"histogram_quantile(0.5, {bucket})", "p50"),
            (f"histogram_quantile(0.9, {bucket})", "p90"),
        ],
        unit="percentunit",
        steps=((None, "green"), (0.2, "orange")),
    )


def jobs(_config: Config) -> Panel:
    return timeseries(
        "Jobs per minute by state",
        "Jobs entering each state: queued (accepted), running (dispatched), done, failed, "
        "cancelled (client left or DELETE), expired (kept result evicted); and requests "
        "coalesced onto an existing job or a kept result.",
        [
            (per_minute("state", "gatekeeper_jobs_total"), "{{state}}"),
            (per_minute("instance", "gatekeeper_coalesced_total"), "coalesced"),
        ],
        unit="short",
        overrides=[
            colored("failed", "red"),
            colored("done", "green"),
            colored("expired", "purple"),
            dashed("coalesced", "blue"),
        ],
    )


def results_kept(_config: Config) -> Panel:
    return timeseries(
        "Kept results bytes",
        "Job results on disk in the state directory (partial results of running jobs "
        "included); beyond jobs.max_bytes the oldest finished results expire first. Free: "
        "below jobs.min_free_bytes new jobs get 503 storage_full (alert GatekeeperStateDiskLow).",
        [
            (gauge("gatekeeper_results_bytes"), "kept results"),
            # The alert signal's PromQL: GatekeeperStateDiskLow fires below jobs.min_free_bytes.
            (signal("state_free_bytes"), "free on the state dir"),
        ],
        unit="bytes",
    )
