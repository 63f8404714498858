"""The signing secrets: read from a file or an environment variable, never from the rules.

``Keys.read(config)`` reads every secret the rules name, once per rules object
(a reload that changes them is read again). A secret that cannot be read is a
problem naming its key (``jobs.webhooks.destinations[0].secret_file: ...``):
the start logs it, and that destination's deliveries wait (retried, then given
up at ``max_age``) rather than go out unsigned. ``gatekeeper check`` reads them
too (``check``): there each one is a ``ConfigError`` problem, with its YAML path
and line, and the check fails (exit 2) as for any other bad key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gatekeeper.config import Config, ConfigError
from gatekeeper.config.errors import ConfigProblem
from gatekeeper.config.reader import line_at
from gatekeeper.jobs.outbox import REQUEST_DESTINATION
from gatekeeper.jobs.webhooks.sign import SecretError, decode_secret

__all__ = ["Keys", "check"]


def _base(source: str) -> Path:
    if source.startswith("<") and source.endswith(">"):
        return Path(".")
    return Path(source).parent


def _read(
    path: str, file: str | None, env: str | None, base: Path, environ: Mapping[str, str]
) -> bytes | tuple[str, str]:
    """The key bytes, or the problem: (the key's YAML path, why). ``path`` is the key's
    prefix: ``<path>secret_file`` / ``<path>secret_env``."""
    if file is not None:
        key, where = f"{path}secret_file", base / Path(file).expanduser()
        try:
            text = where.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return key, f"cannot read {where}: {why}"
        label = f"the secret in {where}"
    elif env is not None:
        key = f"{path}secret_env"
        if env not in environ:
            return key, f"${env} is not set"
        text, label = environ[env], f"the secret in ${env}"
    else:
        return f"{path}secret_file", "no secret_file or secret_env"
    try:
        return decode_secret(text)
    except SecretError as exc:
        return key, f"{label} {exc}"


@dataclass(frozen=True)
class Keys:
    """Each destination's key (``REQUEST_DESTINATION`` for the requests' own), and those
    that could not be read: (the YAML path of the key, why)."""

    keys: Mapping[str, bytes]
    unreadable: tuple[tuple[str, str], ...]

    @property
    def problems(self) -> tuple[str, ...]:
        """Each unreadable key as one line: ``<YAML path>: <why>``."""
        return tuple(f"{path}: {why}" for path, why in self.unreadable)

    def key_for(self, destination: str) -> bytes | None:
        if destination.startswith(REQUEST_DESTINATION):
            return self.keys.get(REQUEST_DESTINATION)
        return self.keys.get(destination)

    @classmethod
    def read(cls, cfg: Config, environ: Mapping[str, str] = os.environ) -> Keys:
        w, base = cfg.jobs.webhooks, _base(cfg.source)
        keys: dict[str, bytes] = {}
        problems: list[tuple[str, str]] = []
        wanted = [
            (f"jobs.webhooks.destinations[{i}].", d.name, d.secret_file, d.secret_env)
            for i, d in enumerate(w.destinations)
        ]
        if w.allow:
            wanted.append(
                (
                    "jobs.webhooks.request_",
                    REQUEST_DESTINATION,
                    w.request_secret_file,
                    w.request_secret_env,
                )
            )
        for path, name, file, env in wanted:
            got = _read(path, file, env, base, environ)
            if isinstance(got, tuple):
                problems.append(got)
            else:
                keys[name] = got
        return cls(keys, tuple(problems))


def check(cfg: Config, environ: Mapping[str, str] = os.environ) -> None:
    """Every secret the rules name can be read and is a Standard Webhooks secret; else
    ConfigError with one problem per key (its YAML path and line in ``cfg.source``)."""
    unreadable = Keys.read(cfg, environ).unreadable
    if not unreadable:
        return
    try:
        text = Path(cfg.source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""
    raise ConfigError(
        [ConfigProblem(path, line_at(text, path), why) for path, why in unreadable], cfg.source
    )
