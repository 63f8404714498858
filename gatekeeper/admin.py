"""The admin listener: health, readiness and metrics, on a port of its own.

Never served on the public port: the frontend's users must not be able to
read metrics or, later, trigger reloads.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gatekeeper.jobs.anybox import RELAY_PATH
from gatekeeper.jobs.bodyrelay import BODY_PATH
from gatekeeper.lifecycle.reload import RELOADER, Reloader
from gatekeeper.observability.metrics import Metrics
from gatekeeper.observability.status import StatusSource, entries_limit, status_document
from gatekeeper.proxy.responses import json_error


class Observed(StatusSource, Protocol):
    """What the admin endpoints read of the running gatekeeper (the app's state is one)."""

    @property
    def draining(self) -> bool: ...

    @property
    def metrics(self) -> Metrics: ...


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The typed key under which the admin handlers find what they read.
STATE = web.AppKey("state", Observed)


async def healthz(request: web.Request) -> web.Response:
    """Process alive and its event loop answering."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 only when the upstream answers its probe and we are not draining.

    ``?admit=1`` (issue #11 §2, several replicas): also 503 while a new generation could
    not start now — every slot busy, CPU or memory overloaded (``Gate.reasons``). With a
    waiting room a busy replica could still queue the job; taking it out of the Service
    stops its queue from growing but sends everything to the others, so never use it
    with one replica (README, "Several boxes behind HAProxy").
    """
    st = request.app[STATE]
    reasons = []
    if st.draining:
        reasons.append("draining")
    if st.upstream_up is not True:
        reasons.append("upstream_unavailable" if st.upstream_up is False else "upstream_unknown")
    if request.query.get("admit") == "1":
        reasons += [r for r in st.gate.reasons(st.clock()) if r not in ("draining", "engine_down")]
    body = {"ready": not reasons, "reasons": reasons}
    return web.json_response(body, status=503 if reasons else 200)


async def metrics(request: web.Request) -> web.Response:
    st = request.app[STATE]
    return web.Response(
        body=generate_latest(st.metrics.registry),
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )


async def status(request: web.Request) -> web.Response:
    try:
        limit = entries_limit(request.query)
    except ValueError as exc:
        return json_error(400, "bad_request", str(exc))
    return web.json_response(status_document(request.app[STATE], limit))


async def reload_rules(request: web.Request) -> web.Response:
    """Re-read rules.yaml (issue #5 §1): 200 with what changed, 400 with every error."""
    outcome = await request.app[RELOADER].reload("POST /reload")
    return web.json_response(outcome.to_json(), status=200 if outcome.ok else 400)


# The live status page (issue #3 §3): inline CSS and JS only, so it may load nothing else.
_PAGE_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'"
)


@functools.cache
def _status_page() -> bytes:
    return (resources.files(__package__) / "static" / "status.html").read_bytes()


async def status_page(request: web.Request) -> web.Response:
    """One self-contained HTML page that polls ./status every second."""
    return web.Response(
        body=_status_page(),
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-cache", "Content-Security-Policy": _PAGE_CSP},
    )


def build_admin_app(
    state: Observed,
    reloader: Reloader | None = None,
    relay: Handler | None = None,
    body_relay: Handler | None = None,
) -> web.Application:
    """``relay``: the result relay's endpoint for the other boxes of a shared job store
    (issue #21; ``jobs.api.relay_endpoint``), served here, never on the public port;
    ``body_relay``: the large request bodies this box keeps (``jobs.bodyrelay``)."""
    app = web.Application()
    if relay is not None:
        app.router.add_get(f"{RELAY_PATH}/{{handle}}", relay)
    if body_relay is not None:
        app.router.add_get(f"{BODY_PATH}/{{box}}/{{job}}", body_relay)
    app[STATE] = state
    if reloader is not None:
        app[RELOADER] = reloader
        app.router.add_post("/reload", reload_rules)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    app.router.add_get("/", status_page)
    return app
