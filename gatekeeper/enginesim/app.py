"""The simulator's aiohttp application: the route table, the observing middleware, shutdown."""

from __future__ import annotations

from aiohttp import web

from gatekeeper.enginesim import api, testkit
from gatekeeper.enginesim.config import SimConfig
from gatekeeper.enginesim.engine import Engine
from gatekeeper.enginesim.state import ENGINE, STATS, Handler, Stats

# Every route whose handler starts a generation (marked ``@api.starts_work``): what a
# gatekeeper in front of the simulator has to admit. tests/test_enginesim.py checks this
# against the router, so a new work route cannot be added without listing it here.
WORK_ENDPOINTS: tuple[tuple[str, str], ...] = (
    ("POST", "/generate"),
    ("POST", "/generate/stream"),
    ("POST", "/batch-generate"),
)

_UNRECORDED = frozenset({"/_sim/stats", "/_sim/reset", "/_sim/finish"})


@web.middleware
async def _observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    stats = request.app[STATS]
    recorded = request.path not in _UNRECORDED
    if recorded:
        stats.requests[f"{request.method} {request.path}"] += 1
        last: dict[str, str] = {}
        for name, value in request.headers.items():
            last[name] = f"{last[name]}, {value}" if name in last else value
        stats.last_headers = last
        stats.in_flight += 1
        stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        # Router 404/405s come as plain text; the real engine (FastAPI) answers JSON.
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return web.json_response({"detail": exc.reason}, status=exc.status, headers=headers)
    finally:
        if recorded:
            stats.in_flight -= 1


async def _on_shutdown(app: web.Application) -> None:
    await app[ENGINE].shutdown()


def create_app(config: SimConfig) -> web.Application:
    """Build the simulator's application (also used in-process by tests)."""
    app = web.Application(middlewares=[_observe])
    app[ENGINE] = Engine(config)
    app[STATS] = Stats()
    # Failing running generations at shutdown lets their handlers answer at once and
    # kills the workers, instead of the server waiting minutes for songs nobody gets.
    app.on_shutdown.append(_on_shutdown)
    app.on_cleanup.append(_on_shutdown)
    r = app.router
    r.add_post("/generate", api.generate)
    r.add_post("/generate/stream", api.generate_stream)
    r.add_post("/batch-generate", api.batch_generate)
    r.add_get("/progress", api.progress_list)
    r.add_get("/progress/{id}", api.progress_one)
    r.add_get("/progress/{id}/events", api.progress_events)
    r.add_get("/result/{id}", api.result)
    r.add_get("/download", api.download)
    r.add_post("/upload", api.upload)
    r.add_put("/upload", api.upload)
    r.add_get("/healthz", api.healthz)
    r.add_get("/_sim/stats", testkit.stats)
    r.add_post("/_sim/reset", testkit.reset)
    r.add_post("/_sim/finish", testkit.finish)
    r.add_route("*", "/_sim/echo", testkit.echo)
    r.add_route("*", "/_sim/echo/{tail:.*}", testkit.echo)
    r.add_get("/_sim/gzip", testkit.gzipped)
    r.add_get("/_sim/sleep", testkit.sleep)
    r.add_get("/_sim/stall", testkit.stall)
    r.add_get("/_sim/abort", testkit.abort)
    r.add_get("/_sim/headers", testkit.hop_headers)
    r.add_get("/_sim/sse", testkit.sse_ticks)
    return app
