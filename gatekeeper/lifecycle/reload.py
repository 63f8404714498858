"""Hot reload of rules.yaml (issue #5 §1): validate, swap one reference, retire old pools.

Triggers: ``SIGHUP`` (wired in ``app.serve``), ``POST /reload`` on the admin
listener (``admin.reload``), and — when ``reload.watch`` is true — a change of
the file on disk, polled every ``reload.watch_interval`` by size/mtime and
confirmed by a SHA-256 of the content (an editor touching the file without
changing it reloads nothing).

What a reload guarantees:

1. The whole file is parsed and validated before anything changes. An invalid
   file leaves the running rules in force; the errors (YAML path, line, value)
   are logged, answered by ``POST /reload`` as JSON, counted in
   ``gatekeeper_config_reloads_total{result="failure"}``, and
   ``AppState.config_reload_failed`` (the ``config_reload_failed`` alert
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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from gatekeeper.config import Config, ConfigError, ConfigProblem, Engine, Route, load_config
from gatekeeper.lifecycle.asyncutil import cancel_and_wait
from gatekeeper.lifecycle.epochs import RuntimeUsage
from gatekeeper.lifecycle.runtime import admission_limits
from gatekeeper.observability.gauges import wire_engine_gauges
from gatekeeper.observability.logs import redact_url
from gatekeeper.state import AppState
from gatekeeper.upstream import UpstreamPool

log = logging.getLogger("gatekeeper.reload")

# Bound once at start; a reload reports a change of these and keeps the running value.
RESTART_ONLY = ("listen", "admin_listen", "agent_listen", "box_id")


# --------------------------------------------------------------------------- pure parts


@dataclass(frozen=True)
class Overrides:
    """The command-line flags of ``gatekeeper run`` that override the file."""

    upstream: str | None = None
    listen: str | None = None
    admin_listen: str | None = None
    state_dir: str | None = None
    agent_listen: str | None = None
    box_id: str | None = None

    def apply(self, config: Config) -> Config:
        return config.with_overrides(
            upstream=self.upstream,
            listen=self.listen,
            admin_listen=self.admin_listen,
            state_dir=self.state_dir,
            agent_listen=self.agent_listen,
            box_id=self.box_id,
        )


@dataclass(frozen=True)
class Change:
    """One setting that differs between the running config and the reloaded one."""

    key: str
    old: Any
    new: Any

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "old": self.old, "new": self.new}


def _plain(value: Any, key: str) -> Any:
    """A JSON-ready, secret-free rendering of one config value."""
    if isinstance(value, Route):
        return value.summary()
    if isinstance(value, tuple | list):
        return [_plain(v, key) for v in value]
    if key.endswith("url") and isinstance(value, str):
        return redact_url(value)
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def diff(old: Config, new: Config) -> list[Change]:
    """Every leaf setting that changed, as dotted YAML paths (``source`` is not a setting).

    Routes compare as one list (order matters: the first match wins); messages
    compare per reason code. Engines compare by name (issue #11): one engine's
    settings are ``upstream.url`` and ``admission.max_in_flight`` as written; a
    list's are ``upstream.engines[<name>].<key>``, and ``upstream.url`` and
    ``admission.max_in_flight`` are then derived from it, so not reported.
    """
    out: list[Change] = []
    derived = {"upstream.listed"}
    if old.upstream.listed or new.upstream.listed:
        _engines_diff(old, new, out)
        derived |= {"upstream.engines"}
        if old.upstream.listed and new.upstream.listed:
            derived |= {"upstream.url", "admission.max_in_flight"}
    else:
        derived |= {"upstream.engines"}

    def walk(a: Any, b: Any, path: str) -> None:
        if a == b or path in derived:
            return
        if is_dataclass(a) and is_dataclass(b):
            for f in fields(a):
                if f.name != "source":
                    key = f"{path}.{f.name}" if path else f.name
                    walk(getattr(a, f.name), getattr(b, f.name), key)
            return
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{path}.{k}")
            return
        out.append(Change(path, _plain(a, path), _plain(b, path)))

    walk(old, new, "")
    return out


def _engines_diff(old: Config, new: Config, out: list[Change]) -> None:
    """``upstream.engines[<name>]`` added, removed, or changed key by key."""
    before = {e.name: e for e in old.upstream.engines}
    after = {e.name: e for e in new.upstream.engines}
    for name in [*before, *(n for n in after if n not in before)]:
        a, b = before.get(name), after.get(name)
        key = f"upstream.engines[{name}]"
        if a is None or b is None:
            out.append(Change(key, _engine_text(a), _engine_text(b)))
            continue
        if a.url != b.url:
            out.append(Change(f"{key}.url", redact_url(a.url), redact_url(b.url)))
        if a.max_in_flight != b.max_in_flight:
            out.append(Change(f"{key}.max_in_flight", a.max_in_flight, b.max_in_flight))


def _engine_text(e: Engine | None) -> str | None:
    return None if e is None else f"{redact_url(e.url)} (max_in_flight {e.max_in_flight})"


def keep_restart_only(running: Config, loaded: Config) -> tuple[Config, list[Change]]:
    """``loaded`` with the listeners of ``running``, plus the listener changes it asked for."""
    wanted = [
        Change(key, str(getattr(running, key)), str(getattr(loaded, key)))
        for key in RESTART_ONLY
        if getattr(running, key) != getattr(loaded, key)
    ]
    kept = Config(
        **{
            f.name: getattr(running if f.name in RESTART_ONLY else loaded, f.name)
            for f in fields(Config)
        }
    )
    # The state directory holds the open job store: it moves only with a restart.
    if running.jobs.dir != loaded.jobs.dir:
        wanted.append(Change("jobs.dir", str(running.jobs.dir), str(loaded.jobs.dir)))
        kept = replace(kept, jobs=replace(kept.jobs, dir=running.jobs.dir))
    return kept, wanted


def problem_json(p: ConfigProblem) -> dict[str, Any]:
    value = p.value if p.has_value else None
    if not isinstance(value, str | int | float | bool | type(None)):
        value = repr(value)
    return {"path": p.path, "line": p.line, "message": p.message, "value": value}


@dataclass(frozen=True)
class Outcome:
    """The result of one reload, as logged and as answered by ``POST /reload``."""

    ok: bool
    trigger: str
    source: str
    changes: tuple[Change, ...] = ()
    needs_restart: tuple[Change, ...] = ()
    errors: tuple[ConfigProblem, ...] = ()

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "result": "success" if self.ok else "failure",
            "trigger": self.trigger,
            "source": self.source,
        }
        if self.ok:
            body["changed"] = [c.to_json() for c in self.changes]
            body["needs_restart"] = [c.to_json() for c in self.needs_restart]
        else:
            body["errors"] = [problem_json(p) for p in self.errors]
        return body


# --------------------------------------------------------------------------- the adapter


@dataclass
class _Seen:
    """What the watcher last saw of the file: cheap stat first, content hash to confirm."""

    stat: tuple[int, int, int] | None = None  # (mtime_ns, size, inode)
    digest: str | None = None


@dataclass
class Reloader:
    """Reloads ``path`` into ``state``; one reload at a time, whatever triggered it."""

    state: AppState
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

    async def reload(self, trigger: str) -> Outcome:
        async with self._lock:
            try:
                loaded = self._load()
            except ConfigError as exc:
                return self._failed(trigger, exc)
            return self._apply(trigger, loaded)

    def trigger(self, trigger: str) -> None:
        """Reload in the background (a signal handler cannot await)."""
        self._spawn(self.reload(trigger), f"gatekeeper-reload-{trigger}")

    def _failed(self, trigger: str, exc: ConfigError) -> Outcome:
        st = self.state
        st.config_reload_failed = True
        st.metrics.config_reloads.labels("failure").inc()
        out = Outcome(False, trigger, self.path, errors=tuple(exc.problems))
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

    def _apply(self, trigger: str, loaded: Config) -> Outcome:
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
        wire_engine_gauges(st)  # an added engine's series, a removed one's gone (issue #11)
        st.metrics.config_last_reload_success.set(self.wall_clock())
        kept = {id(p) for p in new_rt.pools()}
        for pool in old_rt.pools():  # a removed engine's pools too, once its job is done
            if id(pool) not in kept:
                self._retiring.add(pool)
                self._spawn(self._retire(pool, ended), f"gatekeeper-retire-{pool.name}")
        out = Outcome(True, trigger, self.path, tuple(changes), tuple(restart))
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

    async def poll_once(self) -> Outcome | None:
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
