"""A webhook receiver for the tests: an aiohttp app that verifies every delivery with the
``standardwebhooks`` reference library and records it, with switchable misbehaviour."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


@dataclass
class Received:
    msg_id: str
    event: str
    data: dict[str, Any]
    valid: bool
    status: int  # what the receiver answered
    at: float  # monotonic


@dataclass
class Receiver:
    """Records every attempt; answers ``status`` (503 while ``down``; a 200 after
    ``fail_first`` failed attempts of each id); sleeps ``sleep`` seconds when set."""

    secret: str
    down: bool = False
    fail_first: int = 0
    sleep: float = 0.0
    seen: list[Received] = field(default_factory=list)
    started: list[str] = field(default_factory=list)  # ids whose request began
    _tries: dict[str, int] = field(default_factory=dict)
    _runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        msg_id = headers.get("webhook-id", "")
        self.started.append(msg_id)
        if self.sleep:
            await asyncio.sleep(self.sleep)
        try:
            doc = Webhook(self.secret).verify(body, headers)
            valid = True
        except WebhookVerificationError:
            doc, valid = json.loads(body), False
        tries = self._tries[msg_id] = self._tries.get(msg_id, 0) + 1
        status = 503 if self.down or tries <= self.fail_first else 200
        self.seen.append(
            Received(msg_id, doc["type"], doc["data"], valid, status, time.monotonic())
        )
        return web.Response(status=status)

    def delivered(self, event: str | None = None) -> list[Received]:
        return [r for r in self.seen if r.status == 200 and (event is None or r.event == event)]

    async def start(self, port: int, path: str = "/hooks") -> str:
        app = web.Application()
        app.router.add_post(path + "{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}{path}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class Listener:
    """A bare TCP listener that counts connections (the URL that must never be fetched)."""

    def __init__(self) -> None:
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def start(self, port: int) -> None:
        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self._server = await asyncio.start_server(accepted, "127.0.0.1", port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
