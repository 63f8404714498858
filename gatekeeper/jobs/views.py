"""What a job and the queue look like from outside: the job JSON and the status ``queue``.

``job_view`` is the body of ``GET <jobs_path>/<id>``, of each SSE event and of
the 202; ``queue_status`` is the ``queue`` object of the status document, in
which no job id ever appears (an id is the capability to read a result; the
client key is shown as a keyed hash).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gatekeeper.core.vocab import FINAL_STATES, JobState
from gatekeeper.jobs.ids import client_hash
from gatekeeper.jobs.model import Job
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.schedule import retry_after_full
from gatekeeper.jobs.service import JobService
from gatekeeper.jobs.waitroom import Waiter, start_delays


def job_view(jobs: JobService, j: Job, now: float, base: str) -> dict[str, Any]:
    """The public JSON of one job (GET <jobs_path>/<id>, its events, the 202): a live
    job as the waiting room sees it now, an ended one as its record says."""
    links = {
        "self": f"{base}/{j.id}",
        "events": f"{base}/{j.id}/events",
        "result": f"{base}/{j.id}/result",
    }
    if not j.final:
        starts_in, done_in = jobs.schedule.eta(j, now)
        waited = (j.started if j.started is not None else now) - j.arrived
        return {
            "id": j.id,
            "state": j.state,
            "route": j.route,
            "position": jobs.schedule.position(j, now) if j.state == JobState.QUEUED else 0,
            "eta_seconds": round(done_in, 1),
            "starts_in_seconds": round(starts_in, 1),
            "waited_seconds": round(waited, 1),
            "elapsed_seconds": round(now - j.started, 1) if j.started is not None else None,
            # A job another box runs has no ticket here: the engine its record names.
            "engine": j.ticket.engine if j.ticket is not None else j.record.engine,
            "progress": j.progress,
            "coalesced": j.record.coalesced,
            "cancel_requested": j.cancel_requested,
            "reason": None,
            "result": None,
            **timestamps(j.record),
            "links": links,
        }
    row = j.record
    started, finished = row.started, row.finished
    return {
        "id": row.id,
        "state": row.state,
        "route": row.route,
        "position": None,
        "eta_seconds": 0 if row.state not in FINAL_STATES else None,
        "starts_in_seconds": None,
        "waited_seconds": round((started or finished or row.created) - row.created, 1),
        "elapsed_seconds": round(finished - started, 1)
        if started is not None and finished is not None
        else None,
        "progress": row.progress,
        "coalesced": row.coalesced,
        "cancel_requested": False,
        "reason": row.reason,
        "result": {"status": row.result_status, "bytes": row.result_bytes}
        if row.result_status is not None
        else None,
        **timestamps(j.record),
        "links": links,
    }


def timestamps(row: JobRecord) -> dict[str, str | None]:
    """When the job arrived, started and ended (RFC 3339, UTC; issue #20 §2: a user's list
    shows when each song was asked for). The stored wall clock, so they survive a restart."""
    return {
        "created_at": rfc3339(row.created),
        "started_at": None if row.started is None else rfc3339(row.started),
        "finished_at": None if row.finished is None else rfc3339(row.finished),
    }


def rfc3339(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def queue_status(jobs: JobService, now: float, limit: int | None = None) -> dict[str, Any]:
    """The ``queue`` object of the status document: no job id ever appears here.

    ``entries``: every running job, then the first ``limit`` waiters (None: all) in
    the order they will start. Listing them is O(limit + log n), the rest O(1):
    at 10,000 waiting, every entry is ~80 ms of one event-loop callback (issue #18
    §6), so the document lists a few and gives the totals (``waiting``, ``listed``).
    """
    cfg = jobs.config
    q = cfg.admission.queue
    entries: list[dict[str, Any]] = []
    running = sorted(jobs.running_jobs(), key=lambda j: j.started or 0.0)
    remaining, slots, expected = jobs.schedule.running_remaining(now)
    for j in running:
        assert j.started is not None
        entries.append(_entry(j, 0, max(0.0, expected - (now - j.started)), now))
    # One pass over the order and one schedule for all: linear in what is listed
    # (computing each entry's position and ETA on its own was quadratic).
    here = len(jobs.room)
    order = jobs.room.order() if limit is None or limit >= here else jobs.room.first(limit)
    if jobs.schedule.picture is not None:  # a shared queue: places in the whole queue
        entries += sorted(_placed(jobs, order, now), key=lambda e: int(e["position"]))
    else:
        starts = start_delays(remaining, slots, len(order), expected) if order else []
        for pos, (w, start) in enumerate(zip(order, starts, strict=True), start=1):
            job = jobs.live.get(w.job_id)
            if job is not None:
                entries.append(_entry(job, pos, start + expected, now))
            elif w.job_id in jobs.guests:  # a Gradio event waiting (jobs/guests.py)
                entries.append(_guest_entry(w, pos, start + expected, now))
    waiting = jobs.schedule.waiting()
    full = waiting >= q.max_waiting
    shared = {} if jobs.schedule.picture is None else {"waiting_here": here}
    return {
        "waiting": waiting,
        **shared,
        "running": len(running),
        # Waiting jobs listed in ``entries`` (the first ones; ``limit``: at most that many).
        "listed": len(order),
        "limit": limit,
        "max_waiting": q.max_waiting,
        "max_wait_seconds": q.max_wait,
        "per_client": q.per_client,
        "retry_after": retry_after_full(remaining, slots, expected) if full else None,
        "entries": entries,
    }


def _placed(jobs: JobService, order: list[Waiter], now: float) -> list[dict[str, Any]]:
    """This box's waiters with their places in the whole shared queue (issue #21): a
    job's from the last read of it (``schedule.Schedule.position``), a Gradio guest's
    in this box's room (it starts here, before any claim)."""
    out: list[dict[str, Any]] = []
    for w in order:
        job = jobs.live.get(w.job_id)
        if job is not None:
            _, done_in = jobs.schedule.eta(job, now)
            pos = jobs.schedule.position(job, now)
            out.append(_entry(job, pos or 0, done_in, now))
        elif (place := jobs.place(w.job_id)) is not None:
            out.append(_guest_entry(w, place.position, place.done_in, now))
    return out


def _entry(j: Job, position: int, done_in: float, now: float) -> dict[str, Any]:
    waited = (j.started if j.started is not None else now) - j.arrived
    return {
        "position": position,
        "state": j.state,
        "route": j.route,
        "client": client_hash(j.record.client),
        "held": j.record.held and j.async_owners == 0,
        "waited_seconds": round(waited, 1),
        "elapsed_seconds": round(now - j.started, 1) if j.started is not None else None,
        "eta_seconds": round(done_in, 1),
        "coalesced": j.record.coalesced,
        "engine": j.ticket.engine if j.ticket is not None else None,
    }


def _guest_entry(w: Waiter, position: int, done_in: float, now: float) -> dict[str, Any]:
    """A waiting Gradio event: held by its open stream, never coalesced, no engine yet."""
    return {
        "position": position,
        "state": JobState.QUEUED,
        "route": w.route,
        "client": client_hash(w.client),
        "held": True,
        "waited_seconds": round(now - w.arrived, 1),
        "elapsed_seconds": None,
        "eta_seconds": round(done_in, 1),
        "coalesced": 0,
        "engine": None,
    }


def jobs_status(jobs: JobService) -> dict[str, Any]:
    return {
        "results_bytes": jobs.store.results_bytes(),
        "max_bytes": jobs.config.jobs.max_bytes,
        "state_dir": str(jobs.state_dir),
    }
