"""Where a claimed job's request body comes from, and what a failed fetch means (issue #21).
PURE: no I/O, no clock (the caller passes ``now``, its loop clock).

With a shared store a body up to ``jobs.postgres.max_body_bytes`` is in the database
(``body_in_db``) and written into the claiming box's ``bodies/`` at the claim. A
larger one stays in the spool of the box that took the request (``body_box``); the
box that claims the job fetches it from there through the body relay (``bodyrelay``)
into its own ``bodies/``, streamed, and only a body of exactly the recorded
``body_size`` is ever sent to the engine. The rules, as a table:

=====================================================  ==========================
what the claiming box finds                              what it does (``Step``)
=====================================================  ==========================
no body (``body_size`` 0), or its file here              ``RUN``
no file, and this box took the request                   ``LOST``: its own spool lost it
no file, the taking box registered no address            ``GIVE_BACK``
no file, the taking box has an address                   ``FETCH``
=====================================================  ==========================

and what a fetch's outcome means (``judge``):

=====================================================  ==========================
outcome                                                  verdict
=====================================================  ==========================
200 with exactly ``body_size`` bytes, whole              ``RUN``
200 announcing another length                            ``LOST``: that file is not the
                                                         body the client sent
410 from the taking box itself (``body_gone``)           ``LOST``: it is alive and has
                                                         no such body; it never will
anything else: refused, timed out, broken off mid-body,  ``GIVE_BACK``: the body may
a short body, another status (403, 404 ``not_this_box``:   still come back; the job is
the address now serves another box, 5xx), this box's     queued again in its place,
own disk failing while writing it                        never run with part of it
=====================================================  ==========================

A box whose fetch from a taking box failed does not claim that box's large bodies for
a while (``Backoff``: 1 s, doubling per failure in a row, at most ``BACKOFF_MAX``), so a
taking box whose relay is unreachable (a wrong ``jobs.postgres.address``, a firewall)
does not make every idle box claim and give back its jobs in a loop; the taking box
itself still runs them when a slot of its own frees. A taking box silent for over
``jobs.lease`` (dead, or stopped) is not asked at all: the claim skips its large bodies
(``sql_fair.CLAIM``), which wait for it, until it has been silent for longer than
``admission.queue.max_wait``: then the lease sweep ends them ``body_lost``
(``sql_boxes``; docs/postgres.md).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_MAX",
    "Backoff",
    "Fetched",
    "Step",
    "judge",
    "step",
]

BACKOFF_BASE = 1.0  # seconds a box skips a taking box's large bodies after one failure
BACKOFF_MAX = 30.0


class Step(enum.Enum):
    RUN = "run"  # the body file is here (or there is no body): send it to the engine
    FETCH = "fetch"  # fetch it from the taking box first
    GIVE_BACK = "give_back"  # queue the job again in its place; its body may come back
    LOST = "lost"  # the body can never come back: the job ends ``body_lost``


def step(
    *, body_size: int, have_file: bool, body_box: str | None, me: str, address: str | None
) -> Step:
    """What the claiming box does before the engine is asked (module text, first table)."""
    if body_size == 0 or have_file:
        return Step.RUN
    if body_box is None or body_box == me:
        return Step.LOST
    return Step.GIVE_BACK if address is None else Step.FETCH


@dataclass(frozen=True)
class Fetched:
    """What a fetch of a body from its taking box came to."""

    status: int | None = None  # the relay's status; None: no answer (refused, timed out)
    announced: int | None = None  # its Content-Length
    received: int = 0  # bytes written into this box's bodies/
    whole: bool = False  # the stream ended cleanly (not broken off, not cancelled)
    reason: str | None = None  # the JSON ``reason`` of a refusal
    local_fault: bool = False  # this box's own disk failed while writing it


GONE_REASON = "body_gone"


def judge(f: Fetched, expected: int) -> Step:
    """``RUN``, ``LOST`` or ``GIVE_BACK`` for the fetch ``f`` of a body of ``expected``
    bytes (module text, second table)."""
    if f.local_fault or f.status is None:
        return Step.GIVE_BACK
    if f.status == 410 and f.reason == GONE_REASON:
        return Step.LOST
    if f.status != 200:
        return Step.GIVE_BACK
    if f.announced is not None and f.announced != expected:
        return Step.LOST
    if f.whole and f.received == expected:
        return Step.RUN
    return Step.GIVE_BACK


@dataclass
class Backoff:
    """The taking boxes whose large bodies this box skips for now (module text)."""

    base: float = BACKOFF_BASE
    cap: float = BACKOFF_MAX
    _until: dict[str, float] = field(default_factory=dict)
    _failures: dict[str, int] = field(default_factory=dict)

    def failed(self, box: str, now: float) -> float:
        """A fetch from ``box`` failed: skipped until the returned time."""
        n = self._failures.get(box, 0) + 1
        self._failures[box] = n
        until = now + min(self.cap, self.base * 2.0 ** (n - 1))
        self._until[box] = until
        return until

    def worked(self, box: str) -> None:
        self._failures.pop(box, None)
        self._until.pop(box, None)

    def skipped(self, now: float) -> frozenset[str]:
        """The boxes whose large bodies a claim made at ``now`` leaves alone."""
        for box in [b for b, t in self._until.items() if t <= now]:
            del self._until[box]  # its failures stay counted until a fetch works
        return frozenset(self._until)
