"""``jobs``: where queued jobs, their bodies and kept results live, and for how long.

The state directory holds the job database and files (``gatekeeper.jobs.sqlite``);
it must survive a restart, so by default it sits next to the rules file rather
than in ``$TMPDIR``. Its location is bound at start: a reload that changes it
is reported as "needs restart" (``gatekeeper.lifecycle.reload``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from gatekeeper.config.declare import (
    boolean,
    checked,
    declared,
    duration,
    integer,
    section,
    string,
)
from gatekeeper.config.webhooks import Webhooks

STATE_DIR_NAME = "gatekeeper-state"
LISTING_MODES = ("auto", "on", "off")


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def check_vary(v: Any) -> str | None:
    if isinstance(v, list) and all(isinstance(h, str) and _HEADER_NAME.fullmatch(h) for h in v):
        return None
    return "must be a list of header names, e.g. [Authorization, Cookie, X-User-Id], or null"


def check_dir(v: Any) -> str | None:
    if not isinstance(v, str) or not v.strip() or "\0" in v:
        return "must be a directory path (or null for the default next to the rules file)"
    return None


@declared
class Jobs:
    dir: str | None = checked(
        "State directory: the job database, request bodies and kept results. null:"
        " gatekeeper-state next to the rules file (./gatekeeper-state when the config did not"
        " come from a file). A relative path is relative to the rules file's directory, so the"
        " service finds its state whatever its working directory.",
        check_dir,
        {"type": "string", "pattern": "\\S"},
        allow_none=True,
        default=None,
    )
    keep: float = duration(
        "How long finished results are kept (for GET .../result and coalescing).", default=86400.0
    )
    max_bytes: int = integer(
        "Total size of kept results on disk; the oldest finished ones are evicted beyond it.",
        minimum=1,
        default=10 * 1024**3,
    )
    coalesce: bool = boolean(
        "Attach a request identical to a queued/running job (or a kept result) to it.", default=True
    )
    coalesce_vary: tuple[str, ...] | None = checked(
        "Request headers whose values must match for two requests to share a job (the"
        " engine may answer another Authorization differently). null: Authorization, Cookie"
        " and the client-key header when admission.queue.client_key is header:<Name>.",
        check_vary,
        {
            "type": "array",
            "items": {"type": "string", "pattern": "^[!#$%&'*+\\-.^_`|~0-9A-Za-z]+$"},
        },
        convert=tuple,
        allow_none=True,
        default=None,
    )
    coalesce_across_clients: bool = boolean(
        "Let requests of different client keys share a job (with coalesce_vary: [] for"
        " requests that carry credentials). false: a job is shared only within one client key.",
        default=False,
    )
    retry_interrupted: bool = boolean(
        "A job running when the process died is re-queued instead of failed 'interrupted'.",
        default=False,
    )
    min_free_bytes: int = integer(
        "Free space the state directory keeps: below it, new jobs are refused 503 storage_full"
        " (Retry-After: admission.retry_after_default) and the alert GatekeeperStateDiskLow"
        " fires; jobs are taken again by themselves once space returns. Sampled in the"
        " background every 0.25 s (the jobs tick). The default, 512 MiB, holds the bodies"
        " and answers of a few songs (a 5-minute WAV is about 50 MiB), so a job accepted"
        " just above the floor can still be written whole. 0 disables the floor.",
        minimum=0,
        default=512 * 1024**2,
    )
    listing: str = string(
        "GET <jobs_path> on the public listener: the caller's own jobs (those of its client"
        " key), newest first. auto: on only when admission.queue.client_key is header:<Name>"
        " (a user's own list; a request without the header is refused 400), off with remote"
        " keys, where everyone behind one address would share one list. on: for any client"
        " key. off: 404 listing_off.",
        choices=LISTING_MODES,
        default="auto",
    )
    webhooks: Webhooks = section(
        "Signed job events POSTed to receivers (docs/webhooks.md).", factory=Webhooks
    )

    def state_dir(self, source: str) -> Path:
        """The absolute state directory for a config loaded from ``source`` (Config.source).

        ``source`` is a file path, or ``"<defaults>"`` / ``"<string>"`` (no file: the
        working directory stands in for the file's directory; so it does for the rules
        packaged with gatekeeper). ``~`` is expanded.
        """
        base = Path(".") if _no_file(source) else Path(source).parent
        # An absolute dir replaces base (pathlib's "/" keeps the right side's root).
        rel = STATE_DIR_NAME if self.dir is None else Path(self.dir).expanduser()
        return Path(os.path.abspath(base / rel))


# The rules shipped inside the package (``gatekeeper run`` with no --config and no
# ./rules.yaml): their directory may be read-only, or a source checkout.
_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def _no_file(source: str) -> bool:
    if source.startswith("<") and source.endswith(">"):
        return True
    try:
        return Path(source).resolve().parent == _PACKAGE_DIR
    except OSError:
        return False
