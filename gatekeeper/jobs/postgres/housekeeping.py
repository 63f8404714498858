"""The PostgreSQL store's housekeeping of one box: recovery at start and eviction.

Both touch only this box's rows and files (``run_box``/``body_box`` is this box):
``recover`` makes its rows true again after it died (``sql_recover``), ``evict``
expires its kept results by age, then by size (``JobStore.evict``), and deletes the
bodies it kept for jobs that ended elsewhere meanwhile. A mixin of
``store.PostgresJobStore``, as the ``sql_*`` modules' mixins are.
"""

from __future__ import annotations

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.files import SAFE_ID, JobFiles
from gatekeeper.jobs.postgres import sql_records, sql_recover
from gatekeeper.jobs.postgres.bridge import Bridge
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.states import KEPT_STATES, LIVE_STATES, Endings
from gatekeeper.jobs.store import EXPIRED_ROW_KEEP_FACTOR

_KEPT = frozenset(s.value for s in KEPT_STATES)
_LIVE = frozenset(s.value for s in LIVE_STATES)


class PostgresHousekeeping:
    """``recover`` and ``evict`` over the store's bridge and this box's files."""

    bridge: Bridge
    box: str
    lease: float
    _files: JobFiles

    def recover(self, now: float, retry_interrupted: bool) -> list[JobRecord]:
        """This box's rows made true again after it died (``sql_recover``)."""
        changed = self.bridge.call(
            "recover",
            sql_recover.recover,
            self.box,
            float(now),
            retry_interrupted,
            lambda job_id: self._files.body_path(job_id) is not None,
            float(self.lease),
        )
        for r in changed:
            if r.state is not JobState.QUEUED or r.started is None:
                self._files.ledger.drop_job(r.id)
        states = self.bridge.call("recover", sql_recover.file_states, self.box)
        self._files.sweep(  # a body another box may still fetch stays (issue #21)
            keep_body=lambda name: states.get(name) in _LIVE,
            keep_result=lambda name: states.get(name) in _KEPT,
        )
        return changed

    def evict(self, now: float, keep: float, max_bytes: int) -> list[str]:
        """This box's kept results expired by age, then by size (``JobStore.evict``)."""
        ledger = self._files.ledger
        old = self.bridge.call("evict", sql_records.kept_ids, self.box, float(now - keep), True)
        total = ledger.total - sum(ledger.size_of(i) for i in old)
        by_size: list[str] = []
        if total > max_bytes:
            newer = self.bridge.call(
                "evict", sql_records.kept_ids, self.box, float(now - keep), False
            )
            for job_id in newer:
                size = ledger.size_of(job_id)
                if size:
                    by_size.append(job_id)
                    total -= size
                    if total <= max_bytes:
                        break
        by_keep, by_bytes = Endings.EXPIRED_KEEP, Endings.EXPIRED_MAX_BYTES
        changes = [(i, by_keep.state.value, by_keep.reason) for i in old]
        changes += [(i, by_bytes.state.value, by_bytes.reason) for i in by_size]
        drop_before = float(now - EXPIRED_ROW_KEEP_FACTOR * keep)
        self.bridge.call("evict", sql_records.expire, changes, drop_before)
        for job_id in old + by_size:
            ledger.drop_job(job_id)
        self._drop_ended_bodies()
        return old + by_size

    def _drop_ended_bodies(self) -> None:
        """The bodies this box kept for jobs that ended while it did not watch them (it
        restarted while another box ran them: issue #21, ``service_bodies``)."""
        names = [p.name for p in self._files.bodies.iterdir() if SAFE_ID.fullmatch(p.name)]
        if names:
            ended = self.bridge.call("evict", sql_recover.ended_of, names)
            for job_id in ended:
                self._files.drop_body(job_id)
