"""The running process: the two aiohttp apps bound, run, drained and stopped.

Nothing imports this module except ``cli``. Lifecycle follows aiohttp's
``AppRunner`` → ``TCPSite`` → ``cleanup()``; the apps and their background
loops (``cleanup_ctx`` generators that cancel and await their task) are built
by ``wiring``. The upstream probe starts only once both listeners are bound
(``Gatekeeper.start``), so what it reports follows the startup lines; one silent
round before that (``probe_first``) gives each engine its verdict before the
waiting room starts, since a queued job waits for a probe's "up".

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
from collections.abc import Callable, Mapping

from aiohttp import web

from gatekeeper import __version__
from gatekeeper.admin import build_admin_app
from gatekeeper.app.state import AppState
from gatekeeper.app.wiring import build_proxy_app, create_state, probe_first, start_probe
from gatekeeper.config import Config
from gatekeeper.core.asyncutil import cancel_and_wait
from gatekeeper.jobs.api import body_relay, relay_endpoint
from gatekeeper.lifecycle.changes import Overrides
from gatekeeper.lifecycle.eventloop import freeze_startup_objects
from gatekeeper.lifecycle.haproxy_agent import AgentServer
from gatekeeper.lifecycle.probe import Verdict
from gatekeeper.lifecycle.reload import Reloader
from gatekeeper.observability.summary import config_warnings, describe, describe_signals
from gatekeeper.proxy.connections import Connections, EdgeSite, fd_ceiling

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
        self._first: Mapping[str, Verdict] | None = None
        self.agent: AgentServer | None = None
        self.proxy_urls: list[str] = []
        self.admin_urls: list[str] = []
        self.agent_urls: list[str] = []

    async def start(self) -> None:
        cfg = self.config
        st = self.state = await create_state(cfg, state_dir=cfg.jobs.state_dir(cfg.source))
        rl = self.reloader = Reloader(st, cfg.source, self.overrides)
        # Before the proxy app starts its waiting room: a queued job goes only to an engine
        # a probe has seen up, so restored jobs and the first arrivals are decided with the
        # verdicts known rather than racing the probe loop's first round (issue #18 §5).
        self._first = await probe_first(st)
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
        relay = None if st.anybox is None else relay_endpoint(st.anybox)  # issue #21
        bodies = None if st.anybox is None else body_relay(st.anybox)
        admin = web.AppRunner(
            build_admin_app(st, rl, relay, bodies), access_log=None, shutdown_timeout=1.0
        )
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
        self._probe = start_probe(st, self._first)

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
