"""The waiting room's background tick, and what it does besides dispatching.

Every ``TICK_SECONDS`` (sooner when a waiter's deadline is nearer), one step
at a time, each on its own so that one failing never skips the others nor
ends the loop (issue #18 §1: an exception in ``dispatch`` used to end the tick
and wedge the queue for good):

- check that the job database is still at its path, and put it back if it was
  deleted or replaced (``dbwatch``: one ``stat``);
- sample the state directory's free space (``floor.DiskFloor``: the
  ``storage_full`` refusal and the ``gatekeeper_state_free_bytes`` gauge);
- write the endings the store could not take when they happened (``save_unsaved``);
- expire waiters past ``admission.queue.max_wait``;
- dispatch (resources may have recovered, ``max_in_flight`` may have grown, the
  store may work again);
- every ``EVICT_EVERY_SECONDS``, evict kept results past ``jobs.keep`` / ``jobs.max_bytes``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gatekeeper.core.vocab import FINAL_STATES, JobState, QueueReason
from gatekeeper.jobs.guard import GuardedStore, StorageError
from gatekeeper.jobs.states import Endings

if TYPE_CHECKING:
    from gatekeeper.jobs.service import JobService

log = logging.getLogger("gatekeeper.jobs")

# How often the background tick re-checks what no event announces: resources that
# recovered (the monitor publishes a new state), waiters past max_wait, free space.
TICK_SECONDS = 0.25
# How often kept results are checked against jobs.keep and jobs.max_bytes.
EVICT_EVERY_SECONDS = 30.0


async def tick(jobs: JobService) -> None:
    while True:
        now = jobs.deps.clock()
        for step in steps(jobs, now):
            try:
                step()
            except StorageError as exc:  # a disk error must not stop the queue
                log.error("jobs tick: %s", exc.detail)
            except Exception:  # nor a bug in one step: logged, the next tick runs
                log.exception("jobs tick: a step failed")
        deadline = jobs.room.next_deadline()
        delay = TICK_SECONDS if deadline is None else min(TICK_SECONDS, deadline - now)
        await asyncio.sleep(max(0.0, delay))


def steps(jobs: JobService, now: float) -> list[Callable[[], object]]:
    """What one tick does, in order (module text)."""
    todo: list[Callable[[], object]] = []
    if jobs.db.due(now):
        todo.append(lambda: jobs.db.check(jobs.store.check_file, now))
    if jobs.floor.due(now):
        todo.append(lambda: jobs.floor.sample(now, jobs.config.jobs.min_free_bytes))
    if jobs.unsaved:
        todo.append(lambda: save_unsaved(jobs))
    todo.append(lambda: expire_waiters(jobs, now))
    # A shared store: beats, the lease sweep, the watched jobs and the polled claim
    # (service_shared); one box's own queue: dispatch.
    todo.append(jobs.dispatch if jobs.shared is None else lambda: jobs.shared_tick(now))
    if now >= jobs.next_evict:
        jobs.next_evict = now + EVICT_EVERY_SECONDS
        todo.append(jobs.evict)
    return todo


def save_unsaved(jobs: JobService) -> None:
    """Write the endings the store could not take when they happened (``JobService.finish``)."""
    for job_id, job in list(jobs.unsaved.items()):
        row = job.record
        try:
            ending = job.ending or Endings.STORAGE_ERROR
            if job.unsynced:  # the runner's writes that met an unreachable store
                if job.head is not None:
                    jobs.store.set_result_head(job_id, job.head[0], job.head[1], tuple(job.head[2]))
                jobs.store.set_progress(job_id, job.progress, job.result_bytes)
                job.unsynced = False
            events = jobs.events.completed(job, ending, row.finished or 0.0)
            jobs.store.finish(job_id, row.state, row.reason, row.finished or 0.0, events)
        except StorageError:
            return  # still failing: the next tick tries again
        except (KeyError, ValueError):
            pass  # gone, or already final there: nothing left to write
        del jobs.unsaved[job_id]
        log.warning("job %s… stored as %s (%s)", job_id[:6], row.state, row.reason)


def expire_waiters(jobs: JobService, now: float) -> None:
    for w in jobs.room.expire(now):
        if jobs._guest_left(w, QueueReason.QUEUE_TIMEOUT, now):  # jobs/guests.py
            continue
        job = jobs.live.get(w.job_id)
        if job is None:
            continue
        jobs.deps.counters.rejection(job.route, QueueReason.QUEUE_TIMEOUT)
        log.info(
            "job %s… waited %.0fs (admission.queue.max_wait) without a slot: queue_timeout",
            job.id[:6],
            now - job.arrived,
        )
        jobs.finish(job, Endings.QUEUE_TIMEOUT)


def evict(jobs: JobService) -> list[str]:
    cfg = jobs.config.jobs
    expired = jobs.store.evict(jobs.deps.wall(), cfg.keep, cfg.max_bytes)
    for job_id in expired:
        row = jobs.store.get(job_id)
        if row is not None:
            jobs.deps.metrics.jobs.labels(row.route, JobState.EXPIRED).inc()
    if expired:
        log.info("expired %d kept result(s) (jobs.keep / jobs.max_bytes)", len(expired))
    return expired


def recover(jobs: JobService, wall: float) -> None:
    """At start: make the records of the last process true again, and say what changed."""
    for row in jobs.store.recover(wall, jobs.config.jobs.retry_interrupted):
        if row.state in FINAL_STATES:
            jobs.events.recovered(row)  # its job.completed (after the row: module text)
            jobs.deps.metrics.jobs.labels(row.route, row.state).inc()
            log.warning(
                "job %s… (%s) was %s at the last stop: now %s (%s)",
                row.id[:6],
                row.route,
                "running" if row.reason == Endings.INTERRUPTED.reason else "queued",
                row.state,
                row.reason,
            )


def release(store: GuardedStore, temporary: Path | None) -> None:
    """The service's end (``close``, or its collection): the store closed (the guard's
    close never raises), a temporary state directory removed."""
    store.close()
    if temporary is not None:
        shutil.rmtree(temporary, ignore_errors=True)
