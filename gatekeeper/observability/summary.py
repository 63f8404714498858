"""The effective rules for people: ``gatekeeper check`` and the startup log.

``describe`` says what is in force in a few lines; ``config_warnings`` says what
is valid but probably not meant (an empty file, a gated path a client can walk
around), so an operator sees it before a user does.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from gatekeeper.config import Config, Resources, Threshold
from gatekeeper.core.routes import lint
from gatekeeper.observability.alerts.loop import describe_alerts
from gatekeeper.observability.logs import redact_url
from gatekeeper.resources.samplers import HOST_SIGNALS, Sample


def describe(config: Config) -> list[str]:
    """The effective rules in a few lines (``gatekeeper check`` and the startup log)."""
    a, up = config.admission, config.upstream
    r = a.resources
    lines = [
        f"listen {config.listen}, admin_listen {config.admin_listen}",
        *_engines(config),
        "  gated pool: timeouts " + _kv(asdict(up.timeouts)) + "; limits " + _kv(asdict(up.limits)),
        "  passthrough pool: timeouts "
        + _kv(asdict(up.passthrough.timeouts))
        + "; limits "
        + _kv(asdict(up.passthrough.limits)),
        f"admission: max_in_flight={a.max_in_flight} reject_status={a.reject_status} "
        f"retry_after_default={a.retry_after_default}s expected_seconds={a.expected_seconds:g} "
        f"on_client_disconnect={a.on_client_disconnect}",
        f"resources: source={r.source}{' file=' + r.file if r.file else ''} "
        f"every {a.sample_interval:g}s; cpu reject>{r.cpu_percent.reject_above:g} "
        f"recover<{r.cpu_percent.recover_below:g}; memory reject>{r.memory_percent.reject_above:g}"
        f" recover<{r.memory_percent.recover_below:g}",
        "  cgroup, psi, gpu: " + _signal_settings(r),
        f"queue: max_waiting={a.queue.max_waiting} max_wait={a.queue.max_wait:g}s "
        f"per_client={a.queue.per_client} client_key={a.queue.client_key.describe()}"
        + (
            " trusted_proxies=" + ",".join(str(n) for n in a.queue.trusted_proxies)
            if a.queue.trusted_proxies
            else ""
        ),
        f"jobs: state_dir={config.jobs.state_dir(config.source)} keep={config.jobs.keep:g}s "
        f"max_bytes={config.jobs.max_bytes} coalesce={config.jobs.coalesce} "
        f"retry_interrupted={config.jobs.retry_interrupted} jobs_path={config.jobs_path}",
        "limits: " + _kv(asdict(config.limits)),
        f"routes ({len(config.routes)}, first match wins; unmatched pass):",
    ]
    lines += [f"  {rt.summary()}" for rt in config.routes]
    lines.append(f"shutdown: drain_timeout={config.shutdown.drain_timeout:g}s")
    lines += describe_alerts(config)
    return lines


def _engines(config: Config) -> list[str]:
    """One engine: ``upstream URL``; several: each with its slots (issue #11 §1)."""
    up = config.upstream
    if not up.listed:
        return [f"upstream {redact_url(up.url)}"]
    total = config.admission.max_in_flight
    lines = [f"upstream: {len(up.engines)} engine(s), {total} slot(s) in all"]
    lines += [
        f"  engine {e.name} {redact_url(e.url)} max_in_flight={e.max_in_flight}" for e in up.engines
    ]
    return lines


def _signal_settings(r: Resources) -> str:
    """The issue #11 §3 keys: cgroup, PSI and GPU thresholds (off unless configured)."""

    def t(name: str, th: Threshold | None) -> str:
        if th is None:
            return f"{name} off"
        line = getattr(th, "line", None)
        return (
            f"{name}{' ' + line if line else ''} reject>{th.reject_above:g}"
            f" recover<{th.recover_below:g}"
        )

    devices = "all" if r.gpu.devices is None else ",".join(map(str, r.gpu.devices)) or "none"
    return "; ".join(
        [
            f"cgroup={r.cgroup}",
            t("cpu_pressure", r.cpu_pressure),
            t("memory_pressure", r.memory_pressure),
            t("io_pressure", r.io_pressure),
            f"gpu devices={devices}",
            t("gpu memory_percent", r.gpu.memory_percent),
            t("gpu utilization_percent", r.gpu.utilization_percent),
        ]
    )


def describe_signals(sample: Sample | str) -> str:
    """Which signals are live and from where (``gatekeeper check``, the startup log), e.g.
    ``cpu host (psutil); memory cgroup /x (memory.max 16 GiB); psi /proc/pressure ...``."""
    if isinstance(sample, str):  # the sampler itself failed (an unreadable file)
        return f"none read: {sample}"
    return "; ".join(
        f"{name} {sample.signals[name].describe()}"
        for name in HOST_SIGNALS
        if name in sample.signals
    )


def _kv(d: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())


def config_warnings(config: Config) -> list[str]:
    """Every warning about a valid config: the loader's, the route lint's, the pools'."""
    return [
        *config.warnings,
        *lint(config.routes),
        *_pool_warnings(config),
        *_ungated_warnings(config),
    ]


def _ungated_warnings(config: Config) -> list[str]:
    """No route gates anything: every generation would pass to the engine ungated."""
    if any(r.gated or r.action == "gradio" for r in config.routes):
        return []
    return [
        "no route gates a generation (action queue, admit or gradio): every request passes"
        " to the engine ungated, as many songs at once as are asked for; see README"
        " 'In front of your engine'"
    ]


def _pool_warnings(config: Config) -> list[str]:
    """An engine with more slots than gated connections: its extra generations would wait
    for a connection and fail 503 upstream_busy after upstream.timeouts.pool."""
    up = config.upstream
    conns = up.limits.max_connections
    out = []
    for e in up.engines:
        if e.max_in_flight > conns:
            key = (
                f"upstream.engines[{e.name}].max_in_flight"
                if up.listed
                else "admission.max_in_flight"
            )
            out.append(
                f"{key} ({e.max_in_flight}) is more than upstream.limits.max_connections"
                f" ({conns}): generations beyond {conns} on one engine would wait for a"
                " connection and get 503 upstream_busy; raise max_connections"
            )
    return out
