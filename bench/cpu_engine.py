"""An engine stand-in whose generation is a fixed amount of CPU work, not a fixed time.

``gatekeeper engine-sim`` finishes a generation after a wall-clock duration (its worker
spins a core, but the song is done on time however little CPU it got), so a flood that
steals CPU cannot slow it down. This one calibrates, at start, how many iterations of a
pure-Python loop one core runs in ``--work-seconds``; each generation runs exactly that
many in a worker process, so it takes longer when something else takes the CPU.

    python bench/cpu_engine.py --listen 127.0.0.1:8001 --work-seconds 5

``POST /generate`` with ``{"work": true}`` runs one generation (429 if one is running)
and answers ``{"work_seconds", "cpu_seconds"}`` as measured in the worker; any other
``POST /generate`` (a flood request that got through) is answered at once and counted.
``GET /_sim/stats`` gives ``active_generations``, ``completed_generations`` and
``skipped_requests``; ``GET /healthz`` answers ``{"status": "ok"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from concurrent.futures import ProcessPoolExecutor

from aiohttp import web

CALIBRATION_SECONDS = 0.5


def burn(iterations: int) -> tuple[float, float]:
    """Run the loop; (wall seconds, CPU seconds) in the worker."""
    wall, cpu = time.perf_counter(), time.process_time()
    x = 1
    for _ in range(iterations):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
    return time.perf_counter() - wall, time.process_time() - cpu


def calibrate(pool: ProcessPoolExecutor, work_seconds: float) -> int:
    """Iterations that take ``work_seconds`` on one otherwise idle core."""
    n = 100_000
    while pool.submit(burn, n).result()[0] < CALIBRATION_SECONDS / 3:
        n *= 2
    # The fastest of three: a slower run is one where something else had the core.
    wall = min(pool.submit(burn, n).result()[0] for _ in range(3))
    return max(1, round(n * work_seconds / wall))


def make_app(pool: ProcessPoolExecutor, iterations: int) -> web.Application:
    state = {"active": 0, "completed": 0, "skipped": 0}

    async def generate(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            wants_work = json.loads(body or b"{}").get("work") is True
        except (ValueError, AttributeError):
            wants_work = False
        if not wants_work:
            state["skipped"] += 1
            return web.json_response({"skipped": True})
        if state["active"]:
            return web.json_response({"detail": "one generation at a time"}, status=429)
        state["active"] += 1
        try:
            loop = asyncio.get_running_loop()
            wall, cpu = await loop.run_in_executor(pool, burn, iterations)
        finally:
            state["active"] -= 1
        state["completed"] += 1
        return web.json_response({"work_seconds": wall, "cpu_seconds": cpu})

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(
            {
                "active_generations": state["active"],
                "completed_generations": state["completed"],
                "skipped_requests": state["skipped"],
            }
        )

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/generate", generate)
    app.router.add_get("/_sim/stats", stats)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--work-seconds", type=float, required=True, help="one generation, idle")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    # The worker is forked before the event loop or any thread exists.
    with ProcessPoolExecutor(max_workers=1) as pool:
        iterations = calibrate(pool, args.work_seconds)
        print(
            f"cpu-engine: {iterations:,} iterations = {args.work_seconds:g} s of one idle core; "
            f"listening on http://{host}:{port}",
            flush=True,
        )
        web.run_app(
            make_app(pool, iterations), host=host, port=int(port), print=None, access_log=None
        )


if __name__ == "__main__":
    main()
