"""An ``admit`` route's request: the body spooled, a lease taken, the exchange relayed.

The body is taken whole first (``spool``): a slow upload never holds the slot,
and the engine only starts work whose input is complete. Then the gate is asked
again and the lease taken in the same synchronous step (the slot may have gone
while the body came in). Who holds the lease (``core.lease``):

- ``admission.on_client_disconnect: cancel``: this step, for the whole exchange;
  a client that leaves cancels the exchange and frees the slot at once;
- ``finish``: the exchange runs in a task of its own, which holds the lease;
  nothing that happens to the handler's task (the client leaving, a server
  that cancels handlers, shutdown) frees the slot while the engine computes.

A Gradio route's direct call (``direct_calls: admit``) comes here too, with its
body already taken (``spooled``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from gatekeeper.core.admission import Rejection
from gatekeeper.core.plan import rejected
from gatekeeper.core.vocab import Outcome
from gatekeeper.proxy.context import RequestContext
from gatekeeper.proxy.expect import send_continue
from gatekeeper.proxy.ports import ProxyPorts
from gatekeeper.proxy.record import RecordLog, RequestRecord
from gatekeeper.proxy.relay import Relay
from gatekeeper.proxy.respond import Responder
from gatekeeper.proxy.spool import Spool, SpoolBudget, take_body
from gatekeeper.upstream import ClientGone


class Admit:
    def __init__(
        self, ports: ProxyPorts, respond: Responder, log_record: RecordLog, budget: SpoolBudget
    ):
        self.ports = ports
        self.respond = respond
        self.log_record = log_record
        self.budget = budget

    async def __call__(self, ctx: RequestContext) -> web.StreamResponse:
        limits, request = ctx.config.limits, ctx.request
        spool: Spool | None = None
        if request.body_exists:
            try:
                spool = await take_body(
                    request.content.iter_any(),
                    max_bytes=limits.max_body_bytes,
                    idle_timeout=limits.client_body_timeout,
                    deadline=limits.client_body_deadline,
                    memory_limit=limits.spool_memory_bytes,
                    budget=self.budget,
                    declared=request.content_length,
                    before_read=lambda: send_continue(request),
                )
            except ClientGone:
                return self.respond.client_left(ctx, "sending the request body")
        return await self.spooled(ctx, spool)

    async def spooled(self, ctx: RequestContext, spool: Spool | None) -> web.StreamResponse:
        """Admit a request whose body is taken (``spool``, closed on every path)."""
        ports, cfg, rec = self.ports, ctx.config, ctx.rec
        result = ports.gate.try_admit(ctx.route.name, ports.clock())
        if isinstance(result, Rejection):  # the slot went to someone else meanwhile
            if spool is not None:
                spool.close()
            return self.respond.refuse(ctx, rejected(ctx.route, result, cfg))
        lease = result
        # The relay closes the spool when it ends; the lease's holder closes it again
        # (idempotent) in case the relay never ran.
        job: asyncio.Task[web.StreamResponse] | None = None
        try:
            with lease:  # released on leaving, unless the finish task took it over
                self.respond.count(ctx, Outcome.ADMITTED)
                rec.engine = lease.engine
                # The gate picks from the live rules; this request's runtime is the one of
                # its arrival, and a reload while its body was spooled may have added the
                # engine picked (or renamed the one engine). The live runtime then has its
                # pool, and a pool of the newest runtime is never retired under a request.
                rt = ctx.runtime if lease.engine in ctx.runtime.engines else ports.rules.runtime
                relay = Relay(ports, ctx, rt.gated_for(lease.engine), lease=lease, spool=spool)
                if cfg.admission.on_client_disconnect == "cancel":
                    return await relay.run()
                # ``finish``: the task holds the lease, and the rules' epoch too, so a
                # reload never closes its pool under it.
                job = asyncio.create_task(relay.run())
                lease.follow(job, "finish-relay")  # first: the slot frees before the rest
                job.add_done_callback(self._job_done(rec, spool))
        finally:
            if job is None and spool is not None:
                spool.close()
        ports.epochs.join(rec.epoch)
        rec.job = job
        return await asyncio.shield(job)

    def _job_done(
        self, rec: RequestRecord, spool: Spool | None
    ) -> Callable[[asyncio.Task[web.StreamResponse]], None]:
        """The end of a ``finish`` exchange, once its lease's callback freed the slot:
        the spool (should the task have been cancelled before it ever ran), the epoch,
        and the access-log line if the handler already returned."""

        def done(job: asyncio.Task[web.StreamResponse]) -> None:
            if spool is not None:
                spool.close()
            self.ports.epochs.leave(rec.epoch)
            if not job.cancelled():
                job.exception()  # retrieved: the handler may be gone and never await it
            if rec.handler_done:
                self.log_record(rec)

        return done
