"""A light periodic probe of the upstream: is the engine answering at all?

Any HTTP answer, even a 404 or a 500, means the engine process is up and
serving; only a failure to connect or a timeout counts as down. httpx, not
aiohttp: this is one of gatekeeper's own low-rate calls, off the proxy path,
and it must not queue behind a 15-minute generation in the proxy's pools.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import httpx

from .config import Config
from .logs import redact_url

log = logging.getLogger("gatekeeper.probe")


async def probe_once(client: httpx.AsyncClient, config: Config) -> bool:
    up = config.upstream
    try:
        await client.get(up.url + up.probe.path, timeout=up.probe.timeout)
    except httpx.HTTPError:
        return False
    return True


async def probe_loop(config: Callable[[], Config], publish: Callable[[bool], None]) -> None:
    last: bool | None = None
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
        while True:
            cfg = config()
            try:
                up = await probe_once(client, cfg)
            except Exception:  # never let the probe die: readyz would freeze on its last word
                log.exception("upstream probe failed unexpectedly")
                up = False
            if up != last:
                (log.info if up else log.warning)(
                    "upstream %s is %s", redact_url(cfg.upstream.url), "up" if up else "DOWN"
                )
                last = up
            publish(up)
            await asyncio.sleep(cfg.upstream.probe.interval)
