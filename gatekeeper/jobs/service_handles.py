"""The waiting room's handles: each submitter's own id on a shared job (issue #18 §3).

``JobService`` inherits these, with ``detach`` (a held client gone) and
``delete`` (the job's own ``DELETE``): who holds a job, and what letting go
does. ``submit`` gives the creator the job's own id and
every coalesced (or kept-result) submitter a fresh handle (``handles``);
``find_handle`` resolves an id the jobs API was given; ``delete_handle`` is a
``DELETE``: it detaches that handle only, and when no handle holds the job any
more (no async handle left, no held connection attached) the generation is
deleted as a ``DELETE`` always did (``JobService.delete``: queued -> removed;
running -> per ``admission.on_client_disconnect``). ``restore`` gives a job
restored at start the async handles its store kept (none: it ends ``restart``).
"""

from __future__ import annotations

from collections.abc import Callable

from gatekeeper.config import Config
from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.deps import JobDeps
from gatekeeper.jobs.guard import GuardedStore
from gatekeeper.jobs.handles import Handle, creator_of
from gatekeeper.jobs.ids import id_prefix, new_job_id
from gatekeeper.jobs.model import Job
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.states import Ending, Endings
from gatekeeper.jobs.waitroom import WaitingRoom


class HandleOps:
    """Mixed into ``JobService`` (which provides the attributes and methods declared here)."""

    deps: JobDeps
    store: GuardedStore
    live: dict[str, Job]
    unsaved: dict[str, Job]
    # JobService's own methods, which these operations call.
    _changed_all: Callable[[], None]
    _enter: Callable[[Job, Config], None]
    finish: Callable[[Job, Ending], None]
    dispatch: Callable[[], None]
    owns: Callable[[Job], bool]
    sync_watched: Callable[..., None]
    room: WaitingRoom

    def find(self, job_id: str) -> Job | None:
        """The job: live here, else read back from the store; None if there is no such job."""
        live = self.live.get(job_id) or self.unsaved.get(job_id)
        if live is not None and live.task is None and not live.final:
            # Queued here, or running without a runner: another box may have claimed it,
            # run it, ended it. Answer as the database says now, not as of the last tick
            # (the two-box chaos run saw "queued" for a job the database had done).
            self.sync_watched(only=job_id)
            live = self.live.get(job_id) or self.unsaved.get(job_id)
        if live is not None:
            return live
        row = self.store.get(job_id)
        if row is None:
            return None
        return Job.from_record(row, now=self.deps.clock(), wall=self.deps.wall())

    def _creator_handle(self, job: Job) -> str:
        """The creator of a new job holds it under the job's own id."""
        r = job.record
        self.store.add_handle(creator_of(r.id, r.client, r.held, r.created))
        job.holders.add(r.id)
        return r.id

    def _new_handle(self, job: Job, request: JobRecord, *, holds: bool = True) -> str:
        """A fresh handle on ``job`` for ``request`` (coalesced onto it, or given its kept
        result: ``holds`` False, a done job has nothing to hold)."""
        handle = Handle(
            new_job_id(id_prefix(self.deps.config.box_id, self.deps.config.jobs.store)),
            job.id,
            request.client,
            request.held,
            self.deps.wall(),
        )
        self.store.add_handle(handle)
        if holds:
            job.holders.add(handle.id)
        return handle.id

    def find_handle(self, handle_id: str) -> tuple[Job, Handle] | None:
        """The job a handle points at, with the handle; None if there is no such handle
        (or its job's record is gone). A job's own id is always its creator's handle
        (stored with it, or implied for a job stored before handles existed)."""
        handle = self.store.get_handle(handle_id)
        if handle is None:
            job = self.find(handle_id)
            if job is None:
                return None
            r = job.record
            return job, creator_of(r.id, r.client, r.held, r.created)
        job = self.find(handle.job_id)
        return None if job is None else (job, handle)

    def delete_handle(self, job: Job, handle: Handle) -> Handle:
        """``DELETE`` of one handle: it lets go; the job is deleted when nothing holds it."""
        if handle.attached:
            if self.store.get_handle(handle.id) is None:
                self.store.add_handle(handle)  # an implied creator's handle: stored now
            handle = self.store.detach_handle(handle.id, self.deps.wall())
            if not handle.held and handle.id in job.holders:
                job.async_owners = max(0, job.async_owners - 1)
            job.holders.discard(handle.id)
        if not job.final and not job.holders:
            self.delete(job)
        else:
            job.notify()
            self._changed_all()
        return handle

    def restore(self, job: Job, cfg: Config) -> None:
        """A queued job restored at start: held by its async handles not deleted (held
        ones lost their connection with the last process), its creator's implied one
        included; back in the waiting room, or ended ``restart`` when none holds it."""
        rows = {h.id: h for h in self.store.handles_of(job.id)}
        if job.id not in rows and not job.record.held:
            job.holders.add(job.id)
        job.holders.update(h.id for h in rows.values() if h.attached and not h.held)
        job.async_owners = len(job.holders)
        if job.holders:
            self._enter(job, cfg)
        else:
            self.finish(job, Endings.RESTART)

    def detach(self, job: Job, handle: str | None = None) -> None:
        """A held client of ``job`` (its ``handle``) is gone (disconnected, or stopped reading)."""
        job.followers = max(0, job.followers - 1)
        if handle is not None:
            job.holders.discard(handle)
        if job.wanted or job.final or not self.owns(job):  # owns: service_shared
            return
        if job.state == JobState.QUEUED:
            self.room.leave(job.id)
            self.finish(job, Endings.CLIENT_GONE)
        elif (
            job.state == JobState.RUNNING
            and self.deps.config.admission.on_client_disconnect == "cancel"
            and job.task is not None
        ):
            job.task.cancel(msg="client disconnected")
        # finish mode: the engine keeps computing; its answer is kept as the job's result

    def delete(self, job: Job) -> None:
        """DELETE: queued -> removed; running -> per on_client_disconnect."""
        if not self.owns(job):  # another box's job: its holders are not all here
            return
        if job.state == JobState.QUEUED:
            self.room.leave(job.id)
            self.finish(job, Endings.DELETED_WAITING)
            self.dispatch()
        elif job.state == JobState.RUNNING and not job.cancel_requested:
            job.cancel_requested = True
            if self.deps.config.admission.on_client_disconnect == "cancel" and job.task is not None:
                job.task.cancel(msg="job deleted")
            job.notify()
            self._changed_all()
