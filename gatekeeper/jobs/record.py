"""What the store keeps of a job: ``JobRecord``, each field declared once.

The store's columns, its row mapping and its INSERT are derived from this
dataclass (``dataclasses.fields``): a field's ``column`` metadata is its SQL
type, and its ``encode``/``decode`` turn its value into a column value and back.
Adding a field is one line here; a nullable one (or one with a SQL default) is
added to an older database when it is opened (``statedir.add_missing_columns``),
any other needs a schema version bump.

Times are wall clock (``time.time()``): a record outlives the process and its
loop clock. The live job (``model.Job``) is built from a record in one place,
``Job.from_record``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import Field, dataclass, field, fields
from typing import Any

from gatekeeper.core.vocab import JobState

Headers = tuple[tuple[str, str], ...]


def dump_headers(headers: Headers) -> str:
    return json.dumps([[k, v] for k, v in headers], ensure_ascii=False, separators=(",", ":"))


def load_headers(text: str) -> Headers:
    return tuple((str(k), str(v)) for k, v in json.loads(text))


def _opt(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None else fn(v)


def column(
    sql: str,
    *,
    encode: Callable[[Any], Any] | None = None,
    decode: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """A stored field's metadata: its SQL column type and how its value is stored and read."""
    return {"sql": sql, "encode": encode, "decode": decode}


@dataclass(frozen=True)
class JobRecord:
    """One job as the store keeps it. A new job is built with the arrival fields only."""

    # -- given at arrival
    id: str = field(metadata=column("TEXT NOT NULL UNIQUE"))
    route: str = field(metadata=column("TEXT NOT NULL"))  # the route's name at arrival
    client: str = field(metadata=column("TEXT NOT NULL"))  # the full client key (per_client)
    held: bool = field(metadata=column("INTEGER NOT NULL", encode=int, decode=bool))
    method: str = field(metadata=column("TEXT NOT NULL"))
    target: str = field(metadata=column("TEXT NOT NULL"))  # raw path + query as sent
    # the upstream request headers, in order, duplicates kept
    headers: Headers = field(
        metadata=column("TEXT NOT NULL", encode=dump_headers, decode=load_headers)
    )
    coalesce_key: str | None = field(metadata=column("TEXT"))
    body_size: int = field(metadata=column("INTEGER NOT NULL"))
    # stamped by the service at submit (a new record carries 0.0 until then)
    created: float = field(default=0.0, metadata=column("REAL NOT NULL"))
    # -- kept by the store
    # arrival order: assigned by the store at create (0 before), increasing, never reused
    seq: int = field(default=0, metadata=column("INTEGER PRIMARY KEY AUTOINCREMENT"))
    state: JobState = field(
        default=JobState.QUEUED, metadata=column("TEXT NOT NULL", encode=str, decode=JobState)
    )
    # the ending's reason code (states.Endings)
    reason: str | None = field(default=None, metadata=column("TEXT"))
    started: float | None = field(default=None, metadata=column("REAL"))
    finished: float | None = field(default=None, metadata=column("REAL"))
    result_status: int | None = field(default=None, metadata=column("INTEGER"))
    result_reason: str | None = field(default=None, metadata=column("TEXT"))
    # the engine's end-to-end headers
    result_headers: Headers | None = field(
        default=None, metadata=column("TEXT", encode=_opt(dump_headers), decode=_opt(load_headers))
    )
    # bytes of the result body written so far / in total
    result_bytes: int = field(default=0, metadata=column("INTEGER NOT NULL DEFAULT 0"))
    progress: float | None = field(default=None, metadata=column("REAL"))  # 0..1 when known
    # how many extra requests attached
    coalesced: int = field(default=0, metadata=column("INTEGER NOT NULL DEFAULT 0"))
    # the engine's name it was started on (mark_running): after a kill -9 that engine is
    # still computing it, and gets no new generation until known idle (issue #18 §5)
    engine: str | None = field(default=None, metadata=column("TEXT"))
    # the request's own webhook (Gatekeeper-Webhook, allowed by jobs.webhooks.allow):
    # {"url": ..., "events": [...]} as JSON; its deliveries outlive the process
    webhook: str | None = field(default=None, metadata=column("TEXT"))
    # the batch it is an item of (``batch.record``; issue #20 §3), None for a lone job
    batch: str | None = field(default=None, metadata=column("TEXT"))


STORED: tuple[Field[Any], ...] = fields(JobRecord)
COLUMNS: tuple[str, ...] = tuple(f.name for f in STORED)


def encode(record: JobRecord) -> dict[str, Any]:
    """The column values of ``record``, by column name."""
    out: dict[str, Any] = {}
    for f in STORED:
        value = getattr(record, f.name)
        enc = f.metadata["encode"]
        out[f.name] = value if enc is None else enc(value)
    return out


def decode(row: Any) -> JobRecord:
    """A record from a row that maps column names to values (``sqlite3.Row``, a dict)."""
    values: dict[str, Any] = {}
    for f in STORED:
        value = row[f.name]
        dec = f.metadata["decode"]
        values[f.name] = value if dec is None else dec(value)
    return JobRecord(**values)
