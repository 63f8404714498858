"""``gatekeeper engine-sim``: serve the simulator until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from aiohttp import web

from gatekeeper.enginesim.app import create_app
from gatekeeper.enginesim.config import SimConfig
from gatekeeper.enginesim.flags import parse_listen


async def _serve(config: SimConfig, host: str, port: int) -> int:
    # A short shutdown timeout: streams such as /_sim/stall would otherwise hold a SIGTERM
    # for a minute, and running generations are failed by on_shutdown anyway.
    runner = web.AppRunner(create_app(config), handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            print(f"engine-sim: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
            return 1
        bound = runner.addresses[0][1] if runner.addresses else port
        shown = f"[{host}]" if ":" in host else host
        print(f"engine-sim listening on http://{shown}:{bound}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


def main(args: argparse.Namespace) -> int:
    """Serve the simulator until SIGINT/SIGTERM; return the process exit code."""
    try:
        host, port = parse_listen(args.listen)
        config = SimConfig(
            seconds=args.seconds,
            memory_mb=args.memory_mb,
            burn_cpu=not args.no_cpu,
            batch_size=args.batch_size,
        )
    except ValueError as exc:
        print(f"engine-sim: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(config, host, port))
    except KeyboardInterrupt:  # Ctrl+C before the signal handlers were installed
        return 0
