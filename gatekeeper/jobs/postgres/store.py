"""``PostgresJobStore``: the job store shared by several boxes, on PostgreSQL (issue #21).

Records live in PostgreSQL (``schema``, ``sql_*``); a job's files live on the
box that made them, in its own state directory (``files.JobFiles``, locked by
``statedir`` exactly as the SQLite store's): the request body on the box that
took the request (``body_box``), the result on the box that ran it
(``run_box``). Each box has an id kept in its state directory (``box-id``,
made once) and registers in ``boxes`` with its internal address, where another
box fetches a result from (the relay on the admin listener: ``sql_anybox``,
``jobs.anybox``, docs/postgres.md). A box replays (``find_coalesce``) only
results on its own disk, and recovers, evicts and counts (``results_bytes``)
only its own files.
The webhook outbox, a client's list and batches (issue #20) are the mixins of
``sql_outbox``, ``sql_handles`` and ``sql_batches``.

Every method is synchronous and waits for the database through ``bridge.Bridge``
(bounded by ``timeout``; a circuit breaker refuses calls at once while the
database is unreachable: ``guard.StoreUnavailable``, 503 ``store_unavailable``).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import asyncpg

from gatekeeper.core.vocab import FINAL_STATES, JobState
from gatekeeper.jobs.files import BodyWriter, JobFiles, ResultWriter, check_id
from gatekeeper.jobs.guard import StoreUnavailable
from gatekeeper.jobs.handles import Handle
from gatekeeper.jobs.head import RequestHead
from gatekeeper.jobs.outbox import Delivery
from gatekeeper.jobs.postgres import schema as sch
from gatekeeper.jobs.postgres import (
    sql_fair,
    sql_handles,
    sql_heads,
    sql_outbox,
    sql_records,
)
from gatekeeper.jobs.postgres.bridge import Bridge
from gatekeeper.jobs.postgres.housekeeping import PostgresHousekeeping
from gatekeeper.jobs.postgres.sql_anybox import PostgresAnyBox
from gatekeeper.jobs.postgres.sql_batches import PostgresBatches
from gatekeeper.jobs.postgres.sql_boxes import PostgresBoxes
from gatekeeper.jobs.postgres.sql_handles import PostgresListing
from gatekeeper.jobs.postgres.sql_outbox import PostgresOutbox
from gatekeeper.jobs.postgres.sql_places import PostgresPlaces
from gatekeeper.jobs.record import Headers, JobRecord, decode, dump_headers
from gatekeeper.jobs.shared import Fenced
from gatekeeper.jobs.statedir import prepare, take_lock
from gatekeeper.jobs.states import KEPT_STATES, sources
from gatekeeper.jobs.store import StoreOpenError

BOX_ID_FILE = "box-id"
_KEPT = frozenset(s.value for s in KEPT_STATES)


def box_id_of(directory: Path) -> str:
    """This state directory's box id, made once (the directory is locked by the caller)."""
    path = directory / BOX_ID_FILE
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        box = secrets.token_hex(8)
        path.write_text(box + "\n", encoding="ascii")
        return box


async def _register(con: asyncpg.Connection, box: str, address: str | None) -> None:
    now = time.time()
    await con.execute(
        "INSERT INTO boxes (id, address, started, seen) VALUES ($1, $2, $3, $3)"
        " ON CONFLICT (id) DO UPDATE SET address = $2, started = $3, seen = $3",
        box,
        address,
        now,
    )


class PostgresJobStore(
    PostgresOutbox,
    PostgresListing,
    PostgresBatches,
    PostgresBoxes,
    PostgresHousekeeping,
    PostgresAnyBox,
    PostgresPlaces,
):
    """Jobs in a PostgreSQL schema shared by boxes, files in this box's state directory;
    the outbox, a client's list, batches, the boxes' heartbeats and sweep
    (``shared.SharedQueue``), recovery and eviction, and any box answering for every job
    (``anybox_store.AnyBoxStore``: the relay, cross-box cancels, the fleet) and the whole
    queue's places and limits (``sql_places``) are their modules' mixins."""

    def __init__(
        self,
        directory: Path,
        lock: IO[str],
        bridge: Bridge,
        box: str,
        *,
        channel: str = "",
        max_body_bytes: int = 0,
        lease: float = 30.0,
    ):
        self.directory = directory
        self.box = box
        self.bridge = bridge
        self.channel = channel
        self.max_body_bytes = max_body_bytes
        self.lease = lease  # jobs.lease: a box seen within it is alive (``recover``)
        self._lock = lock
        self._files = JobFiles(directory)
        self._claimed: set[str] = set()  # running here, by this process (``finish``)
        self.skipped_bodies: frozenset[str] = frozenset()  # set by the service (``bodyplan``)

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        dsn: str,
        schema: str = "gatekeeper",
        pool_size: int = 4,
        timeout: float = 1.0,
        address: str | None = None,
        max_body_bytes: int = 1024**2,
        lease: float = 30.0,
    ) -> PostgresJobStore:
        """Lock ``directory``, connect, create or migrate the schema and register the box.
        ``StateDirError`` for the directory, ``StoreOpenError`` for the database."""
        directory = Path(directory)
        sch.check_name(schema)
        prepare(directory)
        lock = take_lock(directory)
        try:
            box = box_id_of(directory)
            bridge = Bridge(dsn, schema=schema, pool_size=pool_size, timeout=timeout)

            async def setup(con: asyncpg.Connection) -> None:
                await sch.migrate(con, schema)
                await con.execute(f"SET search_path TO {schema}")
                await _register(con, box, address)
                await sql_outbox.release(con, box)  # this box's last process is gone

            try:
                bridge.start(setup)
            except sch.SchemaError as exc:
                raise StoreOpenError(f"jobs.postgres: {exc}") from exc
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                why = str(exc) or type(exc).__name__
                raise StoreOpenError(f"jobs.postgres: cannot use PostgreSQL: {why}") from exc
        except BaseException:
            lock.close()
            raise
        return cls(
            directory,
            lock,
            bridge,
            box,
            channel=sch.channel(schema),
            max_body_bytes=max_body_bytes,
            lease=lease,
        )

    def close(self) -> None:
        """Close the pool, stop the store's thread, release the directory (even when
        closing the pool fails); idempotent."""
        try:
            self.bridge.close()
        finally:
            if not self._lock.closed:
                self._lock.close()

    def check_file(self) -> str | None:
        """The records live in the PostgreSQL server, not in a file of the state
        directory that could be deleted under this process: nothing to put back (an
        unreachable server is the breaker's, ``bridge``)."""
        return None

    # -- records -----------------------------------------------------------------------------

    def create(self, record: JobRecord, outbox: Sequence[Delivery] = ()) -> JobRecord:
        """A new queued job, and the deliveries announcing it in its transaction."""
        check_id(record.id)
        if record.state is not JobState.QUEUED:
            raise ValueError(f"a new job is queued, not {record.state}")
        body = self.shared_body(record)
        return self.bridge.call("create", sql_records.create, record, self.box, list(outbox), body)

    def shared_body(self, record: JobRecord) -> bytes | None:
        """The body any box may read from the database (up to ``max_body_bytes``, read
        from the file ``submit`` just wrote); None: it stays on this box, the only one
        that may claim the job (docs/postgres.md)."""
        if record.body_size > self.max_body_bytes:
            return None
        path = self._files.body_path(record.id)
        return b"" if path is None else path.read_bytes()

    def get(self, job_id: str) -> JobRecord | None:
        return self.bridge.call("get", sql_records.get, job_id)

    def queued(self) -> list[JobRecord]:
        return self.bridge.call("queued", sql_records.in_state, JobState.QUEUED.value)

    def running(self) -> list[JobRecord]:
        return self.bridge.call("running", sql_records.in_state, JobState.RUNNING.value)

    def find_coalesce(self, key: str, now: float, keep: float) -> JobRecord | None:
        """A live job with ``key`` on any box; else the newest kept done 2xx within
        ``keep`` whose result file is on this box."""
        live = self.bridge.call("find_coalesce", sql_records.live_with_key, key)
        if live is not None:
            return live
        kept = self.bridge.call(
            "find_coalesce", sql_records.kept_with_key, key, float(now - keep), self.box
        )
        return next((r for r in kept if self._files.has_result(r.id)), None)

    def kept_like(self, head: RequestHead, now: float, keep: float) -> bool:
        return self.bridge.call("kept_like", sql_heads.kept_like, head, float(now - keep))

    def add_coalesced(self, job_id: str) -> int:
        return self.bridge.call("add_coalesced", sql_records.add_coalesced, job_id)

    # -- handles -----------------------------------------------------------------------------

    def add_handle(self, handle: Handle) -> None:
        check_id(handle.id)
        self.bridge.call("add_handle", sql_handles.add, handle)

    def get_handle(self, handle_id: str) -> Handle | None:
        return self.bridge.call("get_handle", sql_handles.get, handle_id)

    def detach_handle(self, handle_id: str, when: float) -> Handle:
        return self.bridge.call("detach_handle", sql_handles.detach, handle_id, float(when))

    def handles_of(self, job_id: str) -> list[Handle]:
        return self.bridge.call("handles_of", sql_handles.of_job, job_id)

    # -- the life of a job -------------------------------------------------------------------

    def mark_running(
        self,
        job_id: str,
        started: float,
        engine: str | None = None,
        outbox: Sequence[Delivery] = (),
    ) -> JobRecord:
        row = self.bridge.call(
            "mark_running",
            sql_records.mark_running,
            job_id,
            float(started),
            engine,
            self.box,
            list(outbox),
        )
        self._claimed.add(job_id)
        return row

    def claim_next(self, started: float, engine: str | None = None) -> JobRecord | None:
        """The next queued job of the whole shared queue by the fairness rule, now
        running on this box (``sql_fair.CLAIM``: one statement); None if none."""
        skip = self.skipped_bodies  # taking boxes whose large bodies wait (``bodyplan``)
        row = self.bridge.call(
            "claim_next", sql_fair.claim, float(started), engine, self.box, self.lease, skip
        )
        if row is None:
            return None
        claimed = decode(row)
        self._claimed.add(claimed.id)
        if self._files.body_path(claimed.id) is None:  # taken by another box: from the database
            self.body_from_db(claimed.id)  # sql_anybox: given back if it cannot be written
        return claimed

    def set_result_head(
        self, job_id: str, status: int, reason: str | None, headers: Headers
    ) -> None:
        self.bridge.call(
            "set_result_head",
            sql_records.update,
            job_id,
            "result_status = $3, result_reason = $4, result_headers = $5",
            (status, reason, dump_headers(headers)),
            [JobState.RUNNING.value],
            self.box,
        )

    def set_progress(self, job_id: str, progress: float | None, result_bytes: int) -> None:
        """Progress and result bytes; also the running job's heartbeat (``heartbeat``)."""
        self.bridge.call(
            "set_progress",
            sql_records.update,
            job_id,
            f"progress = $3, result_bytes = $4, heartbeat = {sch.DB_NOW}",
            (None if progress is None else float(progress), result_bytes),
            [JobState.RUNNING.value],
            self.box,
        )

    def finish(
        self,
        job_id: str,
        state: JobState,
        reason: str | None,
        finished: float,
        outbox: Sequence[Delivery] = (),
    ) -> JobRecord:
        if state not in FINAL_STATES:
            raise ValueError(f"{state} is not a final state")
        # The fence (issue #21): a job this process claimed ends only while it still runs
        # here; any other job only while it is queued. So a box swept while it was away
        # never ends a job queued again meanwhile (``shared.Fenced`` instead).
        ran = JobState.RUNNING if job_id in self._claimed else JobState.QUEUED
        froms = [s.value for s in sources(state) if s is ran]
        try:
            row = self._finish(job_id, state, reason, finished, outbox, froms)
        except Fenced:
            self._claimed.discard(job_id)
            raise
        self._claimed.discard(job_id)
        self._files.drop_body(job_id)
        if state is JobState.EXPIRED:
            self._files.ledger.drop_job(job_id)
        return row

    def _finish(
        self,
        job_id: str,
        state: JobState,
        reason: str | None,
        finished: float,
        outbox: Sequence[Delivery],
        froms: list[str],
    ) -> JobRecord:
        return self.bridge.call(
            "finish",
            sql_records.finish,
            job_id,
            "state = $3, reason = $4, finished = $5",
            (state.value, reason, float(finished)),
            froms,
            list(outbox),
            self.box,
        )

    # -- files: this box's (the Protocol documents each) -------------------------------------

    def results_bytes(self) -> int:
        return self._files.ledger.total

    def body_writer(self, job_id: str) -> BodyWriter:
        return self._files.body_writer(job_id)

    @property
    def bodies_dir(self) -> Path:
        return self._files.bodies

    def body_target(self, job_id: str) -> Path:
        return self._files.body_target(job_id)

    def body_path(self, job_id: str) -> Path | None:
        return self._files.body_path(job_id)

    def result_writer(self, job_id: str) -> ResultWriter:
        def committed(size: int) -> None:
            # The file is whole; an unreachable store gets the size with the job's ending
            # (the runner's set_progress is written again then: issue #21).
            with contextlib.suppress(StoreUnavailable):
                self.bridge.call("result_writer", sql_records.set_result_bytes, job_id, size)

        return self._files.result_writer(job_id, committed)

    def result_path(self, job_id: str) -> Path | None:
        return self._files.result_path(job_id)
