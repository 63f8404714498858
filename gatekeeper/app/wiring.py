"""The wiring: the state, the proxy app and its background loops.

``create_state`` builds the one ``AppState`` and points the gauges at it;
``build_proxy_app`` makes the public aiohttp app (one catch-all route) with its
``cleanup_ctx`` loops: the client-connection reaper, the resource monitor, the
upstream probe (in-process tests), the waiting room's tick and runners, the
alert loop and the reload watcher. Each loop cancels and awaits its task at
cleanup (aiohttp's ``cleanup_ctx``). The running process is ``process``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from functools import partial
from pathlib import Path

from aiohttp import web

from gatekeeper import __version__
from gatekeeper.app.state import AppState
from gatekeeper.config import Config
from gatekeeper.config.jobs import postgres_dsn
from gatekeeper.core.asyncutil import cancel_and_wait
from gatekeeper.core.readings import ResourceState
from gatekeeper.gradio.route import GradioRoute
from gatekeeper.jobs.anybox import AnyBox, apply_cancels
from gatekeeper.jobs.batch.api import BatchApi
from gatekeeper.jobs.batch.route import BatchRoute
from gatekeeper.jobs.deps import JobDeps
from gatekeeper.jobs.fleet import FleetWatch
from gatekeeper.jobs.route import JobsEndpoint, QueueRoute
from gatekeeper.jobs.service import JobService
from gatekeeper.jobs.sqlite import SqliteJobStore
from gatekeeper.jobs.store import JobStore, StoreOpenError
from gatekeeper.jobs.webhooks.deliver import Deliverer
from gatekeeper.jobs.webhooks.emit import Emitter
from gatekeeper.lifecycle.probe import Verdict, first_verdicts, probe_loop
from gatekeeper.lifecycle.reload import Reloader
from gatekeeper.lifecycle.runtime import Runtime
from gatekeeper.observability.alerts.loop import AlertLoop
from gatekeeper.observability.alerts.notify import Notifier
from gatekeeper.observability.gauges import box_gauges, host_publisher, wire_gauges
from gatekeeper.observability.metrics import Metrics
from gatekeeper.observability.status import status_document
from gatekeeper.observability.ungated import threshold as ungated_threshold
from gatekeeper.proxy.accesslog import AccessLog
from gatekeeper.proxy.connections import Connections
from gatekeeper.proxy.expect import defer_continue
from gatekeeper.proxy.handler import SPOOL_BUDGET, Features, JobsHandler, ProxyHandler
from gatekeeper.proxy.ports import ProxyPorts
from gatekeeper.proxy.record import RequestRecord
from gatekeeper.proxy.streams import OpenStreams
from gatekeeper.resources.monitor import Monitor

log = logging.getLogger("gatekeeper")

# The public listener's request handlers: bodies are never decoded (see build_proxy_app).
RAW_BODIES: dict[str, object] = {"auto_decompress": False}


async def create_state(
    config: Config,
    *,
    clock: Callable[[], float] | None = None,
    metrics: Metrics | None = None,
    state_dir: Path | None = None,
) -> AppState:
    """Build the shared state; must run in the event loop that will serve it.

    ``state_dir``: where jobs are kept (``Gatekeeper`` passes ``jobs.state_dir``);
    None: a fresh temporary directory removed at cleanup (in-process tests).
    Raises ``StateDirError`` when the directory cannot be used, ``StoreOpenError``
    when the shared store (``jobs.store: postgres``) cannot."""
    loop = asyncio.get_running_loop()
    st = AppState.create(
        Runtime.build(config),
        metrics if metrics is not None else Metrics(version=__version__),
        clock if clock is not None else loop.time,
    )
    ephemeral = state_dir is None
    directory = (
        Path(tempfile.mkdtemp(prefix="gatekeeper-state-")) if state_dir is None else state_dir
    )
    deps = JobDeps(
        clock=st.clock,
        gate=st.gate,
        metrics=st.metrics,
        counters=st.counters,
        epochs=st.usage,
        live=st,
        engines=st,
    )
    store = open_store(config, directory)
    st.jobs = JobService(deps, store, directory, ephemeral=ephemeral)
    st.anybox = AnyBox.of(st.jobs)  # a store several boxes share (issue #21)
    if st.anybox is not None:
        st.boxes = FleetWatch(st.anybox.shared, st.clock, partial(apply_cancels, st.jobs))
    wire_gauges(st)
    if st.boxes is not None:
        st.boxes.on_read = box_gauges(st.metrics, st.boxes, st.clock)
    st.prime_metrics()
    st.metrics.config_reloads.labels("success")  # exists from the start, at 0
    st.metrics.config_last_reload_success.set_to_current_time()
    return st


def open_store(config: Config, directory: Path) -> JobStore:
    """The job store ``jobs.store`` names, its files in ``directory``."""
    jobs = config.jobs
    if jobs.store != "postgres":
        return SqliteJobStore.open(directory)
    try:  # asyncpg is the optional extra gatekeeper[postgres] (docs/dependencies.md)
        from gatekeeper.jobs.postgres import PostgresJobStore
    except ImportError as exc:
        raise StoreOpenError(
            f"jobs.store postgres needs asyncpg: pip install 'gatekeeper[postgres]' ({exc})"
        ) from exc
    pg = jobs.postgres
    try:
        dsn = postgres_dsn(pg, config.source)
    except ValueError as exc:
        raise StoreOpenError(str(exc)) from exc
    return PostgresJobStore.open(
        directory,
        dsn=dsn,
        schema=pg.schema,
        pool_size=pg.pool_size,
        timeout=pg.timeout,
        address=box_address(config),
        max_body_bytes=pg.max_body_bytes,
        lease=jobs.lease,
    )


def box_address(config: Config) -> str:
    """``jobs.postgres.address``, or this box's admin listener (where the relay is
    served): its host, or the host name when it listens on every address."""
    if config.jobs.postgres.address is not None:
        return config.jobs.postgres.address
    hp = config.admin_listen
    host = hp.host
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{hp.port}"


def _background(
    st: AppState, *, monitor: bool, probe: bool, conns: Connections | None = None
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        tasks = []
        mon: Monitor | None = None
        if conns is not None:
            tasks.append(asyncio.create_task(conns.run(), name="gatekeeper-edge"))
        if monitor:
            mon = Monitor(
                lambda: st.config,
                _publish_resources(st),
                clock=st.clock,
                on_sample=host_publisher(st),
            )
            mon.sample_once()  # admission must not start on all-zero readings
            tasks.append(asyncio.create_task(mon.run(), name="gatekeeper-monitor"))
        if probe:
            tasks.append(start_probe(st))
        yield
        await cancel_and_wait(tasks)
        if mon is not None:
            mon.close()  # NVML handles

    return ctx


def _waiting_room(st: AppState) -> Callable[[web.Application], AsyncIterator[None]]:
    """The jobs' tick and runners (issue #9): restored at start, interrupted at the end."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        jobs = st.jobs
        sender: asyncio.Task[None] | None = None
        if jobs is not None:
            # The webhooks (issue #20 §1) hear the jobs the start recovers, too.
            deliverer = Deliverer(jobs.store, lambda: st.config, st.metrics)
            jobs.events = Emitter(jobs, st.clock, jobs.deps.wall, deliverer.wake)
            st.webhooks = deliverer
            deliverer.keys()  # a secret that cannot be read is logged at start
            jobs.start()
            sender = asyncio.create_task(deliverer.run(), name="gatekeeper-webhooks")
        boxes = None
        if st.boxes is not None:  # the other boxes and their cancels (issue #21)
            boxes = asyncio.create_task(st.boxes.run(), name="gatekeeper-boxes")
        yield
        if sender is not None:  # an attempt cut here is sent again after the next start
            await cancel_and_wait([sender])
        if boxes is not None and st.boxes is not None:
            await cancel_and_wait([boxes])
            await st.boxes.leave()
        if st.anybox is not None:
            await st.anybox.close()
        if jobs is not None:
            await jobs.close()  # the endings it writes are delivered after the next start

    return ctx


async def probe_first(st: AppState) -> Mapping[str, Verdict]:
    """Each engine's first verdict, before the waiting room starts (``first_verdicts``)."""
    return await first_verdicts(st.config, st.set_engine_up)


def start_probe(st: AppState, first: Mapping[str, Verdict] | None = None) -> asyncio.Task[None]:
    """The periodic upstream probe, publishing its verdict onto ``st``; ``first``: the
    verdicts of ``probe_first``, its first round."""
    return asyncio.create_task(
        probe_loop(lambda: st.config, st.set_engine_up, st.set_engine_busy, first),
        name="gatekeeper-probe",
    )


def _alerting(st: AppState) -> Callable[[web.Application], AsyncIterator[None]]:
    """The alert loop and its delivery tasks (issue #4), off the proxy path."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with Notifier(st.metrics) as notifier:
            task = asyncio.create_task(AlertLoop(st, notifier).run(), name="gatekeeper-alerts")
            yield
            await cancel_and_wait([task])

    return ctx


def _publish_resources(st: AppState) -> Callable[[ResourceState], None]:
    def publish(state: ResourceState) -> None:
        st.gate.resources = state

    return publish


def proxy_ports(st: AppState) -> ProxyPorts:
    """What the proxy may reach of the state: each member a small Protocol of ``ports``."""
    duration = st.metrics.upstream_duration
    return ProxyPorts(
        rules=st,
        gate=st.gate,
        clock=st.clock,
        counters=st.counters,
        epochs=st.usage,
        engine_refused=st.engine_refused,
        upstream_timed=lambda route, code, seconds: duration.labels(route, code).observe(seconds),
    )


def _events_end_at_stop(jobs: JobsHandler, streams: OpenStreams) -> JobsHandler:
    """A job's ``/events`` stream waits for a change that a stop may never bring (a job
    queued until the next start): registered like a pass-through event stream, it ends
    when the stop begins instead of holding it for 2 x the close grace."""

    async def handle(
        request: web.BaseRequest, config: Config, rest: str, request_id: str
    ) -> web.StreamResponse:
        task = streams.enter() if rest.rstrip("/").endswith("/events") else None
        try:
            return await jobs(request, config, rest, request_id)
        finally:
            streams.leave(task)

    return handle


def _recorder(st: AppState, access: AccessLog) -> Callable[[RequestRecord], None]:
    """Each finished request: its access-log line, and the ungated-generation watch."""

    def record(rec: RequestRecord) -> None:
        access(rec)
        cfg = st.config
        kind = st.ungated.observe(
            route=rec.route,
            action=rec.action,
            method=rec.method,
            path=rec.path,
            head_seconds=rec.upstream_head_seconds,
            limit=ungated_threshold(cfg.admission.expected_seconds, cfg.log.ungated.slow_answer),
            now=st.clock(),
            interval=cfg.log.ungated.warn_every,
        )
        if kind is not None:
            st.metrics.ungated.labels(rec.route, kind).inc()

    return record


def build_proxy_app(
    st: AppState,
    *,
    monitor: bool = True,
    probe: bool = False,
    reloader: Reloader | None = None,
    alerts: bool = True,
    conns: Connections | None = None,
) -> web.Application:
    ports = proxy_ports(st)
    # One access log for every line, so refusals are aggregated across routes (issue #18 §8).
    access = AccessLog(st.clock, lambda: st.config.log.refusals)
    record = _recorder(st, access)
    handler = ProxyHandler(ports, on_record=record, conns=conns)
    handler.on_paced = st.metrics.refusals_paced.inc  # limits.refusal_pacing (issue #18 §8)
    pacer = handler.pacer
    st.metrics.refusal_pacing_delay.set_function(
        lambda: pacer.behind(st.config.limits.refusal_pacing, st.clock())
    )
    assert st.gradio is not None  # AppState.create builds it
    st.gradio.on_record = record  # a Gradio generation's line, at its end
    jobs = st.jobs
    # A gated join with no free slot waits in the jobs' waiting room (issue #19).
    gradio = GradioRoute(ports, handler.respond, handler.admit, st.gradio, jobs)
    # The plan's outcomes that features serve; the proxy imports none of them.
    handler.register(
        Features(
            status=lambda limit: status_document(st, limit),
            jobs=_events_end_at_stop(
                JobsEndpoint(jobs, st.clock, BatchApi(jobs, st.clock), st.anybox), ports.streams
            )
            if jobs is not None
            else None,
            queue=QueueRoute(
                jobs, st.clock, handler.respond, handler.budget, conns, st.anybox
            ).handle
            if jobs is not None
            else None,
            gradio=gradio.handle,
            batch=BatchRoute(jobs, st.clock, handler.respond, handler.budget).handle
            if jobs is not None
            else None,
        )
    )
    # The body is forwarded as the client sent it (issue #18 §4): aiohttp's server would
    # otherwise decompress a gzip or deflate body while its Content-Encoding went on to the
    # engine unchanged. Set on the app, not the runner: every server of this app (the
    # process's listener, a test server) hands the handlers the raw bytes, and the app's
    # handler_args win over a runner's.
    app = web.Application(middlewares=[handler.refuse_foreign_targets], handler_args=RAW_BODIES)
    if reloader is not None:
        # The file watcher (issue #5 §1); the proxy handler counts which requests may
        # hold which pools (the state's ``usage``), so a reload closes old pools only once idle.
        app.cleanup_ctx.append(reloader.cleanup_ctx())
    # One catch-all route: every method and path is the upstream's business, not ours.
    # The bound coroutine method, not the instance: aiohttp deprecates non-async handlers.
    # No "100 Continue" at routing: the body is asked for only when it is wanted (expect).
    app.router.add_route("*", "/{tail:.*}", handler.__call__, expect_handler=defer_continue)
    app[SPOOL_BUDGET] = handler.budget
    app.cleanup_ctx.append(_background(st, monitor=monitor, probe=probe, conns=conns))
    app.cleanup_ctx.append(_waiting_room(st))
    if alerts:
        app.cleanup_ctx.append(_alerting(st))

    async def close_gradio_streams(_: web.Application) -> None:
        n = gradio.close_idle_streams()
        if n:
            log.info("closed %d idle Gradio session stream(s)", n)
        # The drain is over: an engine's own event streams on pass routes and the jobs'
        # /events watchers end now, not after 2 x the close grace (issue #18 §7).
        n = ports.streams.close_all()
        if n:
            log.info("closed %d open event stream(s)", n)

    app.on_shutdown.append(close_gradio_streams)

    async def close_pools(_: web.Application) -> None:
        await gradio.queue.close()  # gatekeeper's readers of the Gradio session streams
        if st.gradio is not None:
            st.gradio.close()  # Gradio events still open: their slots are released
        await st.runtime.close()
        access.close()  # the last second's refusal summary, and no timer left behind

    app.on_cleanup.append(close_pools)
    return app
