"""Generations a previous process left running: their engines wait (issue #18 §5).

After a ``kill -9`` (or a crash, an OOM kill), the jobs the store still holds as
``running`` are ended by ``recover``, but their engines did not notice: each is
still computing its generation. Sending it the next job at once would run two
on an engine that takes one. So each such job's engine (``JobRecord.engine``,
written by ``mark_running``) gets no new generation until it is known idle: its
own busy signal (``upstream.probe.busy``, read by the probe) says so (until its
first answer it is presumed busy), or, for an engine without one, the job's
expected remaining time (the duration estimate less the time it had run) has
passed. The gate holds them (``Gate.hold_orphan``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from gatekeeper.config import Upstream
from gatekeeper.core.admission import Gate
from gatekeeper.jobs.record import JobRecord

log = logging.getLogger("gatekeeper.jobs")


def hold_orphans(
    gate: Gate, upstream: Upstream, running: Iterable[JobRecord], now: float, wall: float
) -> None:
    """Hold the engine of each job found ``running`` at start (before ``recover``).

    ``now``: the loop clock (the gate's); ``wall``: the records' clock. A job whose
    engine is not listed any more (renamed while stopped, or an older record without
    one) holds every engine: which one computes it is not known.
    """
    names = {e.name for e in upstream.engines}
    signal = bool(upstream.probe.busy.pointer)
    for row in running:
        grace = max(0.0, gate.estimator.expected - (wall - (row.started or wall)))
        engine = row.engine if row.engine in names else None
        gate.hold_orphan(engine, now + grace, signal)
        log.warning(
            "job %s… was running on engine %s at the last stop and may still be computing"
            " there: no new generation goes to it until %s",
            row.id[:6],
            engine or "(unknown: every engine)",
            "its probe reports it idle (upstream.probe.busy)"
            if signal
            else f"its expected remaining time has passed ({grace:.0f} s)",
        )
