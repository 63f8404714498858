"""Guests: entries of the waiting room that are not jobs (issue #19: Gradio events).

A Gradio event that finds no free slot waits in the same waiting room as the
queue routes' jobs: the same fair ring (``waitroom.WaitingRoom``: a ``Waiter``
with the guest's id and client key), the same slots (``dispatch``), the same
resource hold on dispatch, ``max_wait``, drain, metrics and status entries. But
it is not durable: its session lives in the Gradio app's process and in the
client's open stream, so there is nothing to store, coalesce or restore. A
``Guest`` is therefore held in memory only, beside the store-backed jobs
(``JobService.live``), and told what the room decided:

======================  ==================================================
the room                the guest is told
======================  ==================================================
dispatch (a slot)       ``start(lease)``: it now holds the lease and must
                        release it or hand it over (``core.lease``)
``max_wait`` passed     ``left(QUEUE_TIMEOUT, detail)``
SIGTERM (drain)         ``left(DRAINING, detail)``
its client left         ``unseat`` (the guest's own side asks; nothing told)
======================  ==================================================

``jobs`` does not know what a guest is (the Gradio package implements the
Protocol; the app wires the two together): ``jobs`` and ``gradio`` are
siblings in the import layers.

A restart forgets every guest (docs/gradio.md): none holds a slot in a store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gatekeeper.config import Config
from gatekeeper.core.admission import Rejection
from gatekeeper.core.lease import Lease
from gatekeeper.core.vocab import AdmitReason, QueueReason
from gatekeeper.jobs.deps import JobDeps
from gatekeeper.jobs.model import Job, Refused
from gatekeeper.jobs.schedule import Schedule, retry_after_client
from gatekeeper.jobs.waitroom import Waiter, WaitingRoom, eta_for

log = logging.getLogger("gatekeeper.jobs")


class Guest(Protocol):
    """A waiting-room entry that is not a job (``gradio.held.HeldEvent``)."""

    @property
    def id(self) -> str: ...

    @property
    def client(self) -> str: ...

    @property
    def route(self) -> str: ...

    def start(self, lease: Lease) -> None:
        """Its turn: it holds ``lease`` from now (released or handed over by it)."""

    def left(self, reason: str, detail: str) -> None:
        """It left the room without a slot (``queue_timeout``, ``draining``)."""


@dataclass(frozen=True, slots=True)
class Place:
    """Where a guest waits now: 1-based ``position`` of ``waiting``; ``done_in``
    seconds until it is expected done (it starts ``done_in - expected`` from now)."""

    position: int
    waiting: int
    done_in: float


class GuestOps:
    """Mixed into ``JobService`` (which provides the attributes declared here)."""

    deps: JobDeps
    room: WaitingRoom
    schedule: Schedule
    guests: dict[str, Guest]
    live: dict[str, Job]
    dispatch: Callable[[], None]
    _changed_all: Callable[[], None]
    _refusal: Callable[[str, Config, float], Refused | None]

    def seat(self, guest: Guest) -> Refused | None:
        """A guest arrives: refused (``client_limit``, ``queue_full``, the same rules
        as a job's), or seated at the end of its client's queue and dispatched at once
        if the gate has room (then ``start`` was called before this returns)."""
        cfg, now = self.deps.config, self.deps.clock()
        refusal = self._refusal(guest.client, cfg, now)
        if refusal is not None:
            return refusal
        deadline = now + cfg.admission.queue.max_wait
        self.room.join(Waiter(guest.id, guest.client, guest.route, now, deadline))
        self.guests[guest.id] = guest
        self._changed_all()
        self.dispatch()
        return None

    def unseat(self, guest_id: str) -> bool:
        """The guest's client left (or cancelled) while it waited: it leaves the room."""
        if self.guests.pop(guest_id, None) is None:
            return False
        self.room.leave(guest_id)
        self._changed_all()
        return True

    def place(self, guest_id: str) -> Place | None:
        """Where the guest waits now; None once it no longer waits."""
        pos = self.room.position(guest_id)
        if pos is None:
            return None
        remaining, slots, expected = self.schedule.running_here(self.deps.clock())
        _, done_in = eta_for(pos, remaining, slots, expected)
        return Place(pos, len(self.room), done_in)

    def retry_after_client(self, first: Waiter | None, mine: dict[str, Job], now: float) -> int:
        """``client_limit``: when the earliest of the client's entries is done: a running
        job, or its first waiter (the others of its queue start after that one), which
        may be a job or a guest."""
        done_in = [self.schedule.eta(j, now)[1] for j in mine.values()]
        if first is not None:
            job = self.live.get(first.job_id)
            place = self.place(first.job_id) if job is None else None
            if job is not None:
                done_in.append(self.schedule.eta(job, now)[1])
            elif place is not None:
                done_in.append(place.done_in)
        return retry_after_client(done_in)

    def _start_guest(self, waiter: Waiter, now: float) -> bool:
        """Dispatch a guest (``waiter`` just left the room); False if it is not a guest."""
        guest = self.guests.pop(waiter.job_id, None)
        if guest is None:
            return False
        deps = self.deps
        result = deps.gate.try_admit(guest.route, now, probed_only=True)  # checked before
        if isinstance(result, Rejection):
            guest.left(result.reason, deps.config.message(result.reason, retry_after=1))
            return True
        deps.metrics.queue_wait.labels(guest.route).observe(now - waiter.arrived)
        try:
            guest.start(result)
        except BaseException:
            if result.holder == "taker":  # nobody took it over: released here, once
                result.release()
            raise
        finally:
            self._changed_all()
        return True

    def _guest_left(self, waiter: Waiter, reason: str, now: float) -> bool:
        """A guest leaves without a slot (``max_wait``, drain); False if not a guest."""
        guest = self.guests.pop(waiter.job_id, None)
        if guest is None:
            return False
        self.room.leave(waiter.job_id)
        cfg = self.deps.config
        waited = now - waiter.arrived
        if reason == QueueReason.QUEUE_TIMEOUT:
            retry_after = self.schedule.retry_after_timeout(now)
        else:
            retry_after = cfg.admission.retry_after_default
        self.deps.counters.rejection(guest.route, reason)
        fields = Refused.fields_of(cfg, len(self.room))
        text = cfg.message(reason, retry_after=retry_after, route=guest.route, **fields)
        log.info(
            "gradio event %s… left the waiting room after %.0fs: %s", guest.id[:16], waited, reason
        )
        guest.left(reason, f"{text} (waited {waited:.0f} s)")
        self._changed_all()
        return True

    def drain_guests(self) -> None:
        """SIGTERM: every waiting guest is told ``draining`` now (its session dies with
        this process; nothing of it could be kept for the next one)."""
        now = self.deps.clock()
        for w in self.room.waiters():
            if w.job_id in self.guests:
                self._guest_left(w, AdmitReason.DRAINING, now)
