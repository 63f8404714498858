"""What the waiting room needs from the process around it, as small Protocols.

The service, the runner and the views receive a ``JobDeps``; the app builds it
from its shared state (which satisfies ``RuntimeRef`` and ``EngineVerdicts``).
Nothing in ``jobs/`` sees the app's state as a whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from gatekeeper.config import Config
from gatekeeper.core.admission import Gate
from gatekeeper.core.vocab import ErrorKind
from gatekeeper.lifecycle.runtime import Runtime
from gatekeeper.observability.metrics import Metrics


class RuntimeRef(Protocol):
    """The current rules and pools: a reload swaps ``runtime`` in one assignment."""

    @property
    def runtime(self) -> Runtime: ...


class Epochs(Protocol):
    """Reload epochs (``lifecycle.epochs``): a runner keeps its epoch's pools to its end."""

    def enter(self) -> int: ...

    def leave(self, epoch: int) -> None: ...


class EngineVerdicts(Protocol):
    """An engine that refused a connection is down from now, not from its next probe."""

    def engine_refused(self, engine: str, gone: bool) -> None: ...


class JobCounters(Protocol):
    """The request counters of the status document (``observability.counters``)."""

    def rejection(self, route: str, reason: str) -> None: ...

    def upstream_error(self, route: str, kind: ErrorKind) -> None: ...


@dataclass(frozen=True)
class JobDeps:
    """Everything the waiting room reads or tells outside ``jobs/``."""

    clock: Callable[[], float]  # the loop clock (queue waits, ETAs, deadlines)
    gate: Gate  # the admission slots the jobs share with the admit routes
    metrics: Metrics
    counters: JobCounters
    epochs: Epochs
    live: RuntimeRef
    engines: EngineVerdicts
    wall: Callable[[], float] = field(default=time.time)  # stored times outlive the process

    @property
    def config(self) -> Config:
        """The live rules (a reload may have changed them since the last call)."""
        return self.live.runtime.config
