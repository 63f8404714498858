"""fn_index -> api_name (and result outputs) of a Gradio app, read from its ``/config``.

A join names its function by ``fn_index`` only; a route that gates by
``api_name`` needs the map. It is fetched with httpx, a low-rate call of
gatekeeper's own, not on the proxy's pools; parsing is ``wire.api_names``.
The same document says which outputs of each function are its result
(``frames.result_outputs``: a completion without them is a failed generation).
"""

from __future__ import annotations

import logging
import time

import httpx

from gatekeeper.gradio.frames import result_outputs
from gatekeeper.gradio.wire import api_names

log = logging.getLogger("gatekeeper.gradio")

# How often the fn_index -> api_name map is fetched again when a join names an
# fn_index it does not know (an app restarted with other functions).
NAMES_REFRESH_SECONDS = 5.0


class ApiNames:
    """The map of each Gradio app root, fetched once and again on an unknown fn_index."""

    def __init__(self) -> None:
        self._names: dict[tuple[str, str], dict[int, str]] = {}
        self._results: dict[tuple[str, str], dict[int, tuple[int, ...]]] = {}
        self._fetched: dict[tuple[str, str], float] = {}

    async def results(
        self, upstream: str, root: str, fn_index: int | None
    ) -> tuple[int, ...] | None:
        """The positions of ``fn_index``'s result outputs; None: unknown."""
        if fn_index is None:
            return None
        key = (upstream, root)
        known = self._results.get(key)
        if known is None or fn_index not in known:
            await self.lookup(upstream, root, fn_index)  # fetches /config when it may
            known = self._results.get(key)
        return None if known is None else known.get(fn_index)

    async def lookup(self, upstream: str, root: str, fn_index: int | None) -> str | None:
        if fn_index is None:
            return None
        key = (upstream, root)
        names = self._names.get(key)
        if names is not None and fn_index in names:
            return names[fn_index]
        last = self._fetched.get(key, 0.0)
        if time.monotonic() - last < NAMES_REFRESH_SECONDS and names is not None:
            return None
        self._fetched[key] = time.monotonic()
        url = upstream.rstrip("/") + root + "/config"
        try:
            async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
                resp = await client.get(url, headers={"Accept-Encoding": "identity"})
                resp.raise_for_status()
                doc = resp.json()
                names = api_names(doc)
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("cannot read the Gradio app's function names from %s: %s", url, exc)
            return None
        self._names[key] = names
        self._results[key] = result_outputs(doc)
        return names.get(fn_index)
