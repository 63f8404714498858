"""Hot reload of rules.yaml (issue #5 §1): validate, swap one reference, retire old pools.

Triggers: ``SIGHUP`` (wired in ``app.process.serve``), ``POST /reload`` on the admin
listener (``admin.reload``), and — when ``reload.watch`` is true — a change of
the file on disk, polled every ``reload.watch_interval`` by size/mtime and
confirmed by a SHA-256 of the content (an editor touching the file without
changing it reloads nothing).

What a reload guarantees:

1. The whole file is parsed and validated before anything changes. An invalid
   file leaves the running rules in force; the errors (YAML path, line, value)
   are logged, answered by ``POST /reload`` as JSON, counted in
   ``gatekeeper_config_reloads_total{result="failure"}``, and
   ``Reloadable.config_reload_failed`` (the ``config_reload_failed`` alert
   signal) stays true until a reload succeeds.
2. A valid file is applied in one synchronous step — no ``await`` between
   building the new ``Runtime`` and swapping it, the gate's limits and the
   duration prior — so no request ever sees half of each. Running generations
   keep their tickets: the gate outlives reloads, and a lower ``max_in_flight``
   only stops new admissions until the count falls below it.
3. ``listen`` and ``admin_listen`` cannot move while bound: a change is reported
   as "needs restart" and the running value is kept, never half-applied.
4. Command-line overrides (``--upstream``, ``--listen``, ``--admin-listen``) are
   re-applied on every reload: the operator's flag keeps beating the file.
5. Upstream pools whose settings changed are rebuilt for new requests; the old
   ones are closed only once no request that could hold them is still running
   (``RuntimeUsage``), so a 15-minute generation is never cut off by a reload.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from gatekeeper.config import Config, ConfigError, ConfigProblem, load_config
from gatekeeper.core.admission import Gate
from gatekeeper.core.asyncutil import cancel_and_wait
from gatekeeper.lifecycle.changes import Overrides, ReloadResult, diff, keep_restart_only
from gatekeeper.lifecycle.epochs import RuntimeUsage
from gatekeeper.lifecycle.runtime import Runtime, admission_limits
from gatekeeper.observability.gauges import wire_engine_gauges
from gatekeeper.observability.logs import redact_url
from gatekeeper.observability.metrics import Metrics
from gatekeeper.upstream import UpstreamPool

log = logging.getLogger("gatekeeper.reload")


class Reloadable(Protocol):
    """What a reload swaps and reports on (the app's state is one)."""

    runtime: Runtime  # swapped in one assignment
    config_reload_failed: bool  # True from a failed reload until the next good one

    @property
    def config(self) -> Config: ...

    @property
    def gate(self) -> Gate: ...

    @property
    def usage(self) -> RuntimeUsage: ...

    @property
    def metrics(self) -> Metrics: ...

    def prime_metrics(self) -> None:
        """The series of the current routes at 0."""


@dataclass
class _Seen:
    """What the watcher last saw of the file: cheap stat first, content hash to confirm."""

    stat: tuple[int, int, int] | None = None  # (mtime_ns, size, inode)
    digest: str | None = None


@dataclass
class Reloader:
    """Reloads ``path`` into ``state``; one reload at a time, whatever triggered it."""

    state: Reloadable
    path: str
    overrides: Overrides = field(default_factory=Overrides)
    wall_clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    _seen: _Seen = field(default_factory=_Seen, init=False)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set, init=False)
    _retiring: set[UpstreamPool] = field(default_factory=set, init=False)

    @property
    def usage(self) -> RuntimeUsage:
        """Which requests may still hold which rules; counted by the proxy handler."""
        return self.state.usage

    def __post_init__(self) -> None:
        self._seen = self._look()

    # ---------------------------------------------------------------- reading

    def _read(self) -> tuple[_Seen, bytes]:
        """Stat and read the file (raises OSError); what was seen, and its bytes."""
        st = os.stat(self.path)
        data = Path(self.path).read_bytes()
        seen = _Seen((st.st_mtime_ns, st.st_size, st.st_ino), hashlib.sha256(data).hexdigest())
        return seen, data

    def _look(self) -> _Seen:
        try:
            return self._read()[0]
        except OSError:
            return _Seen()

    def _load(self) -> Config:
        """Read, validate and override; raises ConfigError listing every problem."""
        try:
            self._seen, data = self._read()
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problem = ConfigProblem("", None, f"cannot read file: {exc}")
            raise ConfigError([problem], self.path) from exc
        return self.overrides.apply(load_config(text, source=self.path))

    # ---------------------------------------------------------------- reloading

    async def reload(self, trigger: str) -> ReloadResult:
        async with self._lock:
            try:
                loaded = self._load()
            except ConfigError as exc:
                return self._failed(trigger, exc)
            return self._apply(trigger, loaded)

    def trigger(self, trigger: str) -> None:
        """Reload in the background (a signal handler cannot await)."""
        self._spawn(self.reload(trigger), f"gatekeeper-reload-{trigger}")

    def _failed(self, trigger: str, exc: ConfigError) -> ReloadResult:
        st = self.state
        st.config_reload_failed = True
        st.metrics.config_reloads.labels("failure").inc()
        out = ReloadResult(False, trigger, self.path, errors=tuple(exc.problems))
        log.error(
            "config reload (%s) failed, the previous rules stay in force: %d problem(s) in %s",
            trigger,
            len(exc.problems),
            self.path,
            extra={"fields": {"event": "reload", "result": "failure", "trigger": trigger}},
        )
        for p in exc.problems:  # one line each: the YAML path, line and value of each problem
            log.error("config reload (%s): %s:%s", trigger, self.path, p)
        return out

    def _apply(self, trigger: str, loaded: Config) -> ReloadResult:
        st = self.state
        old_rt = st.runtime
        config, restart = keep_restart_only(old_rt.config, loaded)
        changes = diff(old_rt.config, config)
        # One synchronous step (no await): a request sees the old rules or the new, never
        # a mix. The gate itself is kept: running generations keep their tickets.
        new_rt = old_rt.successor(config)
        st.runtime = new_rt
        st.gate.limits = admission_limits(config)
        st.gate.estimator.prior = config.admission.expected_seconds
        ended = self.usage.advance()
        st.config_reload_failed = False
        st.metrics.config_reloads.labels("success").inc()
        st.prime_metrics()  # new routes' series at 0 (issue #3)
        wire_engine_gauges(
            st.metrics, st.gate, config.upstream.engines
        )  # an added engine's series, a removed one's gone (issue #11)
        st.metrics.config_last_reload_success.set(self.wall_clock())
        kept = {id(p) for p in new_rt.pools()}
        for pool in old_rt.pools():  # a removed engine's pools too, once its job is done
            if id(pool) not in kept:
                self._retiring.add(pool)
                self._spawn(self._retire(pool, ended), f"gatekeeper-retire-{pool.name}")
        out = ReloadResult(True, trigger, self.path, tuple(changes), tuple(restart))
        summary = ", ".join(c.key for c in changes) or "nothing changed"
        log.info(
            "config reloaded (%s) from %s: %s",
            trigger,
            self.path,
            summary,
            extra={"fields": {"event": "reload", "result": "success", "trigger": trigger}},
        )
        for c in changes:
            log.info("config reload: %s: %r -> %r", c.key, c.old, c.new)
        for c in restart:
            log.warning(
                "config reload: %s changed to %s in the file, which needs a restart; "
                "still bound to %s",
                c.key,
                c.new,
                c.old,
            )
        return out

    async def _retire(self, pool: UpstreamPool, epoch: int) -> None:
        try:
            open_now = self.usage.open_through(epoch)
            if open_now:
                log.info(
                    "old %s upstream pool (%s) stays open for %d running request(s)",
                    pool.name,
                    redact_url(pool.base),
                    open_now,
                )
            await self.usage.wait_idle_through(epoch)
        finally:
            self._retiring.discard(pool)
            await pool.close()
        log.info("closed the old %s upstream pool (%s)", pool.name, redact_url(pool.base))

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------- watching

    def changed_on_disk(self) -> bool:
        """True when the file's content differs from what was last read."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False  # mid-rename by an editor, or removed: wait for it to come back
        if (st.st_mtime_ns, st.st_size, st.st_ino) == self._seen.stat:
            return False
        seen = self._look()
        if seen.digest is None:
            return False
        if seen.digest == self._seen.digest:
            self._seen = seen  # touched, not changed
            return False
        return True

    async def poll_once(self) -> ReloadResult | None:
        """One step of ``watch``: reload if ``reload.watch`` is on and the file's content
        changed; the reload's outcome, or None when nothing was reloaded."""
        if self.state.config.reload.watch and self.changed_on_disk():
            return await self.reload("watch")
        return None

    async def watch(self) -> None:
        """Step every ``reload.watch_interval``; both keys are read live, so a reload can
        switch watching on or off and change its interval."""
        while True:
            await self.sleep(self.state.config.reload.watch_interval)
            await self.poll_once()

    # ---------------------------------------------------------------- lifecycle

    async def close(self) -> None:
        """Cancel pending work and close pools still waiting to retire (shutdown)."""
        await cancel_and_wait(list(self._tasks))
        for pool in list(self._retiring):
            await pool.close()
        self._retiring.clear()

    def cleanup_ctx(self) -> Callable[[web.Application], AsyncIterator[None]]:
        """The watcher as a cleanup_ctx of the proxy app."""

        async def ctx(app: web.Application) -> AsyncIterator[None]:
            watcher = asyncio.create_task(self.watch(), name="gatekeeper-reload-watch")
            yield
            await cancel_and_wait([watcher])
            await self.close()

        return ctx


# The admin app finds the reloader under this key (``POST /reload``).
RELOADER = web.AppKey("reloader", Reloader)
