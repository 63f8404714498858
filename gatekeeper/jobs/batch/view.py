"""What a batch looks like from outside: its view and its results index.

``batch_view`` is the body of the 202 and of ``GET {jobs_path}/batches/<id>``:
how many of its N items are done, and each item's job with its state, place
and link (the job's own JSON is at that link). ``results_index`` is ``GET
.../results``: one result link per item that has a whole stored answer.

A batch's state is read from its items, never stored: ``open`` while any is
queued or running, ``complete`` once every one has ended (done, failed,
cancelled, expired: ``counts`` says which).
"""

from __future__ import annotations

from typing import Any

from gatekeeper.core.vocab import FINAL_STATES, JobState
from gatekeeper.jobs.batch.record import BatchRecord
from gatekeeper.jobs.model import Job
from gatekeeper.jobs.service import JobService
from gatekeeper.jobs.states import kept_whole
from gatekeeper.jobs.views import job_view


def batch_links(base: str, batch_id: str) -> dict[str, str]:
    me = f"{base}/batches/{batch_id}"
    return {"self": me, "results": f"{me}/results", "archive": f"{me}/results?format=tar"}


def has_result(job: Job) -> bool:
    """The item's answer is stored whole (``states.kept_whole``): it may be downloaded."""
    r = job.record
    return (
        job.state in FINAL_STATES
        and r.result_status is not None
        and kept_whole(job.state, job.reason)
    )


def batch_view(
    jobs: JobService, batch: BatchRecord, items: list[Job], now: float, base: str
) -> dict[str, Any]:
    """The batch JSON (module text)."""
    counts = {s.value: 0 for s in JobState}
    entries = []
    for i, job in enumerate(items):
        view = job_view(jobs, job, now, base)
        counts[view["state"]] += 1
        entries.append(
            {
                "index": i,
                "id": job.id,
                "state": view["state"],
                "reason": view["reason"],
                "position": view["position"],
                "eta_seconds": view["eta_seconds"],
                "progress": view["progress"],
                "links": view["links"],
            }
        )
    ended = sum(counts[s.value] for s in FINAL_STATES)
    return {
        "id": batch.id,
        "route": batch.route,
        "state": "complete" if ended == len(items) else "open",
        "total": batch.total,
        "done": counts[JobState.DONE.value],
        "ended": ended,
        "counts": {k: v for k, v in counts.items() if v},
        "created": batch.created,
        "jobs": entries,
        "links": batch_links(base, batch.id),
    }


def results_index(batch: BatchRecord, items: list[Job], base: str) -> dict[str, Any]:
    """The batch's results as one JSON index of result links (module text)."""
    results = []
    for i, job in enumerate(items):
        r = job.record
        ok = has_result(job)
        results.append(
            {
                "index": i,
                "id": job.id,
                "state": job.state.value,
                "status": r.result_status if ok else None,
                "bytes": r.result_bytes if ok else None,
                "result": f"{base}/{job.id}/result" if ok else None,
            }
        )
    return {
        "id": batch.id,
        "total": batch.total,
        "ready": sum(1 for x in results if x["result"] is not None),
        "results": results,
        "links": batch_links(base, batch.id),
    }
