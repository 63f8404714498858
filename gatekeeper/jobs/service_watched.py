"""The jobs a box watches but does not run, with a shared store (issue #21).

A box keeps a view of the live jobs it took (its held clients and handles are
here) and of the jobs another box took that it watches (a twin attached to across
boxes). Every ``POLL_SECONDS`` (``service_shared``), and at once when a request asks
for one, that view is read back from the database: a job claimed elsewhere leaves
this box's room and shows its ``run_box``; one queued again after running elsewhere
(its body's fetch failed there, or it was swept and ``retry_interrupted`` queued it
again) joins the room again; one ended elsewhere ends here too, as stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gatekeeper.core.vocab import FINAL_STATES, JobState
from gatekeeper.jobs.batch.book import OpenItems
from gatekeeper.jobs.deps import JobDeps
from gatekeeper.jobs.guard import StorageError
from gatekeeper.jobs.model import Job
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.shared import SharedQueue, Where
from gatekeeper.jobs.states import ALL_ENDINGS, Ending
from gatekeeper.jobs.waitroom import Waiter, WaitingRoom

log = logging.getLogger("gatekeeper.jobs")


class WatchedOps:
    """Mixed into ``JobService`` through ``SharedOps`` (which provide these)."""

    deps: JobDeps
    shared: SharedQueue | None
    room: WaitingRoom
    live: dict[str, Job]
    unsaved: dict[str, Job]
    batch_open: OpenItems
    _by_key: dict[str, Job]
    _foreign: set[str]
    _changed_all: Callable[[], None]
    _where: Callable[..., list[Where]]
    drop_kept_body: Callable[[Job], None]

    def sync_watched(self, only: str | None = None) -> None:
        """Read back the live jobs this box watches but does not run (module text);
        ``only``: that one job now (a request asks for a job another box runs: its
        answer must not lag the tick's second behind the database)."""
        if self.shared is None:
            return
        self._foreign &= self.live.keys()  # those that ended here (claimed, then run here)
        waiting: list[str] = []  # this box's view: queued (few of them will have moved)
        elsewhere: list[str] = []  # this box's view: running on another box
        for i, j in self.live.items():
            if j.task is None and i not in self.unsaved and only in (None, i):
                (elsewhere if j.record.state is JobState.RUNNING else waiting).append(i)
        try:
            found = self._where(waiting, queued=False) if waiting else []
            found += self._where(elsewhere) if elsewhere else []
        except StorageError as exc:
            log.debug("reading back watched jobs: %s", exc.detail)
            return
        for w in found:
            job = self.live.get(w.record.id)
            if job is None or job.task is not None:
                continue
            if w.record.state is not JobState.QUEUED:
                self._moved(job, w)
            elif job.record.state is JobState.RUNNING:
                self._returned(job, w)

    def _returned(self, job: Job, w: Where) -> None:
        """``job`` ran on another box and is queued again (given back after its body's
        fetch failed there, or swept and queued again under ``retry_interrupted``): this
        box's view waits again, in the room, as it did before it was claimed."""
        job.record, job.run_box, job.started = w.record, None, None
        job.progress, job.result_bytes = None, 0
        if job.id not in self._foreign:  # taken here: its waiter is this box's
            max_wait = self.deps.config.admission.queue.max_wait
            deadline = self.batch_open.entered(job.record, job.arrived, max_wait)
            self.room.join(Waiter(job.id, job.record.client, job.route, job.arrived, deadline))
        job.notify()
        self._changed_all()

    def _moved(self, job: Job, w: Where) -> None:
        """``job`` runs or ended on another box: this box's view follows the database."""
        self.room.leave(job.id)
        job.run_box = w.run_box
        self._follow(job, w.record)
        if w.record.state in FINAL_STATES:
            self._ended_elsewhere(job)
            self.drop_kept_body(job)  # this box took it: its body is no longer needed
        job.notify()
        self._changed_all()

    def _follow(self, job: Job, row: JobRecord) -> None:
        """``job`` as stored now (it runs or ran on another box): its record, and a start
        on this box's loop clock for its ETA and elapsed time."""
        job.record, job.result_bytes, job.progress = row, row.result_bytes, row.progress
        if row.started is not None and job.started is None:
            job.started = self.deps.clock() - max(0.0, self.deps.wall() - row.started)

    def _ended_elsewhere(self, job: Job) -> None:
        """The job ended on another box (or was swept): it leaves this box's live set as
        stored there, with no write from here."""
        rec = job.record
        if job.ending is None:  # as stored there (a held client's answer reads it)
            job.ending = next(
                (e for e in ALL_ENDINGS if (e.state, e.reason) == (rec.state, rec.reason)),
                Ending(rec.state, rec.reason, None),
            )
        self.live.pop(job.id, None)
        self._foreign.discard(job.id)
        key = job.record.coalesce_key
        if key is not None and self._by_key.get(key) is job:
            del self._by_key[key]
        job.finished = self.deps.clock()
