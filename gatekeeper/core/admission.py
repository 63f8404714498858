"""Admission: may this generation start now, and if not, why and for how long?

Pure: plain values in, a decision out. No aiohttp, no psutil, no I/O; time is
passed in by the caller (read from the loop clock by the adapter), so the
whole module is tested with tables. The one ``asyncio`` object is the event
behind ``Gate.wait_idle`` (the drain awaits it instead of polling).

Invariants (the reliability contract of issue #2):

1. ``in_flight`` counts leases granted and not yet released. ``Gate.try_admit``
   checks and increments in one synchronous step, so under asyncio no burst of
   requests can ever overshoot ``max_in_flight``: there is no ``await`` between
   the check and the increment.
2. Every ``Lease`` is released exactly once, whichever path holds it: the rule
   and its one owner per path live in ``lease``; the gate only frees the slot
   when told, and counts a repeated release (``repeat_releases``).
3. Lowering ``max_in_flight`` (a reload) never touches running leases; it only
   stops new admissions until the count falls below the new limit.
4. Several engines (issue #11 §1): every lease names the engine it runs on, and
   ``try_admit`` picks that engine (``engines.pick_engine``) in the same
   synchronous step: one that is not down (its probe), not retired (removed by a
   reload) and below its own ``max_in_flight``, the least loaded first (ties: the
   file's order). The total never exceeds ``GateLimits.max_in_flight`` and no
   engine ever exceeds its own.
5. Restarts and reloads never double an engine (issue #18 §5): an engine's slots are
   counted by its address (``EngineSlots.key``), so a reload renaming it keeps its
   running leases counted; a generation a previous process left running on it
   (``Orphans``, ``hold_orphan``) occupies a slot until the engine is known idle.

Reasons are checked in this order, so a client hears the most useful one:
``draining`` (come back to the new instance) > ``busy`` (someone else's song
is running; the ETA is known) > ``engine_down`` (the engines with a free slot
fail their probe) > ``cpu`` > ``memory`` > the opt-in signals of
issue #11 §3: ``cpu_pressure`` > ``memory_pressure`` > ``io_pressure`` (PSI
avg10) > ``gpu_memory`` > ``gpu_utilization`` (NVML). A signal that is absent
(no PSI, no GPU) or has no threshold configured never rejects.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass

from gatekeeper.config import DEFAULT_ENGINE
from gatekeeper.core.engines import EngineSlots, Orphans, no_engine_reason, pick_engine
from gatekeeper.core.estimator import DurationEstimator
from gatekeeper.core.lease import Lease
from gatekeeper.core.readings import ResourceState, overloaded_reasons
from gatekeeper.core.vocab import AdmitReason


@dataclass(frozen=True)
class GateLimits:
    """The admission settings the gate decides against (a projection of the config;
    not ``config.Limits``, the connection and body limits)."""

    max_in_flight: int
    retry_after_default: int
    # The engines in the file's order; () means one engine named "default" with all slots.
    engines: tuple[EngineSlots, ...] = ()
    # Retry-After of ``engine_down``: the probe's interval (when it may say "up" again).
    down_retry_after: int = 5

    @property
    def slots(self) -> tuple[EngineSlots, ...]:
        return self.engines or (EngineSlots(DEFAULT_ENGINE, self.max_in_flight),)


@dataclass(frozen=True)
class Rejection:
    reason: str  # an AdmitReason: busy, cpu, memory, ..., draining
    retry_after: int


def retry_after(expected: float, running_elapsed: list[float], default: int) -> int:
    """Honest Retry-After: time left of the generation closest to finishing, ≥ 1 s.

    With nothing running there is nothing to wait for that we can measure, so
    the configured default applies.
    """
    if not running_elapsed:
        return default
    remaining = expected - max(running_elapsed)
    return max(1, math.ceil(remaining))


def reasons(
    *,
    in_flight: int,
    limits: GateLimits,
    resources: ResourceState,
    draining: bool,
    no_engine: str | None = None,
) -> list[str]:
    """Every reason a new admit request is refused now, most useful first (see above).

    ``no_engine``: why no engine can take it (``no_engine_reason``), None if one can.
    """
    out: list[str] = []
    if draining:
        out.append(AdmitReason.DRAINING)
    if in_flight >= limits.max_in_flight or no_engine == AdmitReason.BUSY:
        out.append(AdmitReason.BUSY)
    elif no_engine is not None:
        out.append(no_engine)
    out += overloaded_reasons(resources)
    return out


def decide(
    *,
    in_flight: int,
    limits: GateLimits,
    resources: ResourceState,
    draining: bool,
    expected: float,
    running_elapsed: list[float],
    no_engine: str | None = None,
) -> Rejection | None:
    """None to admit, else the rejection with its (first) reason and Retry-After."""
    why = reasons(
        in_flight=in_flight,
        limits=limits,
        resources=resources,
        draining=draining,
        no_engine=no_engine,
    )
    if not why:
        return None
    if why[0] == "draining":  # the wait is for a new instance, not for this engine
        return Rejection("draining", limits.retry_after_default)
    if why[0] == AdmitReason.ENGINE_DOWN:  # the wait is for the next probe
        return Rejection(AdmitReason.ENGINE_DOWN, max(1, limits.down_retry_after))
    return Rejection(why[0], retry_after(expected, running_elapsed, limits.retry_after_default))


class Gate:
    """The exact in-flight counter plus the decision, in one synchronous call.

    ``limits``, ``resources``, ``draining`` and ``engine_up`` are plain attributes
    the adapters replace (reload, monitor, shutdown, probe); reading them is free.
    An engine a reload removed keeps its running leases (they count, and are
    released as usual) but is no longer in ``limits.slots``, so it gets no new one.
    """

    def __init__(self, limits: GateLimits, estimator: DurationEstimator):
        self.limits = limits
        self.estimator = estimator
        self.resources = ResourceState()
        self.draining = False
        # The probe's verdict per engine name (absent or None: no answer yet).
        self.engine_up: dict[str, bool | None] = {}
        self._leases: dict[int, Lease] = {}
        # Running leases by engine key (its address: ``EngineSlots.key``), and each
        # lease's key as it was taken (a reload may rename its engine meanwhile).
        self._by_key: dict[str, int] = {}
        self._key_of: dict[int, str] = {}
        # Generations a previous process left running, by engine key (``hold_orphan``).
        self.orphans = Orphans()
        # Called right after a slot frees, in the same synchronous step (the waiting
        # room dispatches its next job there, before any new arrival can take the slot).
        self.on_free: Callable[[], None] | None = None
        # Called with each new lease (the per-engine count of started generations).
        self.on_admit: Callable[[Lease], None] | None = None
        # Releases of a lease already released: harmless (``lease``), and a bug of the
        # path that repeated it; tests assert it stays 0.
        self.repeat_releases = 0
        # Set while no lease is held; only ``wait_idle`` awaits it (the shutdown drain).
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return len(self._leases)

    def _key(self, engine: str) -> str:
        """The key an engine's slots are counted by (a listed engine's address)."""
        return next((e.key for e in self.limits.slots if e.name == engine), engine)

    def in_flight_on(self, engine: str) -> int:
        """Leases on ``engine``'s address, or naming it (a removed one: ``unlisted``)."""
        if any(e.name == engine for e in self.limits.slots):
            return self._by_key.get(self._key(engine), 0)
        return self.unlisted().count(engine)

    def unlisted(self) -> list[str]:
        """The engine of each lease counted on no listed engine (a reload removed its
        address; a renamed one's leases count on its new name), oldest first."""
        listed = {e.key for e in self.limits.slots}
        return [t.engine for t in self.running() if self._key_of[id(t)] not in listed]

    def _occupied(self, now: float) -> dict[str, int]:
        """Slots taken by engine key: our leases, plus the orphans still held."""
        if not self.orphans:
            return self._by_key
        out = dict(self._by_key)
        for key, n in self.orphans.counts(now).items():
            out[key] = out.get(key, 0) + n
        return out

    def occupied_on(self, engine: str, now: float) -> int:
        """Slots of a listed ``engine`` taken now: our leases on its address plus the
        orphans a previous process left there (what ``pick`` counts; the HAProxy agent's
        weight reads this, so a box busy with an orphan is not offered as free)."""
        return self._occupied(now).get(self._key(engine), 0)

    def hold_orphan(self, engine: str | None, until: float, signal: bool = False) -> None:
        """A generation a previous process left on ``engine`` (None: unknown, hold all):
        one of its slots until it reports idle (``engine_busy``), or ``until`` (``Orphans``)."""
        keys = [e.key for e in self.limits.slots if engine in (None, e.name)]
        self.orphans.add(keys, until, signal)

    def engine_busy(self, engine: str, busy: bool | None) -> bool:
        """The engine's busy signal (None: none); True when it freed orphans' slots."""
        return self.orphans.report(self._key(engine), busy)

    def running(self, engine: str | None = None) -> list[Lease]:
        """The leases held now (on ``engine``), oldest first; each names its holder."""
        leases = [t for t in self._leases.values() if engine is None or t.engine == engine]
        return sorted(leases, key=lambda t: t.started_at)

    def pick(self, now: float, *, probed_only: bool = False) -> str | None:
        """The engine the next admit would run on (None: no engine may take one).
        ``probed_only``: the waiting room's rule, only an engine a probe has seen up
        (``engines.available``)."""
        return pick_engine(
            self.limits.slots, self._occupied(now), self.engine_up, probed_only=probed_only
        )

    def _no_engine(self, engine: str | None, now: float, probed_only: bool = False) -> str | None:
        if engine is not None:
            return None
        return no_engine_reason(
            self.limits.slots, self._occupied(now), self.engine_up, probed_only=probed_only
        )

    def elapsed(self, now: float) -> list[float]:
        return [now - t.started_at for t in self._leases.values()]

    def _listed_in_flight(self) -> int:
        """Leases on the engines listed now: a removed engine's job, finishing, holds
        no slot of the engines that remain."""
        return sum(self._by_key.get(key, 0) for key in {e.key for e in self.limits.slots})

    def _decide(self, now: float, engine: str | None, probed_only: bool) -> Rejection | None:
        return decide(
            in_flight=self._listed_in_flight(),
            limits=self.limits,
            resources=self.resources,
            draining=self.draining,
            expected=self.estimator.expected,
            running_elapsed=self.elapsed(now),
            no_engine=self._no_engine(engine, now, probed_only),
        )

    def check(self, now: float, *, probed_only: bool = False) -> Rejection | None:
        """The decision a new admit request (``probed_only``: a queued job) would get
        now, without taking a slot."""
        return self._decide(now, self.pick(now, probed_only=probed_only), probed_only)

    def reasons(self, now: float) -> list[str]:
        """Every reason a new admit request would be refused now (``check`` gives the first)."""
        return reasons(
            in_flight=self._listed_in_flight(),
            limits=self.limits,
            resources=self.resources,
            draining=self.draining,
            no_engine=self._no_engine(self.pick(now), now),
        )

    def try_admit(self, route: str, now: float, *, probed_only: bool = False) -> Lease | Rejection:
        """A lease, or why not. ``probed_only``: the waiting room's rule (``pick``)."""
        engine = self.pick(now, probed_only=probed_only)
        rejection = self._decide(now, engine, probed_only)
        if rejection is not None:
            return rejection
        assert engine is not None  # decide admits only when an engine was picked
        lease = Lease(route, now, engine, self._free, self._repeated)
        key = self._key(engine)
        self._leases[id(lease)] = lease
        self._key_of[id(lease)] = key
        self._by_key[key] = self._by_key.get(key, 0) + 1
        self._idle.clear()
        if self.on_admit is not None:
            self.on_admit(lease)
        return lease

    async def wait_idle(self) -> None:
        """Return once no lease is held: at once if none is, else when the last is released."""
        while self._leases:
            await self._idle.wait()

    def _free(self, lease: Lease) -> None:
        del self._leases[id(lease)]
        key = self._key_of.pop(id(lease))
        left = self._by_key[key] - 1
        if left:
            self._by_key[key] = left
        else:
            del self._by_key[key]
        if not self._leases:
            self._idle.set()
        if self.on_free is not None:
            self.on_free()

    def _repeated(self, lease: Lease) -> None:
        self.repeat_releases += 1
