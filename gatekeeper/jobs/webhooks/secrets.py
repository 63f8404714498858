"""The signing secrets: read from a file or an environment variable, never from the rules.

``Keys.read(config)`` reads every secret the rules name, once per rules object
(a reload that changes them is read again). A secret that cannot be read is a
problem naming its key (``jobs.webhooks.destinations[0].secret_file: ...``):
the start logs it, and that destination's deliveries wait (retried, then given
up at ``max_age``) rather than go out unsigned.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gatekeeper.config import Config
from gatekeeper.jobs.outbox import REQUEST_DESTINATION
from gatekeeper.jobs.webhooks.sign import SecretError, decode_secret

__all__ = ["Keys"]


def _base(source: str) -> Path:
    if source.startswith("<") and source.endswith(">"):
        return Path(".")
    return Path(source).parent


def _read(
    path: str, file: str | None, env: str | None, base: Path, environ: Mapping[str, str]
) -> bytes | str:
    """``path`` is the key's prefix: ``<path>secret_file`` / ``<path>secret_env``."""
    """The key bytes, or the problem (``str``) naming the key."""
    if file is not None:
        where = base / Path(file).expanduser()
        try:
            text = where.read_text()
        except OSError as exc:
            return f"{path}secret_file: cannot read {where}: {exc.strerror or exc}"
        label = f"{path}secret_file ({where})"
    elif env is not None:
        if env not in environ:
            return f"{path}secret_env: ${env} is not set"
        text, label = environ[env], f"{path}secret_env (${env})"
    else:
        return f"{path}secret_file: no secret_file or secret_env"
    try:
        return decode_secret(text)
    except SecretError as exc:
        return f"{label}: the secret {exc}"


@dataclass(frozen=True)
class Keys:
    """Each destination's key (``REQUEST_DESTINATION`` for the requests' own), and the
    problems of those that could not be read."""

    keys: Mapping[str, bytes]
    problems: tuple[str, ...]

    def key_for(self, destination: str) -> bytes | None:
        if destination.startswith(REQUEST_DESTINATION):
            return self.keys.get(REQUEST_DESTINATION)
        return self.keys.get(destination)

    @classmethod
    def read(cls, cfg: Config, environ: Mapping[str, str] = os.environ) -> Keys:
        w, base = cfg.jobs.webhooks, _base(cfg.source)
        keys: dict[str, bytes] = {}
        problems: list[str] = []
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
            if isinstance(got, str):
                problems.append(got)
            else:
                keys[name] = got
        return cls(keys, tuple(problems))
