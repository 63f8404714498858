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

from gatekeeper.config.build import section_check
from gatekeeper.config.declare import (
    boolean,
    checked,
    declared,
    duration,
    integer,
    section,
    string,
)
from gatekeeper.config.reader import Context, Section
from gatekeeper.config.values import URL_SCHEMA, to_url, url_error
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


def check_file(v: Any) -> str | None:
    if not isinstance(v, str) or not v.strip() or "\0" in v:
        return "must be a file path (or null)"
    return None


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_env_name(v: Any) -> str | None:
    if isinstance(v, str) and _ENV_NAME.fullmatch(v):
        return None
    return "must be the name of an environment variable, e.g. GATEKEEPER_POSTGRES_DSN"


def check_schema_name(v: Any) -> str | None:
    if isinstance(v, str) and _SCHEMA_NAME.fullmatch(v):
        return None
    return "must be a PostgreSQL schema name: lower-case letters, digits and _ (at most 63)"


@declared
class Postgres:
    """``jobs.postgres``: the shared job store (issue #21; docs/postgres.md). The DSN is
    never in the rules file: it names the variable or the file that holds it."""

    dsn_env: str | None = checked(
        "Name of the environment variable that holds the PostgreSQL DSN"
        " (postgresql://user:password@host:5432/db). One of dsn_env and dsn_file.",
        check_env_name,
        {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        allow_none=True,
        default=None,
    )
    dsn_file: str | None = checked(
        "A file whose first line is the DSN (a mounted secret). Relative to the rules"
        " file's directory. One of dsn_env and dsn_file.",
        check_file,
        {"type": "string", "pattern": "\\S"},
        allow_none=True,
        default=None,
    )
    pool_size: int = integer(
        "Connections this box keeps to PostgreSQL (the store's own thread uses them).",
        minimum=1,
        maximum=100,
        default=4,
    )
    schema: str = checked(
        "The PostgreSQL schema of gatekeeper's tables, created and migrated by gatekeeper;"
        " every box of one queue names the same one.",
        check_schema_name,
        {"type": "string", "pattern": "^[a-z_][a-z0-9_]{0,62}$"},
        default="gatekeeper",
    )
    timeout: float = duration(
        "The longest a store call may keep the event loop waiting for PostgreSQL; past it"
        " the store counts as unavailable (new submissions get 503 store_unavailable)"
        " until a background probe sees it answer again.",
        default=1.0,
    )
    address: str | None = checked(
        "This box's internal URL, where the other boxes of the store fetch the results it"
        " produced and the large request bodies it took (the relays are served on the admin"
        " listener; docs/postgres.md). null:"
        " http://<admin_listen host>:<admin port>, the host name when admin_listen is a"
        " wildcard (0.0.0.0, ::). Set it when the other boxes reach this one by another name.",
        url_error,
        URL_SCHEMA,
        allow_none=True,
        convert=to_url,
        default=None,
    )
    max_body_bytes: int = integer(
        "Request bodies up to this size are stored in PostgreSQL with their job, so any box"
        " may claim it and read its body from the database; a larger body stays on the box"
        " that took the request, and a box that claims that job fetches it from there"
        " through the body relay (the admin listener; docs/postgres.md; issue #21). 0:"
        " every body stays on its box.",
        minimum=0,
        default=1024**2,
    )


@section_check(Postgres)
def _one_dsn_source(pg: Postgres, sec: Section, ctx: Context) -> Postgres:
    if pg.dsn_env is not None and pg.dsn_file is not None:
        sec.problem("dsn_file", sec.node_of("dsn_file"), "set dsn_env or dsn_file, not both")
    return pg


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
    lease: float = duration(
        "With jobs.store: postgres, a box that has not stamped its heartbeat for this long"
        " (PostgreSQL's clock; each box beats every lease/3) is dead to the others: its"
        " running jobs are failed 'interrupted' (queued again in their place with"
        " retry_interrupted) by the first box that notices (every lease/2), and a box that"
        " comes back after that stops those generations and discards their results.",
        default=30.0,
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

    store: str = string(
        "Where job records live: sqlite (one box, in the state directory) or postgres"
        " (shared by several boxes: jobs.postgres). Bodies and results stay in the state"
        " directory of the box that made them either way.",
        choices=("sqlite", "postgres"),
        default="sqlite",
    )
    postgres: Postgres = section(
        "The PostgreSQL store (used when store is postgres).", factory=Postgres
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


@section_check(Jobs)
def _postgres_needs_a_dsn(jobs: Jobs, sec: Section, ctx: Context) -> Jobs:
    pg = jobs.postgres
    if jobs.store == "postgres" and pg.dsn_env is None and pg.dsn_file is None:
        sec.problem(
            "store",
            sec.node_of("store"),
            "postgres needs jobs.postgres.dsn_env or jobs.postgres.dsn_file",
            jobs.store,
        )
    return jobs


def _base_dir(source: str) -> Path:
    return Path(".") if _no_file(source) else Path(source).parent


def postgres_dsn(pg: Postgres, source: str) -> str:
    """The DSN from the variable or the file the rules name; ValueError (one line, naming
    the variable or file) when it is not there."""
    if pg.dsn_env is not None:
        dsn = os.environ.get(pg.dsn_env, "").strip()
        if not dsn:
            raise ValueError(f"jobs.postgres.dsn_env: the variable {pg.dsn_env} is not set")
        return dsn
    if pg.dsn_file is None:
        raise ValueError("jobs.postgres: neither dsn_env nor dsn_file is set")
    path = _base_dir(source) / Path(pg.dsn_file).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"jobs.postgres.dsn_file: {path}: {exc.strerror or exc}") from exc
    dsn = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not dsn:
        raise ValueError(f"jobs.postgres.dsn_file: {path} is empty")
    return dsn


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
