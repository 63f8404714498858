"""A job as one submitter sees it through its handle (issue #18 §3).

``handle_view`` is ``views.job_view`` under the handle's own id and links, so
no answer ever carries another submitter's id. A handle that was deleted while
others still hold the job reads as ``cancelled`` / ``deleted`` (its holder let
go; the generation goes on for the others); when its ``DELETE`` deleted the job
itself, the job's own view says so (cancel requested, then cancelled).
``created_at`` is when this handle was given (a coalesced submitter's own submit).
"""

from __future__ import annotations

from typing import Any

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.handles import Handle
from gatekeeper.jobs.model import Job
from gatekeeper.jobs.service import JobService
from gatekeeper.jobs.states import Endings
from gatekeeper.jobs.views import job_view, rfc3339

DELETED = Endings.DELETED_WAITING.reason


def let_go_alone(job: Job, handle: Handle) -> bool:
    """The handle was deleted but the job was not (others hold it)."""
    return not handle.attached and not job.cancel_requested and job.reason != DELETED


def as_handle(view: dict[str, Any], handle_id: str, base: str) -> dict[str, Any]:
    """``view`` (a ``job_view``) under the id ``handle_id`` and its links."""
    view["id"] = handle_id
    view["links"] = {
        "self": f"{base}/{handle_id}",
        "events": f"{base}/{handle_id}/events",
        "result": f"{base}/{handle_id}/result",
    }
    return view


def handle_view(
    jobs: JobService, job: Job, handle: Handle, now: float, base: str
) -> dict[str, Any]:
    """The job JSON one submitter reads through its handle (module text)."""
    view = as_handle(job_view(jobs, job, now, base), handle.id, base)
    view["created_at"] = rfc3339(handle.created)  # this submitter's own submit (its list order)
    if let_go_alone(job, handle):
        view.update(
            state=JobState.CANCELLED,
            reason=DELETED,
            position=None,
            eta_seconds=None,
            starts_in_seconds=None,
            result=None,
            cancel_requested=False,
        )
    return view


def given_view(jobs: JobService, job: Job, handle_id: str, now: float, base: str) -> dict[str, Any]:
    """The job JSON of a submit's answer (the 202): ``handle_view`` of the handle the submit
    just stored, so the 202 and every later ``GET`` of that id agree."""
    handle = jobs.store.get_handle(handle_id)
    if handle is None:  # the creator of a job stored before handles existed
        return as_handle(job_view(jobs, job, now, base), handle_id, base)
    return handle_view(jobs, job, handle, now, base)
