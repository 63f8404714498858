"""A tiny engine for the tests about bytes: it records what each request carried.

Its server never decompresses (``auto_decompress=False``), so ``Seen.body`` is
exactly the bytes that crossed the socket and ``Seen.headers`` the head that
came with them. A ``POST`` waits while ``hold`` is clear (a generation that
keeps its slot); a Gradio join is answered with an event id, as Gradio does.
``EchoEngine.serve`` runs it on a real port (gatekeeper processes reach it) and
``stop`` takes it down, so a test can restart it on the same port.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDictProxy


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: CIMultiDictProxy[str]
    body: bytes


class EchoEngine:
    def __init__(self, port: int = 0) -> None:
        self.port = port  # where ``serve`` listens
        self.seen: list[Seen] = []
        self.hold = asyncio.Event()
        self.hold.set()  # clear it to keep every POST running until it is set again
        self.arrived = asyncio.Event()  # set by each request but the probe's
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        """A new app on this engine's record (an aiohttp app runs only once)."""
        # Bodies of any size (a large body relayed between boxes: issue #21), not aiohttp's 1 MiB.
        app = web.Application(handler_args={"auto_decompress": False}, client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.method == "GET" and request.path == "/":
            return web.Response(text="up")  # the probe: not recorded
        self.seen.append(Seen(request.method, request.path_qs, request.headers, body))
        self.arrived.set()
        if request.path.endswith("/queue/join"):
            return web.json_response({"event_id": f"event-{len(self.seen)}"})
        if request.method == "POST":
            await self.hold.wait()
        return web.json_response({"n": len(self.seen), "sha256": hashlib.sha256(body).hexdigest()})

    def posts(self, prefix: str) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST" and s.path.startswith(prefix)]

    async def serve(self) -> str:
        runner = web.AppRunner(self.app(), handler_cancellation=True, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True).start()
        self._runner = runner
        return self.url

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
