"""The rules in force: everything derived from one validated ``Config``.

``Runtime`` bundles the compiled router and each engine's pools (``EnginePools``:
gated generations and everything passed through). A request takes one ``Runtime``
reference at its start and uses it to the end, so a reload, which builds a new
``Runtime`` (``successor``) and swaps the one reference in one assignment, can
never hand a request half of the old rules and half of the new.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from gatekeeper.config import DEFAULT_ENGINE, Config, Engine, Pool, Upstream
from gatekeeper.core.admission import GateLimits
from gatekeeper.core.engines import EngineSlots
from gatekeeper.core.routes import Router
from gatekeeper.upstream import UpstreamPool


@dataclass(frozen=True)
class EnginePools:
    """One engine's two pools: gated generations, and everything passed through."""

    gated: UpstreamPool
    passthrough: UpstreamPool

    @classmethod
    def build(cls, engine: Engine, up: Upstream, old: EnginePools | None = None) -> EnginePools:
        """The engine's pools; with ``old`` (a reload), each pool whose URL and settings
        did not change is kept, warm connections included, a changed one built anew."""
        suffix = "" if engine.name == DEFAULT_ENGINE else f"-{engine.name}"

        def pool(which: str, settings: Pool, before: UpstreamPool | None) -> UpstreamPool:
            same_url = before is not None and before.base == engine.url.rstrip("/")
            if before is not None and same_url and before.pool == settings:
                return before
            return UpstreamPool(which + suffix, engine.url, settings)

        return cls(
            gated=pool("gated", up.gated, old.gated if old else None),
            passthrough=pool("passthrough", up.passthrough, old.passthrough if old else None),
        )

    def all(self) -> tuple[UpstreamPool, UpstreamPool]:
        return (self.gated, self.passthrough)


@dataclass(frozen=True)
class Runtime:
    config: Config
    router: Router
    # Every engine's pools, by engine name, in the file's order (issue #11 §1).
    engines: Mapping[str, EnginePools]

    @classmethod
    def build(cls, config: Config) -> Runtime:
        """Must run inside the event loop (aiohttp sessions bind to it)."""
        up = config.upstream
        return cls(
            config=config,
            router=Router(config.routes),
            engines={e.name: EnginePools.build(e, up) for e in up.engines},
        )

    def successor(self, config: Config) -> Runtime:
        """The runtime for a reloaded ``config`` (issue #5 §1; engines: issue #11 §1).

        A pool whose URL, timeouts and limits did not change is kept, warm
        connections included; a changed one (or a new engine's) is built anew for
        new requests. The caller closes the pools the successor no longer holds
        (a removed engine's too), once no request uses them any more
        (``reload.Reloader``): a removed engine's running job holds its epoch.
        """
        up = config.upstream
        engines: dict[str, EnginePools] = {}
        for e in up.engines:
            engines[e.name] = EnginePools.build(e, up, self.engines.get(e.name))
        return Runtime(config=config, router=Router(config.routes), engines=engines)

    def pools(self) -> list[UpstreamPool]:
        return [p for e in self.engines.values() for p in e.all()]

    @property
    def first(self) -> EnginePools:
        return next(iter(self.engines.values()))

    @property
    def gated(self) -> UpstreamPool:
        """The first engine's gated pool (the one engine's, with ``upstream.url``)."""
        return self.first.gated

    @property
    def passthrough(self) -> UpstreamPool:
        """The first engine's passthrough pool (a gradio route's: it has one engine)."""
        return self.first.passthrough

    def gated_for(self, engine: str) -> UpstreamPool:
        """The gated pool of the engine a ticket names (it exists: the gate picks from
        the same reload's engines, in the same synchronous step)."""
        return self.engines[engine].gated

    def pass_pool(self, up: Mapping[str, bool | None]) -> UpstreamPool:
        """Where a pass route goes: the first engine (file order) not known to be down;
        with every engine down, the first (its failure is answered 502 as usual)."""
        for name, pools in self.engines.items():
            if up.get(name) is not False:
                return pools.passthrough
        return self.first.passthrough

    async def close(self) -> None:
        for pool in self.pools():
            await pool.close()


def admission_limits(config: Config) -> GateLimits:
    up = config.upstream
    return GateLimits(
        max_in_flight=config.admission.max_in_flight,
        retry_after_default=config.admission.retry_after_default,
        # Counted by address: a reload renaming an engine keeps its leases (issue #18 §5).
        engines=tuple(EngineSlots(e.name, e.max_in_flight, e.url) for e in up.engines),
        down_retry_after=max(1, math.ceil(up.probe.interval)),
    )
