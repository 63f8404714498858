"""The PostgreSQL store's schema: created and migrated by gatekeeper itself, versioned.

Everything lives in one PostgreSQL schema (``jobs.postgres.schema``, default
``gatekeeper``); the store's connections set ``search_path`` to it, so the SQL
modules name tables without a prefix. ``migrate`` runs at every start, on one
connection, in one transaction that first takes ``pg_advisory_xact_lock`` on a
key derived from the schema's name: boxes starting at once on an empty database
queue behind that lock, the first creates the schema, the others find it done
(``tests/test_postgres_store.py`` starts two stores at once on an empty database).

``schema_version`` holds one row, the version the schema is at. ``MIGRATIONS``
maps each version to the statements that bring the schema from the previous one
to it; a concept that needs a table (a webhook outbox, batches) appends one
version with its DDL (version 2: the outbox, the client list's index and batches
of issue #20; version 3: the fairness ring's rounds, issue #20 §3; version 4: the
relay's secret and cross-box cancel requests of issue #21; version 5: bodies in the
database and the wake-up of several boxes, issue #21; version 6: each box's slots,
for the whole queue's ETAs, issue #21). A database of a
newer gatekeeper (a higher version) is refused with both numbers, never guessed
at. ``gatekeeper check`` reads the version without changing anything
(``read_version``).

The ``jobs`` columns are ``record.JobRecord``'s fields (``record.STORED``), their
SQLite types mapped to PostgreSQL's (``column_sql``); a field added to the record
later (nullable or with a default) is added here at the next start by
``ADD COLUMN IF NOT EXISTS``, as ``statedir.add_missing_columns`` does for SQLite.
Beside them, three columns only a shared store has: ``body_box`` (the box that
took the request and holds its body file), ``run_box`` (the box that runs or ran
it and holds its result file; see ``boxes.address`` for where to fetch it) and
``heartbeat`` (when ``run_box`` last stamped the running job, on the database's
clock: ``DB_NOW``, so boxes whose clocks disagree compare one clock).
"""

from __future__ import annotations

import hashlib
import re

import asyncpg

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.record import STORED

SCHEMA_VERSION = 6
# The database's clock in seconds since the epoch: heartbeats are stamped with it.
DB_NOW = "extract(epoch from clock_timestamp())"
_TYPES = {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION", "TEXT": "TEXT"}
_LIVE = f"state IN ('{JobState.QUEUED.value}', '{JobState.RUNNING.value}')"
_DONE = JobState.DONE.value


def column_sql(sqlite_decl: str) -> str:
    """A ``record`` field's SQLite column declaration in PostgreSQL's words."""
    if sqlite_decl == "INTEGER PRIMARY KEY AUTOINCREMENT":
        # An identity never gives a value twice (seq is never reused).
        return "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    kind, _, rest = sqlite_decl.partition(" ")
    return f"{_TYPES[kind]} {rest}".strip()


def _jobs_table() -> str:
    cols = [f"{f.name} {column_sql(f.metadata['sql'])}" for f in STORED]
    cols += ["body_box TEXT", "run_box TEXT", "heartbeat DOUBLE PRECISION"]
    return "CREATE TABLE jobs (\n    " + ",\n    ".join(cols) + "\n)"


def _version_1() -> list[str]:
    return [
        _jobs_table(),
        "CREATE INDEX jobs_state ON jobs (state, seq)",
        # A client's oldest queued job (sql_fair.CLAIM), small: queued rows only.
        f"CREATE INDEX jobs_queued ON jobs (client, seq) WHERE state = '{JobState.QUEUED.value}'",
        "CREATE INDEX jobs_finished ON jobs (finished) WHERE finished IS NOT NULL",
        # Coalescing across boxes (issue #21): at most one live job per key, enforced here.
        f"CREATE UNIQUE INDEX jobs_live_key ON jobs (coalesce_key)"
        f" WHERE coalesce_key IS NOT NULL AND {_LIVE}",
        "CREATE INDEX jobs_kept_key ON jobs (coalesce_key, finished)"
        f" WHERE coalesce_key IS NOT NULL AND state = '{_DONE}'",
        "CREATE INDEX jobs_kept_heads ON jobs (route, method, body_size, finished)"
        f" WHERE state = '{_DONE}' AND coalesce_key IS NOT NULL",
        "CREATE INDEX jobs_run_box ON jobs (run_box, state)",
        # The fairness ring (sql_fair): one row per client key, the head is the smallest turn.
        "CREATE SEQUENCE ring_turn",
        "CREATE TABLE ring (client TEXT PRIMARY KEY, turn BIGINT NOT NULL)",
        "CREATE INDEX ring_by_turn ON ring (turn)",
        "CREATE TABLE handles (id TEXT PRIMARY KEY, job_id TEXT NOT NULL, client TEXT NOT NULL,"
        " held BOOLEAN NOT NULL, created DOUBLE PRECISION NOT NULL, detached DOUBLE PRECISION,"
        " n BIGINT GENERATED ALWAYS AS IDENTITY)",
        "CREATE INDEX handles_job ON handles (job_id, created, n)",
        # Each box using the store: where its files are served from, when it was last seen.
        "CREATE TABLE boxes (id TEXT PRIMARY KEY, address TEXT, started DOUBLE PRECISION"
        " NOT NULL, seen DOUBLE PRECISION NOT NULL)",
    ]


def _version_2() -> list[str]:
    """Issue #20 on a shared store: the webhook outbox (``sql_outbox``), a client's own
    list (``sql_handles.client_handles``) and batches (``sql_batches``)."""
    return [
        # Deliveries not yet delivered; ``leased``/``leased_by``: the take in flight.
        "CREATE TABLE outbox (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " id TEXT NOT NULL UNIQUE, job_id TEXT NOT NULL, destination TEXT NOT NULL,"
        " url TEXT NOT NULL, event TEXT NOT NULL, payload BYTEA NOT NULL,"
        " created DOUBLE PRECISION NOT NULL, next_at DOUBLE PRECISION NOT NULL,"
        " attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,"
        " leased DOUBLE PRECISION, leased_by TEXT)",
        "CREATE INDEX outbox_due ON outbox (next_at, seq)",
        "CREATE INDEX outbox_job ON outbox (job_id, destination, seq)",
        "CREATE INDEX outbox_leased_by ON outbox (leased_by) WHERE leased_by IS NOT NULL",
        # The (job, destination) pairs that answered 410: nothing more is written for them.
        "CREATE TABLE outbox_gone (job_id TEXT NOT NULL, destination TEXT NOT NULL,"
        " PRIMARY KEY (job_id, destination))",
        # A client's handles newest first from a cursor (``n`` only grows).
        "CREATE INDEX handles_client ON handles (client, n)",
        "CREATE TABLE batches (id TEXT PRIMARY KEY, client TEXT NOT NULL, route TEXT NOT NULL,"
        " created DOUBLE PRECISION NOT NULL, total BIGINT NOT NULL)",
        "CREATE INDEX jobs_batch ON jobs (batch, seq) WHERE batch IS NOT NULL",
    ]


def _version_3() -> list[str]:
    """Issue #20 §3 on a shared store: the ring's rounds (a client joining the ring takes
    the round in service: ``sql_fair``). A version 2 ring's rows all get round 0 and keep
    their turns, i.e. their order; the round in service starts at 0. Written to run on
    a ring that already has any of it."""
    return [
        "ALTER TABLE ring ADD COLUMN IF NOT EXISTS round BIGINT NOT NULL DEFAULT 0",
        "DROP INDEX IF EXISTS ring_by_turn",
        "CREATE INDEX IF NOT EXISTS ring_order ON ring (round, turn)",
        # One row: the round of the last job claimed (V).
        "CREATE TABLE IF NOT EXISTS ring_clock (one BOOLEAN PRIMARY KEY DEFAULT TRUE"
        " CHECK (one), round BIGINT NOT NULL)",
        "INSERT INTO ring_clock (one, round) VALUES (TRUE, 0) ON CONFLICT DO NOTHING",
    ]


def _version_4_anybox() -> list[str]:
    """Issue #21, every box answers for every job (``sql_anybox``): the secret the boxes
    of one store authenticate the result relay with (one row, written by the first box
    that needs it), and the cancel requests a box made for a job another box holds
    (that box takes them with its next look: ``sql_anybox.take_cancels``)."""
    return [
        "CREATE TABLE relay_secret (one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),"
        " secret TEXT NOT NULL)",
        "CREATE TABLE cancel_requests (job_id TEXT PRIMARY KEY,"
        " requested DOUBLE PRECISION NOT NULL, by_box TEXT NOT NULL)",
        # When a box stopped cleanly (it left; it is not silent): NULL while it runs.
        "ALTER TABLE boxes ADD COLUMN stopped DOUBLE PRECISION",
    ]


def channel(schema: str) -> str:
    """The ``LISTEN/NOTIFY`` channel of ``schema``'s queue: one per schema, so two queues
    on one server never wake each other."""
    return f"gatekeeper_{check_name(schema)}"


def _version_5() -> list[str]:
    """Several boxes (issue #21): bodies any box can read, and the wake-up.

    ``bodies``: a request body up to ``jobs.postgres.max_body_bytes``, written with its
    job (``body_in_db``), so any box may claim the job; a larger one stays on the box
    that took it (``body_box``), the only box that claims it. ``notify_queued``: every
    row that becomes queued (a new job, a batch item, a job queued again by a lease
    sweep or by ``retry_interrupted``) notifies the schema's channel from inside the
    statement that queued it; PostgreSQL delivers it at commit, never for a rolled
    back job, and folds the identical notifications of one transaction into one.
    Written to run on a schema that already has any of it."""
    return [
        "ALTER TABLE jobs ADD COLUMN IF NOT EXISTS body_in_db BOOLEAN NOT NULL DEFAULT false",
        "CREATE TABLE IF NOT EXISTS bodies (job_id TEXT PRIMARY KEY, body BYTEA NOT NULL)",
        "CREATE OR REPLACE FUNCTION notify_queued() RETURNS trigger LANGUAGE plpgsql"
        " SET search_path FROM CURRENT AS $$"
        " BEGIN PERFORM pg_notify('gatekeeper_' || TG_TABLE_SCHEMA, ''); RETURN NULL; END $$",
        "DROP TRIGGER IF EXISTS jobs_queued_notify ON jobs",
        "CREATE TRIGGER jobs_queued_notify AFTER INSERT OR UPDATE OF state ON jobs"
        f" FOR EACH ROW WHEN (NEW.state = '{JobState.QUEUED.value}')"
        " EXECUTE FUNCTION notify_queued()",
        # A body in the database goes when its job ends, whichever box or sweep ended it.
        "CREATE OR REPLACE FUNCTION drop_body() RETURNS trigger LANGUAGE plpgsql"
        " SET search_path FROM CURRENT AS $$"
        " BEGIN DELETE FROM bodies WHERE job_id = NEW.id; RETURN NULL; END $$",
        "DROP TRIGGER IF EXISTS jobs_final_body ON jobs",
        "CREATE TRIGGER jobs_final_body AFTER UPDATE OF state ON jobs FOR EACH ROW"
        f" WHEN (NEW.body_in_db AND NOT {_LIVE.replace('state', 'NEW.state')})"
        " EXECUTE FUNCTION drop_body()",
    ]


def _version_6_places() -> list[str]:
    """Places in the whole queue (issue #21, ``sql_places``): each box's slots
    (``admission.max_in_flight``), written by the box with each read of the queue, so
    any box computes ETAs over the slots of every live box; and the waiting jobs under
    ``max_waiting`` (batch items are outside it): a client's by a range, all of them by
    an index-only scan."""
    return [
        "ALTER TABLE boxes ADD COLUMN IF NOT EXISTS slots INTEGER",
        "CREATE INDEX IF NOT EXISTS jobs_waiting ON jobs (client, seq)"
        f" WHERE state = '{JobState.QUEUED.value}' AND batch IS NULL",
    ]


MIGRATIONS: dict[int, list[str]] = {
    1: _version_1(),
    2: _version_2(),
    3: _version_3(),
    4: _version_4_anybox(),
    5: _version_5(),
    6: _version_6_places(),
}
assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class SchemaError(Exception):
    """The database's schema cannot be used by this gatekeeper (one line, names both)."""


def check_name(schema: str) -> str:
    """A schema name gatekeeper accepts: lower-case letters, digits and ``_``."""
    if not _NAME.fullmatch(schema):
        raise ValueError(f"not a schema name: {schema!r} (lower-case letters, digits, _)")
    return schema


def lock_key(schema: str) -> int:
    """The advisory lock key of ``schema`` (a signed 64-bit integer)."""
    digest = hashlib.sha256(f"gatekeeper schema {schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def read_version(con: asyncpg.Connection, schema: str) -> int:
    """The schema's version; 0 when gatekeeper never created it."""
    found = await con.fetchval("SELECT to_regclass($1)", f"{check_name(schema)}.schema_version")
    if found is None:
        return 0
    v = await con.fetchval(f"SELECT version FROM {schema}.schema_version")
    return 0 if v is None else int(v)


async def migrate(con: asyncpg.Connection, schema: str) -> int:
    """Create or upgrade ``schema`` to ``SCHEMA_VERSION``; returns the version found."""
    check_name(schema)
    async with con.transaction():
        await con.execute("SELECT pg_advisory_xact_lock($1)", lock_key(schema))
        await con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await con.execute(f"SET LOCAL search_path TO {schema}")
        found = await read_version(con, schema)
        if found > SCHEMA_VERSION:
            raise SchemaError(
                f"schema {schema} is at version {found}, this gatekeeper knows"
                f" {SCHEMA_VERSION} (a newer gatekeeper created it)"
            )
        if found == 0:
            await con.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            await con.execute("INSERT INTO schema_version VALUES (0)")
        if found >= 1:  # before the versions after 1, whose DDL may use a newer column
            await _add_missing_columns(con)
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version]:
                await con.execute(statement)
        await con.execute("UPDATE schema_version SET version = $1", SCHEMA_VERSION)
    return found


async def _add_missing_columns(con: asyncpg.Connection) -> None:
    """Fields a newer record has (record's module text), e.g. ``webhook`` and ``batch``
    on a version 1 schema made before them."""
    for f in STORED:
        decl = column_sql(f.metadata["sql"])
        if "PRIMARY KEY" not in decl:
            await con.execute(f"ALTER TABLE jobs ADD COLUMN IF NOT EXISTS {f.name} {decl}")
