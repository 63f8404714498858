"""What the simulator's application holds: the engine and the request statistics."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from gatekeeper.enginesim.engine import Engine


@dataclass
class Stats:
    """What ``GET /_sim/stats`` reports about requests; recorded by ``app``'s middleware."""

    requests: Counter[str] = field(default_factory=Counter)
    last_headers: dict[str, str] = field(default_factory=dict)
    in_flight: int = 0
    peak_in_flight: int = 0


ENGINE = web.AppKey("engine", Engine)
STATS = web.AppKey("stats", Stats)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
