"""A job's events become outbox rows: which destinations hear which event, with what body.

``Emitter`` is the ``outbox.JobEvents`` the service and the runner call. For each
event it picks the destinations that want it (``jobs.webhooks.destinations``
whose ``events`` and ``routes`` match, and the request's own webhook stored on
the job's record) and renders the body once, when the event happens (the job's
JSON as ``GET {jobs_path}/<id>`` shows it then: ``payload.body``). The rows for
job.queued, job.started and job.completed are returned to the service, which
hands them to the store call that changes the job's state, so both are written
in one transaction; job.progress (no state change) is written here, at most one
per job every ``progress_interval``.

An emitter never raises into the service: a bug here is logged and the job goes
on without its events.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from gatekeeper.config import Config
from gatekeeper.config.webhooks import Webhooks
from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.guard import StorageError
from gatekeeper.jobs.model import Job
from gatekeeper.jobs.outbox import REQUEST_DESTINATION, Delivery
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.service import JobService
from gatekeeper.jobs.states import Ending
from gatekeeper.jobs.views import job_view
from gatekeeper.jobs.webhooks import allow
from gatekeeper.jobs.webhooks.payload import body
from gatekeeper.jobs.webhooks.policy import progress_due

log = logging.getLogger("gatekeeper.webhooks")

__all__ = ["Emitter", "origin_of", "request_webhook"]


def request_webhook(record: JobRecord) -> tuple[str, tuple[str, ...]] | None:
    """The request's own webhook stored on ``record``: (url, events)."""
    if record.webhook is None:
        return None
    doc = json.loads(record.webhook)
    return str(doc["url"]), tuple(str(e) for e in doc["events"])


def origin_of(url: str) -> str:
    """The request destination of ``url``: one concurrency lane per origin."""
    p = allow.parse(url)
    assert not isinstance(p, str), url  # checked against the allowlist at arrival
    return f"{REQUEST_DESTINATION}{p.scheme}://{p.host}:{p.port}"


def targets(cfg: Webhooks, record: JobRecord, route: str, event: str) -> list[tuple[str, str]]:
    """(destination, url) of every destination that wants ``event`` of this job. PURE."""
    out = [
        (d.name, d.url)
        for d in cfg.destinations
        if event in d.events and (d.routes is None or route in d.routes)
    ]
    own = request_webhook(record)
    if own is not None and event in own[1]:
        out.append((origin_of(own[0]), own[0]))
    return out


class Emitter:
    """The service's ``events`` (module text)."""

    def __init__(
        self,
        jobs: JobService,
        clock: Callable[[], float],
        wall: Callable[[], float],
        wake: Callable[[], None],
    ):
        self._jobs = jobs
        self._clock = clock
        self._wall = wall
        self._wake = wake
        self._last_progress: dict[str, float] = {}  # job id -> loop clock of the last sent

    @property
    def _config(self) -> Config:
        return self._jobs.config

    def _rows(
        self, record: JobRecord, route: str, event: str, wall: float, view: dict[str, Any]
    ) -> list[Delivery]:
        found = targets(self._config.jobs.webhooks, record, route, event)
        if not found:
            return []
        payload = body(event, wall, view)
        self._wake()
        return [
            Delivery(f"msg_{uuid.uuid4().hex}", record.id, dest, url, event, payload, wall, wall)
            for dest, url in found
        ]

    def _view(self, job: Job) -> dict[str, Any]:
        return job_view(self._jobs, job, self._clock(), self._config.jobs_path or "")

    def _safe(self, what: str, make: Callable[[], list[Delivery]]) -> Sequence[Delivery]:
        try:
            return make()
        except Exception:  # a bug here must not fail the job's state change
            log.exception("webhooks: the %s event could not be built", what)
            return ()

    def queued(self, record: JobRecord) -> Sequence[Delivery]:
        def make() -> list[Delivery]:
            now = self._clock()
            view = self._view(Job.from_record(record, now=now, wall=record.created))
            # Not in the waiting room yet: where a newcomer joins, and its ETA.
            view["position"] = self._jobs.schedule.waiting() + 1
            view["eta_seconds"] = round(self._jobs.schedule.done_in_new(now), 1)
            return self._rows(record, record.route, "job.queued", record.created, view)

        return self._safe("job.queued", make)

    def started(self, job: Job, wall: float, engine: str | None) -> Sequence[Delivery]:
        def make() -> list[Delivery]:
            record = replace(job.record, state=JobState.RUNNING, started=wall, engine=engine)
            view = self._view(replace(job, record=record, started=self._clock()))
            view.update(position=0, engine=engine)
            return self._rows(record, job.route, "job.started", wall, view)

        return self._safe("job.started", make)

    def completed(self, job: Job, ending: Ending, wall: float) -> Sequence[Delivery]:
        def make() -> list[Delivery]:
            self._last_progress.pop(job.id, None)
            # As stored (the result head and the final progress are written by the runner
            # without touching the live record), with the ending about to be written.
            try:
                stored = self._jobs.store.get(job.id) or job.record
            except StorageError:  # the ending itself is about to fail: announce what we know
                stored = job.record
            record = replace(stored, state=ending.state, reason=ending.reason, finished=wall)
            if record.started is None and job.started is not None:
                record = replace(record, started=wall - (self._clock() - job.started))
            view = self._view(replace(job, record=record, ending=ending))
            return self._rows(record, job.route, "job.completed", wall, view)

        return self._safe("job.completed", make)

    def progressed(self, job: Job) -> None:
        now = self._clock()
        interval = self._config.jobs.webhooks.progress_interval
        if not progress_due(self._last_progress.get(job.id), now, interval):
            return
        rows = self._safe("job.progress", lambda: self._progress_rows(job))
        if not rows:
            return
        self._last_progress[job.id] = now
        try:
            self._jobs.store.outbox_add(list(rows))
        except StorageError as exc:
            log.error("webhooks: job %s… progress not stored: %s", job.id[:6], exc.detail)

    def _progress_rows(self, job: Job) -> list[Delivery]:
        return self._rows(job.record, job.route, "job.progress", self._wall(), self._view(job))

    def recovered(self, record: JobRecord) -> None:
        """A job the last process left, ended at start (``upkeep.recover``): its
        job.completed, written right after the ending (the store's recover wrote it)."""
        job = Job.from_record(record, now=self._clock(), wall=self._wall())
        rows = self._safe(
            "job.completed",
            lambda: self._rows(
                record,
                record.route,
                "job.completed",
                record.finished or self._wall(),
                self._view(job),
            ),
        )
        if rows:
            try:
                self._jobs.store.outbox_add(list(rows))
            except StorageError as exc:
                log.error("webhooks: job %s… ending not announced: %s", job.id[:6], exc.detail)
