"""Wiring and lifecycle: build the state, the two aiohttp apps, run them, drain, stop.

Nothing imports this module except ``cli``. Lifecycle follows aiohttp's
``AppRunner`` → ``TCPSite`` → ``cleanup()``; background loops (resource
monitor, alerts, reload watcher) are ``cleanup_ctx`` generators that cancel and
await their task. The upstream probe starts only once both listeners are bound
(``Gatekeeper.start``), so what it reports follows the startup lines.

Shutdown (issue #5 §2): the first SIGTERM/SIGINT starts a drain — ``/readyz``
turns 503, admit routes answer ``draining``, pass routes keep working — and
gatekeeper waits for running generations up to ``shutdown.drain_timeout``,
then, if it waited for one, serves pass routes ``shutdown.linger`` longer so
the job's result can be downloaded, then closes and exits 0. aiohttp's own
shutdown timeout (``CLOSE_GRACE_SECONDS``) only applies after that wait, to
passthrough requests still open. An expired drain timeout (exit 0, logged as a
warning) or a second signal (exit 1) cancels what still runs within
``FORCED_GRACE_SECONDS``. SIGHUP reloads the rules (``reload``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from gatekeeper import __version__
from gatekeeper.admin import build_admin_app
from gatekeeper.config import Config
from gatekeeper.jobs.deps import JobDeps
from gatekeeper.jobs.service import JobService
from gatekeeper.jobs.sqlite import SqliteJobStore
from gatekeeper.lifecycle.asyncutil import cancel_and_wait
from gatekeeper.lifecycle.eventloop import freeze_startup_objects
from gatekeeper.lifecycle.haproxy_agent import AgentServer
from gatekeeper.lifecycle.probe import probe_loop
from gatekeeper.lifecycle.reload import Overrides, Reloader
from gatekeeper.lifecycle.runtime import Runtime
from gatekeeper.observability.alerts.loop import AlertLoop
from gatekeeper.observability.alerts.notify import Notifier
from gatekeeper.observability.gauges import host_publisher, wire_gauges
from gatekeeper.observability.metrics import Metrics
from gatekeeper.observability.summary import config_warnings, describe, describe_signals
from gatekeeper.proxy.accesslog import log_request
from gatekeeper.proxy.connections import Connections, EdgeSite, fd_ceiling
from gatekeeper.proxy.handler import ProxyHandler
from gatekeeper.resources.monitor import Monitor
from gatekeeper.state import STATE, AppState

log = logging.getLogger("gatekeeper")

# After the drain, how long open passthrough requests (downloads) get before aiohttp
# cancels them. Generations are not affected: the drain already waited for them.
CLOSE_GRACE_SECONDS = 10.0

# listen(2) backlog of both listeners; the kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024
# Idle keep-alive connections of the public listener are closed after this (nginx's
# default). aiohttp's own default is an hour: 1,000 idle clients would hold 1,000 fds.
KEEPALIVE_SECONDS = 75.0
# A response sent before the request body was read (413, 408, a rejection) waits at most
# this long for the rest of the body before the connection closes (aiohttp: 10 s).
LINGER_SECONDS = 1.0
# File descriptors kept out of the client-connection cap: upstream pools, logs, sockets.
FD_RESERVE = 64
# After a second signal or an expired drain timeout: open requests are cancelled this soon.
FORCED_GRACE_SECONDS = 0.5


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
    Raises ``StateDirError`` when the directory cannot be used."""
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
    st.jobs = JobService(deps, SqliteJobStore.open(directory), directory, ephemeral=ephemeral)
    wire_gauges(st)
    st.prime_metrics()
    st.metrics.config_reloads.labels("success")  # exists from the start, at 0
    st.metrics.config_last_reload_success.set_to_current_time()
    return st


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
        if jobs is not None:
            jobs.start()
        yield
        if jobs is not None:
            await jobs.close()

    return ctx


def start_probe(st: AppState) -> asyncio.Task[None]:
    """The periodic upstream probe, publishing its verdict onto ``st``."""
    return asyncio.create_task(
        probe_loop(lambda: st.config, st.set_engine_up), name="gatekeeper-probe"
    )


def _alerting(st: AppState) -> Callable[[web.Application], AsyncIterator[None]]:
    """The alert loop and its delivery tasks (issue #4), off the proxy path."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with Notifier(st.metrics) as notifier:
            task = asyncio.create_task(AlertLoop(st, notifier).run(), name="gatekeeper-alerts")
            yield
            await cancel_and_wait([task])

    return ctx


def _publish_resources(st: AppState) -> Callable[[Any], None]:
    def publish(state: Any) -> None:
        st.gate.resources = state

    return publish


def build_proxy_app(
    st: AppState,
    *,
    monitor: bool = True,
    probe: bool = False,
    reloader: Reloader | None = None,
    alerts: bool = True,
    conns: Connections | None = None,
) -> web.Application:
    handler = ProxyHandler(st, on_record=log_request, conns=conns)
    if st.gradio is not None:
        st.gradio.on_record = log_request  # a Gradio generation's line, at its end
    app = web.Application(middlewares=[handler.refuse_foreign_targets])
    app[STATE] = st
    if reloader is not None:
        # The file watcher (issue #5 §1); the proxy handler counts which requests may
        # hold which pools (AppState.usage), so a reload closes old pools only once idle.
        app.cleanup_ctx.append(reloader.cleanup_ctx())
    # One catch-all route: every method and path is the upstream's business, not ours.
    # The bound coroutine method, not the instance: aiohttp deprecates non-async handlers.
    app.router.add_route("*", "/{tail:.*}", handler.__call__)
    app.cleanup_ctx.append(_background(st, monitor=monitor, probe=probe, conns=conns))
    app.cleanup_ctx.append(_waiting_room(st))
    if alerts:
        app.cleanup_ctx.append(_alerting(st))

    async def close_gradio_streams(_: web.Application) -> None:
        n = handler.gradio.close_idle_streams()
        if n:
            log.info("closed %d idle Gradio session stream(s)", n)

    app.on_shutdown.append(close_gradio_streams)

    async def close_pools(_: web.Application) -> None:
        if st.gradio is not None:
            st.gradio.close()  # Gradio events still open: their slots are released
        await st.runtime.close()

    app.on_cleanup.append(close_pools)
    return app


class Gatekeeper:
    """The running process: two listeners, background loops, drain and stop."""

    def __init__(self, config: Config, overrides: Overrides | None = None):
        self.config = config
        self.overrides = overrides or Overrides()
        self.state: AppState | None = None
        self.reloader: Reloader | None = None
        self.connections: Connections | None = None
        self._runners: list[web.AppRunner] = []
        self._probe: asyncio.Task[None] | None = None
        self.agent: AgentServer | None = None
        self.proxy_urls: list[str] = []
        self.admin_urls: list[str] = []
        self.agent_urls: list[str] = []

    async def start(self) -> None:
        cfg = self.config
        st = self.state = await create_state(cfg, state_dir=cfg.jobs.state_dir(cfg.source))
        rl = self.reloader = Reloader(st, cfg.source, self.overrides)
        closed = st.metrics.client_connections_closed
        conns = self.connections = Connections(
            lambda: st.config.limits, st.clock, lambda reason: closed.labels(reason).inc()
        )
        conns.cap_ceiling = fd_ceiling(FD_RESERVE)
        st.metrics.client_connections.set_function(lambda: conns.open)
        if conns.cap < cfg.limits.max_client_connections:
            log.warning(
                "limits.max_client_connections %d lowered to %d by the open-file limit "
                "(ulimit -n; the systemd unit sets LimitNOFILE)",
                cfg.limits.max_client_connections,
                conns.cap,
            )
        proxy = web.AppRunner(
            build_proxy_app(st, reloader=rl, conns=conns),
            access_log=None,
            shutdown_timeout=CLOSE_GRACE_SECONDS,
            keepalive_timeout=KEEPALIVE_SECONDS,
            lingering_time=LINGER_SECONDS,
        )
        admin = web.AppRunner(build_admin_app(st, rl), access_log=None, shutdown_timeout=1.0)
        for runner, where, urls in (
            (proxy, cfg.listen, self.proxy_urls),
            (admin, cfg.admin_listen, self.admin_urls),
        ):
            await runner.setup()
            self._runners.append(runner)
            # A deep accept queue: a burst of clients (a retry storm) must hear "busy" in
            # milliseconds, not sit in the kernel's 1 s SYN retry because the default
            # backlog of 128 overflowed (measured in bench/: 22 of 500 dropped).
            site: web.TCPSite
            if runner is proxy:  # the public side: head deadline and connection cap
                site = EdgeSite(
                    runner,
                    where.host,
                    where.port,
                    conns=conns,
                    reuse_address=True,
                    backlog=LISTEN_BACKLOG,
                )
            else:
                site = web.TCPSite(
                    runner, where.host, where.port, reuse_address=True, backlog=LISTEN_BACKLOG
                )
            await site.start()
            urls.extend(_urls(runner))
        if cfg.agent_listen is not None:
            # HAProxy's agent-check (issue #11 §2): it says "drain" from the first moment
            # of a drain until the process exits (it closes last, in ``stop``).
            self.agent = AgentServer(st)
            self.agent_urls = await self.agent.start(
                cfg.agent_listen.host, cfg.agent_listen.port, LISTEN_BACKLOG
            )
        log.info("gatekeeper %s: rules from %s", __version__, cfg.source)
        for line in describe(cfg):
            log.info("config: %s", line)
        if st.host is not None:
            log.info("signals: %s", describe_signals(st.host))
        for warning in config_warnings(cfg):
            log.warning("config: %s", warning)
        listeners = [("proxy", self.proxy_urls), ("admin", self.admin_urls)]
        if self.agent is not None:
            listeners.append(("agent-check", self.agent_urls))
        for name, urls in listeners:
            log.info("%s listener bound to %s", name, ", ".join(urls))
        # Only now: its "upstream ... is DOWN" must follow the startup lines, and must not
        # be said at all by a gatekeeper that failed to bind.
        self._probe = start_probe(st)

    async def drain(self) -> bool:
        """Stop admitting; wait for running generations. True when none was left running."""
        assert self.state is not None
        st = self.state
        sd = st.config.shutdown  # the live rules: a reload may have changed the drain timeout
        st.gate.draining = True
        if st.jobs is not None:
            st.jobs.drain()  # held waiters: 503 draining now; async ones stay on disk
        loop = asyncio.get_running_loop()
        deadline = loop.time() + sd.drain_timeout
        next_log = loop.time()
        waited = st.gate.in_flight > 0
        while st.gate.in_flight > 0:
            now = loop.time()
            if now >= deadline:
                log.warning(
                    "drain timeout (%gs) reached with %d generation(s) still running; closing",
                    sd.drain_timeout,
                    st.gate.in_flight,
                )
                return False
            if now >= next_log:
                running = ", ".join(
                    f"{t.route} running {now - t.started_at:.0f}s" for t in st.gate.running()
                )
                log.info(
                    "draining: waiting for %d generation(s) (%s); %.0fs left of drain_timeout",
                    st.gate.in_flight,
                    running,
                    deadline - now,
                )
                next_log = now + sd.drain_log_interval
            # Wake when the last generation ends, or in time for the next log line or the
            # deadline, whichever comes first.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(min(deadline, next_log)):
                    await st.gate.wait_idle()
        linger = min(sd.linger, deadline - loop.time()) if waited else 0.0
        if linger > 0:
            # The job's client fetches its result right after the generation ends (e.g.
            # GET /result/{id} after an SSE "done"): keep pass routes served a little longer.
            log.info(
                "drained: no generation running; serving pass routes %.1fs more "
                "(shutdown.linger) so the last result can be fetched",
                linger,
            )
            await asyncio.sleep(linger)
        else:
            log.info("drained: no generation running")
        return True

    async def stop(self, grace: float | None = None) -> None:
        """Close the listeners and every connection.

        ``grace`` (seconds) bounds how long open requests may still run before their
        handlers are cancelled; None means the runners' own shutdown timeouts
        (``CLOSE_GRACE_SECONDS`` on the proxy). aiohttp treats 0 as "no limit", hence
        the floor.
        """
        if self._probe is not None:
            await cancel_and_wait([self._probe])
            self._probe = None
        for runner in reversed(self._runners):
            if grace is not None and runner.server is not None:
                for site in list(runner.sites):
                    await site.stop()
                await runner.server.shutdown(max(grace, 0.01))
            await runner.cleanup()
        self._runners.clear()
        if self.agent is not None:
            await self.agent.close()
            self.agent = None


def _urls(runner: web.AppRunner) -> list[str]:
    out = []
    for addr in runner.addresses:
        host, port = addr[0], addr[1]
        out.append(f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}")
    return out


async def serve(
    config: Config,
    *,
    ready: Callable[[Gatekeeper], None] | None = None,
    overrides: Overrides | None = None,
) -> int:
    """Run until SIGINT/SIGTERM, drain, stop; SIGHUP reloads. Returns the exit code."""
    gk = Gatekeeper(config, overrides)
    try:
        await gk.start()
    except BaseException:  # e.g. port in use: close what was opened (pools, sessions)
        await gk.stop()
        raise
    if ready is not None:
        ready(gk)
    freeze_startup_objects()
    loop = asyncio.get_running_loop()
    assert gk.reloader is not None
    loop.add_signal_handler(signal.SIGHUP, gk.reloader.trigger, "SIGHUP")
    signals: asyncio.Queue[int] = asyncio.Queue()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    code = 0
    grace: float | None = None  # how long open requests get once the listeners close
    try:
        first = await signals.get()
        log.info(
            "received %s: draining (send it again to exit at once)", signal.Signals(first).name
        )
        drain = asyncio.create_task(gk.drain())
        second = asyncio.create_task(signals.get())
        done, _ = await asyncio.wait({drain, second}, return_when=asyncio.FIRST_COMPLETED)
        if second in done:
            log.warning("second signal: exiting now, abandoning running generations")
            drain.cancel()
            code, grace = 1, FORCED_GRACE_SECONDS
        else:
            second.cancel()
            if not drain.result():
                # The drain timeout is the bound: generations still running are cut now,
                # not CLOSE_GRACE_SECONDS later.
                grace = FORCED_GRACE_SECONDS
    finally:
        # SIGHUP stays handled until the loop closes: a reload racing the shutdown must not
        # kill the process with SIGHUP's default action.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if grace is None:
            await gk.stop()
        else:
            # Belt and braces: an exit "at once" must not hang on a stuck cleanup.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace + 2.0):
                    await gk.stop(grace)
    log.info("gatekeeper stopped", extra={"fields": {"exit_code": code}})
    return code
