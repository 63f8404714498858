"""One request as the access log tells it, plus the lifecycle marks the proxy needs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web


@dataclass(slots=True)
class RequestRecord:
    """What the access log says about one request."""

    request_id: str
    client: str | None
    method: str
    path: str
    route: str = "-"
    action: str = "-"
    # admitted|passed|rejected|blocked (vocab.Outcome; queued|coalesced on a queue
    # route), or gatekeeper's own endpoints: status|jobs
    decision: str = "-"
    reason: str | None = None
    status: int | None = None  # what the client got
    upstream_status: int | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    started: float = 0.0
    queue_seconds: float = 0.0  # arrival to the request leaving for the engine
    upstream_seconds: float | None = None
    # Request sent to the head of the engine's answer (a generation computes first).
    upstream_head_seconds: float | None = None
    total_seconds: float = 0.0
    client_gone: bool = False
    engine: str | None = None  # the engine a generation ran on (several engines: issue #11)
    # Lifecycle, not logged: the reload epoch held, the finish job, who logs the line
    # (the handler when it returns, else the finish job's end, or a Gradio event's).
    epoch: int = 0
    job: asyncio.Task[web.StreamResponse] | None = None
    handler_done: bool = False
    logged: bool = False
    # A Gradio join that started a gated event: its line is logged when the event ends
    # (``gradio.events``), with the whole generation's duration.
    deferred: bool = False


def answered(rec: RequestRecord, resp: web.StreamResponse) -> None:
    """The record says what the client gets: an answer built in memory (a refusal, an
    error, a Gradio join answered by gatekeeper) is logged with its own status and body
    size, whatever a step before decided on the way (a refusal told inside a Gradio
    stream is a 200 with a small JSON body, not the 503 it would otherwise have been).
    A streamed answer (prepared by the relay) counted its status and bytes itself."""
    if isinstance(resp, web.Response) and not resp.prepared:
        rec.status = resp.status
        body = resp.body
        if isinstance(body, bytes | bytearray):
            rec.bytes_out = len(body)


class RecordLog:
    """Hands a finished record to the access log, once, with its total duration."""

    def __init__(
        self, clock: Callable[[], float], on_record: Callable[[RequestRecord], None] | None
    ):
        self._clock = clock
        self._on_record = on_record

    def __call__(self, rec: RequestRecord) -> None:
        if rec.logged:
            return
        rec.logged = True
        rec.total_seconds = self._clock() - rec.started
        if self._on_record is not None:
            self._on_record(rec)
