"""What the proxy needs from the rest of gatekeeper, as small Protocols.

The proxy never sees the application's state: the wiring (``app``) hands it a
``ProxyPorts`` whose members it satisfies with concrete objects (the counters,
the reload epochs, the live rules' holder, ...). A test can pass fakes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from gatekeeper.core.admission import Gate
from gatekeeper.core.vocab import ErrorKind, Outcome
from gatekeeper.lifecycle.runtime import Runtime
from gatekeeper.proxy.streams import OpenStreams

# The loop clock (seconds): every duration the proxy measures reads it.
Clock = Callable[[], float]
# A generation sent to an engine failed: the engine's name, and whether that is a
# verdict on the engine (``UpstreamError.engine_gone``: it refused or dropped the connection).
EngineRefused = Callable[[str, bool], None]
# An engine's answer read to its end: route name, status code, seconds (the histogram).
UpstreamTimed = Callable[[str, str, float], None]


class Counting(Protocol):
    """The request counters (``gatekeeper_requests_total`` and friends)."""

    def request(self, route: str, outcome: Outcome) -> None: ...

    def rejection(self, route: str, reason: str) -> None: ...

    def upstream_error(self, route: str, kind: ErrorKind) -> None: ...


class Epochs(Protocol):
    """The reload epochs: which rules' pools an open request may still use."""

    def enter(self) -> int: ...

    def join(self, epoch: int) -> None: ...

    def leave(self, epoch: int) -> None: ...


class LiveRules(Protocol):
    """Holds the rules in force; a reload replaces ``runtime`` in one assignment."""

    @property
    def runtime(self) -> Runtime: ...


@dataclass(frozen=True, slots=True)
class ProxyPorts:
    rules: LiveRules
    gate: Gate
    clock: Clock
    counters: Counting
    epochs: Epochs
    engine_refused: EngineRefused
    upstream_timed: UpstreamTimed
    # Pass-through event streams open now: a stop ends them (``proxy.streams``).
    streams: OpenStreams = field(default_factory=OpenStreams)
