"""gatekeeper's own side of a request: counting its outcome, refusing, answering errors.

One ``Responder`` is shared by the handler and the routes features plug in
(queue, Gradio), so a refusal is counted, recorded and rendered the same way
whichever route refuses: the outcome counter, the per-reason rejection counter,
the record's decision, reason and status, and a JSON body from ``responses``
(prebuilt per reason: a flood of refused retries costs almost nothing).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from gatekeeper.config import Config
from gatekeeper.core.admission import Gate
from gatekeeper.core.errors import HttpError, UpstreamError
from gatekeeper.core.plan import Refuse
from gatekeeper.core.vocab import ErrorKind, Outcome
from gatekeeper.proxy.context import RequestContext
from gatekeeper.proxy.expect import body_unread
from gatekeeper.proxy.ports import Counting
from gatekeeper.proxy.record import RequestRecord
from gatekeeper.proxy.responses import RefusalBodies, json_answer, json_error

log = logging.getLogger("gatekeeper.proxy")

# The reason code of a refusal for ``limits.max_spooled_bytes`` (``messages.spool_full``).
SPOOL_FULL = "spool_full"


def client_left(
    counters: Counting, route: str, rec: RequestRecord, when: str
) -> web.StreamResponse:
    """Record a client that went away before its answer; the 499 is never seen by anyone."""
    rec.client_gone = True
    rec.reason = ErrorKind.CLIENT_DISCONNECT
    counters.upstream_error(route, ErrorKind.CLIENT_DISCONNECT)
    log.info("client went away while %s: request_id=%s route=%s", when, rec.request_id, route)
    return web.Response(status=499)  # aiohttp drops it on the closed transport


class Responder:
    def __init__(self, counters: Counting, gate: Gate):
        self.counters = counters
        self._gate = gate  # a rejection's message may quote its live numbers
        self._bodies = RefusalBodies()

    def count(self, ctx: RequestContext, outcome: Outcome) -> None:
        """The request's admission outcome: on the record and in the counters."""
        ctx.rec.decision = outcome
        self.counters.request(ctx.route.name, outcome)

    def client_left(self, ctx: RequestContext, when: str) -> web.StreamResponse:
        return client_left(self.counters, ctx.route.name, ctx.rec, when)

    def refuse(self, ctx: RequestContext, refusal: Refuse) -> web.Response:
        """A refusal from the plan (or the gate, asked again): counted, answered from a
        prebuilt body."""
        cfg, route, rec = ctx.config, refusal.route, ctx.rec
        self._counted(ctx, refusal.outcome, refusal.reason)
        if refusal.detail is not None or refusal.reason == "blocked":
            body = self._bodies.body(
                cfg, refusal.reason, refusal.retry_after, refusal.detail, route=route.name
            )
        else:  # a rejection by the gate: its message may quote the live numbers
            gate = self._gate
            body = self._bodies.body(
                cfg,
                refusal.reason,
                refusal.retry_after,
                None,
                retry_after=refusal.retry_after,
                in_flight=gate.in_flight,
                max_in_flight=gate.limits.max_in_flight,
                **gate.resources.message_fields(),  # cpu_percent, memory_percent, ...
                route=route.name,
            )
        close = refusal.close or body_unread(ctx.request)
        return self._answer(rec, refusal.status, refusal.reason, body, refusal.retry_after, close)

    def refuse_waiting(
        self,
        ctx: RequestContext,
        status: int,
        reason: str,
        retry_after: int,
        fields: dict[str, Any],
    ) -> web.Response:
        """The waiting room said no (client_limit 429, queue_full 503): counted,
        explained with the queue's numbers (``fields``)."""
        self._counted(ctx, Outcome.REJECTED, reason)
        body = self._bodies.body(
            ctx.config,
            reason,
            retry_after,
            None,
            retry_after=retry_after,
            route=ctx.route.name,
            **fields,
        )
        close = body_unread(ctx.request)
        return self._answer(ctx.rec, status, reason, body, retry_after, close)

    def spool_full(self, ctx: RequestContext) -> web.Response:
        """``limits.max_spooled_bytes`` reached (``spool.SpoolFull``): 503 ``spool_full``,
        before the body is read when its length was declared, else where it was cut off."""
        retry_after = ctx.config.admission.retry_after_default
        refusal = Refuse(ctx.route, 503, SPOOL_FULL, Outcome.REJECTED, retry_after, close=True)
        return self.refuse(ctx, refusal)

    def error(self, cfg: Config, exc: HttpError, rec: RequestRecord) -> web.Response:
        """An ``HttpError`` raised anywhere on the request's path, answered and counted."""
        route = rec.route if rec.route != "-" else "default"
        rec.reason = exc.reason
        if isinstance(exc, UpstreamError):
            self.counters.upstream_error(route, exc.kind)
            log.warning(
                "upstream error: request_id=%s route=%s kind=%s status=%d: %s",
                rec.request_id,
                route,
                exc.kind,
                exc.status,
                exc.detail,
            )
            detail = cfg.message(exc.reason, route=route)
        else:
            if rec.decision == "-":  # refused before any admission decision was counted
                rec.decision = Outcome.REJECTED
                self.counters.request(route, Outcome.REJECTED)
            self.counters.rejection(route, exc.reason)
            detail = exc.detail
        resp = json_error(exc.status, exc.reason, detail, request_id=rec.request_id)
        if exc.status in (408, 413):
            # The rest of the body is unwanted: close after the answer (with a 1 s
            # lingering read, app.LINGER_SECONDS) instead of reading it for keep-alive.
            resp.force_close()
        rec.status = resp.status
        return resp

    def _counted(self, ctx: RequestContext, outcome: Outcome, reason: str) -> None:
        self.count(ctx, outcome)
        self.counters.rejection(ctx.route.name, reason)
        ctx.rec.reason = reason

    @staticmethod
    def _answer(
        rec: RequestRecord,
        status: int,
        reason: str,
        body: bytes,
        retry_after: int | None,
        close: bool,
    ) -> web.Response:
        resp = json_answer(
            status, reason, body, retry_after=retry_after, request_id=rec.request_id, close=close
        )
        rec.status = resp.status
        return resp
