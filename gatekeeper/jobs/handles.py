"""A submitter's handle on a job (issue #18 §3). PURE: no I/O.

A job is one generation; every request that got it (its creator, and each
request coalesced onto it) holds its own **handle**: its own unguessable id,
the only id that request is ever shown (202 body, ``Location``,
``X-Gatekeeper-Job``, the job JSON, its events). The creator's handle id is the
job's own id; a coalesced submitter gets a fresh one, so no answer ever carries
another submitter's id, and a ``DELETE`` names one handle: it detaches that
handle only, and the generation is cancelled when its last one is gone
(``JobService.delete_handle``).

Handles are stored (``JobStore.add_handle`` / ``get_handle`` / ``detach_handle``
/ ``handles_of``) so they survive a restart. A job stored before handles existed
has no rows: its own id is then its creator's handle (``creator_of``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Handle", "creator_of"]


@dataclass(frozen=True)
class Handle:
    id: str  # what this submitter was given; the job's own id for its creator
    job_id: str  # the generation it points at
    client: str  # the submitter's client key
    held: bool  # a held request (it follows the answer) or an async one (it owns the job)
    created: float  # wall clock
    detached: float | None = None  # wall clock of its DELETE; None while it holds the job

    @property
    def attached(self) -> bool:
        return self.detached is None


def creator_of(job_id: str, client: str, held: bool, created: float) -> Handle:
    """The creator's handle of a job: its id is the job's id."""
    return Handle(job_id, job_id, client, held, created)
