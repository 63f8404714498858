"""``jobs``: where queued jobs, their bodies and kept results live, and for how long.

The state directory holds the job database and files (``gatekeeper.jobs.sqlite``);
it must survive a restart, so by default it sits next to the rules file rather
than in ``$TMPDIR``. Its location is bound at start: a reload that changes it
is reported as "needs restart" (``gatekeeper.reload``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gatekeeper.config.reader import Section

STATE_DIR_NAME = "gatekeeper-state"


@dataclass(frozen=True)
class Jobs:
    # None: "<directory of the rules file>/gatekeeper-state" ("./gatekeeper-state" when the
    # config did not come from a file). A relative path is relative to the rules file's
    # directory, so the service finds its state whatever its working directory.
    dir: str | None = None
    # How long finished results are kept (for GET .../result and coalescing).
    keep: float = 86400.0
    # Total size of kept results on disk; the oldest finished ones are evicted beyond it.
    max_bytes: int = 10 * 1024**3
    # Attach a request identical to a queued/running job (or a kept result) to it.
    coalesce: bool = True
    # A job running when the process died is re-queued instead of failed "interrupted".
    retry_interrupted: bool = False

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


def check_dir(v: Any) -> str | None:
    if not isinstance(v, str) or not v.strip() or "\0" in v:
        return "must be a directory path (or null for the default next to the rules file)"
    return None


def read_jobs(sec: Section) -> Jobs:
    d = Jobs()
    jobs = Jobs(
        dir=sec.get("dir", d.dir, check_dir, allow_none=True),
        keep=sec.duration("keep", d.keep),
        max_bytes=sec.integer("max_bytes", d.max_bytes, minimum=1),
        coalesce=sec.boolean("coalesce", d.coalesce),
        retry_interrupted=sec.boolean("retry_interrupted", d.retry_interrupted),
    )
    sec.close()
    return jobs
