"""The job database deleted or replaced under a running gatekeeper (issue #18 §1).

The store notices and puts the database back at its path (``sqlite_file``:
the open database copied whole, a replacement kept aside). ``DbWatch`` is the
service's side: when it asks, what it says, what it refuses meanwhile.

- Each jobs tick (``upkeep``, 0.25 s: one ``stat``, off the request path) asks
  the store ``check_file``. A database put back: one WARNING saying what was
  done, ``gatekeeper_state_db_rehomed_total`` + 1, and nothing else changes:
  no job, handle or kept result is lost, nothing is refused.
- A database that could not be put back (its directory deleted or read-only,
  the disk full): ``detached`` holds why; one ERROR, then one every
  ``LOG_EVERY_SECONDS`` while it lasts; ``gatekeeper_state_db_detached`` is 1
  (the alert ``GatekeeperStateDbDetached`` fires); new submissions get ``503
  storage_error`` (JSON ``detail``, ``Retry-After:
  admission.retry_after_default``); no waiting job is started (its claim would
  be written only where the next start cannot read it). Running jobs go on:
  their records are in the open database, which the next successful try puts
  back. It is tried again every ``RETRY_SECONDS``, and everything resumes by
  itself once it succeeds.
- Stopping while detached: one last try; if it fails too, an ERROR says how
  many queued and running jobs are lost with the process (their records exist
  only in the deleted file).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gatekeeper.config import Config
from gatekeeper.core.vocab import QueueReason
from gatekeeper.jobs.guard import StorageError
from gatekeeper.jobs.model import Refused

log = logging.getLogger("gatekeeper.jobs")

RETRY_SECONDS = 5.0  # between two tries to put a database back that could not be
LOG_EVERY_SECONDS = 60.0  # between two ERROR lines while it stays detached


class DbWatch:
    """Whether the job database is at its path (module text); ``check`` each tick."""

    def __init__(self, on_rehomed: Callable[[], None] = lambda: None):
        self.detached: str | None = None  # why the database is not at its path
        self._on_rehomed = on_rehomed
        self._next_try = 0.0
        self._next_log = 0.0

    def due(self, now: float) -> bool:
        return self.detached is None or now >= self._next_try

    def check(self, check_file: Callable[[], str | None], now: float) -> None:
        """Ask the store (``GuardedStore.check_file``) and act on its answer."""
        try:
            done = check_file()
        except StorageError as exc:
            first = self.detached is None
            self.detached, self._next_try = exc.detail, now + RETRY_SECONDS
            if first or now >= self._next_log:
                self._next_log = now + LOG_EVERY_SECONDS
                log.error(
                    "the job database was deleted or replaced under gatekeeper and cannot be"
                    " put back (%s): new jobs are refused 503 storage_error and none is"
                    " started; running jobs go on; trying again every %.0fs",
                    exc.detail,
                    RETRY_SECONDS,
                )
            return
        if done is None and self.detached is None:
            return
        if done is not None:
            self._on_rehomed()
        log.warning(
            "the job database was deleted or replaced under gatekeeper: %s; nothing was lost%s",
            done or "back at its path",
            ", new jobs are accepted again" if self.detached is not None else "",
        )
        self.detached = None

    def refusal(self, cfg: Config, waiting: int) -> Refused | None:
        """``503 storage_error`` while the database is not at its path; None otherwise."""
        if self.detached is None:
            return None
        fields = Refused.fields_of(cfg, waiting)
        return Refused(QueueReason.STORAGE_ERROR, 503, cfg.admission.retry_after_default, fields)

    def lost_at_stop(self, check_file: Callable[[], str | None], queued: int, running: int) -> None:
        """At stop: a last try; what a failed one loses, said once."""
        if self.detached is None:
            return
        self.check(check_file, float("inf"))
        if self.detached is not None and (queued or running):
            log.error(
                "stopping with the job database still detached (%s): the records of %d"
                " queued and %d running job(s) exist only in the deleted file and are lost",
                self.detached,
                queued,
                running,
            )
