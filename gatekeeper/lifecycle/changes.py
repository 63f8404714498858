"""What a reload changes, as plain values (the pure half of ``reload``).

``diff`` names every setting that differs between the running rules and the
reloaded ones; ``keep_restart_only`` keeps what is bound at start (listeners,
the box id, the state directory) and reports the change it asked for;
``Overrides`` re-applies the command-line flags; ``ReloadResult`` is one
reload as logged and as answered by ``POST /reload``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any

from gatekeeper.config import Config, ConfigProblem, Engine, Route
from gatekeeper.observability.logs import redact_url

# Bound once at start; a reload reports a change of these and keeps the running value.
RESTART_ONLY = ("listen", "admin_listen", "agent_listen", "box_id")


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
    # So does the store itself (issue #21): the open store is the running one.
    for key in ("store", "postgres"):
        if getattr(running.jobs, key) != getattr(loaded.jobs, key):
            old, new = getattr(running.jobs, key), getattr(loaded.jobs, key)
            wanted.append(Change(f"jobs.{key}", str(old), str(new)))
            kept = replace(kept, jobs=replace(kept.jobs, **{key: old}))
    return kept, wanted


def problem_json(p: ConfigProblem) -> dict[str, Any]:
    value = p.value if p.has_value else None
    if not isinstance(value, str | int | float | bool | type(None)):
        value = repr(value)
    return {"path": p.path, "line": p.line, "message": p.message, "value": value}


@dataclass(frozen=True)
class ReloadResult:
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
