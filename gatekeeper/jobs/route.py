"""A request on a ``queue`` route: checked, spooled, submitted, then held or answered 202.

1. ``Prefer`` and ``Idempotency-Key`` are checked (400 on a malformed one);
2. the client key is derived (``core.clientkey``);
3. the head alone decides a refusal when the body cannot change it (below);
4. the body is spooled into the state dir (hashed on the way for coalescing),
   within ``limits.max_spooled_bytes`` (``proxy.spool``: 503 ``spool_full``);
5. ``JobService.submit`` decides: refused (429 ``client_limit``, 503 ``queue_full``),
   attached to an identical job, a kept result, or a new job;
6. async (``Prefer: respond-async``): 202 + ``Location``; held: wait for the
   job's answer head (the client leaving the queue frees its place at once),
   then stream the result file as it grows.

**Refused from the head** (issue #18 §2: nothing is written for a request that
will be refused). ``submit`` tries coalescing before the waiting room's limits:
an identical request attaches to a live job, or replays a kept result, even
from a client at ``per_client`` or into a full queue. The body enters only the
coalescing key, so ``JobService.refusal_before_body`` answers the refusal
before a byte of the body is read (and instead of ``100 Continue``:
``proxy.expect``) exactly when

- the waiting room refuses this client now (every reason of
  ``JobService._refusal``: ``client_limit``, ``queue_full``, and any reason
  added there), and
- no body could make it coalesce: ``jobs.coalesce`` is off; or, with an
  ``Idempotency-Key`` (the key is then the head's alone), no live job and no
  kept result has that key; or, without one, no live job and no kept 2xx
  result has this route, method and path and (when the head tells the body's
  length: a ``Content-Length`` without ``Content-Encoding``) that body length
  (``head.RequestHead.may_match``, an over-approximation of the key).

Otherwise the body is read and ``submit`` decides as before. The answer is the
one ``submit`` gives (status, reason, Retry-After, JSON fields); the
connection closes after it when the body was not read.

Headers ``X-Gatekeeper-Job: <id>`` (held answers too, so a client that times
out can fetch the result later) and ``X-Gatekeeper-Coalesced: 1``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from gatekeeper.config import Config
from gatekeeper.core.errors import BadRequest
from gatekeeper.core.headers import upstream_request_headers
from gatekeeper.core.vocab import JobState, Outcome
from gatekeeper.jobs import held
from gatekeeper.jobs.anybox import AnyBox
from gatekeeper.jobs.api import JobsApi, job_json, storage_error_answer
from gatekeeper.jobs.guard import StorageError
from gatekeeper.jobs.handle_view import given_view
from gatekeeper.jobs.head import RequestHead
from gatekeeper.jobs.ids import (
    BadHeader,
    check_idempotency_key,
    coalesce_key,
    id_prefix,
    new_job_id,
    vary_headers,
    vary_values,
    wants_async,
)
from gatekeeper.jobs.listing import caller_key
from gatekeeper.jobs.model import Job, Joined, Kept, Refused
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.service import JobService
from gatekeeper.jobs.webhooks.request import own_webhook, without_webhook_headers
from gatekeeper.proxy.connections import Connections
from gatekeeper.proxy.context import RequestContext
from gatekeeper.proxy.expect import send_continue
from gatekeeper.proxy.handler import JobsHandler
from gatekeeper.proxy.ports import Clock
from gatekeeper.proxy.respond import Responder
from gatekeeper.proxy.spool import SpoolBudget, take_body
from gatekeeper.upstream import ClientGone

# The proxy's logger: a job's failure is told where the admit route tells its own.
log = logging.getLogger("gatekeeper.proxy")

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

# A held client whose connection closed is noticed at once through the connection
# table (``proxy.connections``); without one (in-process tests) by polling its transport.
POLL_SECONDS = 0.5


class JobsEndpoint:
    """The async-job endpoints under ``jobs_path``, as the proxy handler calls them;
    ``batches``: those under ``jobs_path/batches`` (``jobs.batch.api``)."""

    def __init__(
        self,
        jobs: JobService,
        clock: Clock,
        batches: JobsHandler | None = None,
        anybox: AnyBox | None = None,
    ):
        self.jobs = jobs
        self.clock = clock
        self.batches = batches
        self.anybox = anybox  # results kept on another box of a shared store (issue #21)

    async def __call__(
        self, request: web.BaseRequest, config: Config, rest: str, request_id: str
    ) -> web.StreamResponse:
        if self.batches is not None and (rest == "/batches" or rest.startswith("/batches/")):
            return await self.batches(request, config, rest[len("/batches") :], request_id)
        api = JobsApi(self.jobs, config.jobs_path or "", self.clock, self.anybox)
        return await api.handle(request, rest, request_id)


class QueueRoute:
    def __init__(
        self,
        jobs: JobService,
        clock: Clock,
        respond: Responder,
        budget: SpoolBudget,
        conns: Connections | None = None,
        anybox: AnyBox | None = None,
    ):
        self.jobs = jobs
        self.clock = clock
        self.respond = respond
        self.budget = budget  # limits.max_spooled_bytes, shared with every route that spools
        self.conns = conns
        # A shared store's relay: a held client's job another box ran (issue #21).
        self.anybox = anybox

    async def handle(self, ctx: RequestContext) -> web.StreamResponse:
        try:
            return await self._handle(ctx)
        except StorageError as exc:
            log.error("request %s: %s", ctx.rec.request_id, exc.detail)
            ctx.rec.reason = exc.reason
            ctx.rec.status = 503
            return storage_error_answer(ctx.config, ctx.rec.request_id, exc)

    async def _handle(self, ctx: RequestContext) -> web.StreamResponse:
        request, cfg, route, rec, jobs = ctx.request, ctx.config, ctx.route, ctx.rec, self.jobs
        try:
            want_async = wants_async(request.headers.getall("Prefer", []))
            idem = check_idempotency_key(request.headers.getall("Idempotency-Key", []))
        except BadHeader as exc:
            raise BadRequest(f"{exc.header}: {exc.detail}", reason="bad_header") from exc
        want_async = want_async and cfg.jobs_path is not None
        webhook = own_webhook(request.headers, cfg.jobs.webhooks)  # 400 before the body
        client = caller_key(cfg, request)  # the key GET <jobs_path> lists under (listing)
        full = jobs.storage_refusal(self.clock())  # from the head: nothing is written
        if full is not None:
            return self.respond.refuse_waiting(
                ctx, full.status, full.reason, full.retry_after, full.fields
            )
        early = jobs.refusal_before_body(self._head(ctx, client, idem))
        if early is not None:  # the same answer submit would give, the body unread
            return self.respond.refuse_waiting(
                ctx, early.status, early.reason, early.retry_after, early.fields
            )
        # Every job has its body, an empty one included: an empty body is a body, and a
        # job without its body file is lost at the next start (issue #18 §5).
        try:
            spool = await take_body(
                request.content.iter_any() if request.body_exists else _no_body(),
                max_bytes=cfg.limits.max_body_bytes,
                idle_timeout=cfg.limits.client_body_timeout,
                deadline=cfg.limits.client_body_deadline,
                memory_limit=cfg.limits.spool_memory_bytes,
                directory=jobs.spool_dir,
                digest=True,
                budget=self.budget,
                declared=request.content_length,
                before_read=lambda: send_continue(request),
            )
        except ClientGone:
            return self.respond.client_left(ctx, "sending the request body")
        except OSError as exc:
            if isinstance(exc, ConnectionError):
                raise
            raise StorageError("spooling the request body", exc) from exc
        rec.bytes_in = spool.size
        try:
            key = None
            if cfg.jobs.coalesce and webhook is None:  # its own webhook: its own job
                # The bytes as the client sent them and the engine gets them (a gzip body
                # is not decoded: issue #18 §4).
                key = _key(ctx, client, idem, spool.sha256)
            headers = upstream_request_headers(
                request.headers,
                client_ip=request.remote,
                scheme=request.scheme,
                request_id=rec.request_id,
            )
            arrival = JobRecord(
                id=new_job_id(id_prefix(cfg.box_id, cfg.jobs.store)),
                route=route.name,
                client=client,
                held=not want_async,
                method=request.method,
                target=request.raw_path,
                headers=without_webhook_headers(headers.items()),
                coalesce_key=key,
                body_size=spool.size,
                webhook=webhook,
            )
            result = jobs.submit(arrival, spool.save)
        finally:
            spool.close()
        if isinstance(result, Refused):
            return self.respond.refuse_waiting(
                ctx, result.status, result.reason, result.retry_after, result.fields
            )
        coalesced = not isinstance(result, Joined) or result.coalesced
        # The outcome is decided at arrival: started at once, waiting, or attached.
        if coalesced:
            outcome = Outcome.COALESCED
        elif isinstance(result, Joined) and result.job.state == JobState.RUNNING:
            outcome = Outcome.ADMITTED
        else:
            outcome = Outcome.QUEUED
        self.respond.count(ctx, outcome)
        base = cfg.jobs_path or ""
        now = self.clock()
        extra = {"X-Gatekeeper-Coalesced": "1"} if coalesced else {}
        if isinstance(result, Kept):
            if want_async:
                view = given_view(jobs, result.job, result.handle, now, base)
                rec.status = 202
                return job_json(202, view, rec.request_id, Location=view["links"]["self"], **extra)
            return await held.replay_kept(jobs, ctx, result)
        job = result.job
        if want_async:
            view = given_view(jobs, job, result.handle, now, base)
            rec.status = 202
            return job_json(202, view, rec.request_id, Location=view["links"]["self"], **extra)
        return await self._hold(ctx, job, coalesced, result.handle)

    @staticmethod
    def _head(ctx: RequestContext, client: str, idem: str | None) -> RequestHead:
        """What the head says of the job this request would make (``head``)."""
        request, cfg, route = ctx.request, ctx.config, ctx.route
        path = request.raw_path.partition("?")[0]
        key = None
        if idem is not None and cfg.jobs.coalesce:  # the key is the head's alone (ids)
            key = _key(ctx, client, idem, EMPTY_SHA256)
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        size: int | None = request.content_length if encoding in ("", "identity") else None
        if not request.body_exists:
            size = 0
        return RequestHead(client, route.name, request.method, path, size, key)

    # ------------------------------------------------------------------ held clients

    async def _hold(
        self, ctx: RequestContext, job: Job, coalesced: bool, handle: str
    ) -> web.StreamResponse:
        """Wait for the answer head, then stream it; ``handle`` is this client's own id."""
        request, rec, jobs = ctx.request, ctx.rec, self.jobs
        gone: list[bool] = []

        def lost() -> None:
            gone.append(True)
            job.notify()

        conns = self.conns
        undo = conns.watch_lost(request.protocol, lost) if conns is not None else None
        attached = True
        try:
            while job.head is None and not job.final:
                ev = job.changed()
                if gone or _transport_gone(request):
                    jobs.detach(job, handle)
                    attached = False
                    where = (
                        "waiting in the queue"
                        if job.state == JobState.QUEUED
                        else ("waiting for the upstream response")
                    )
                    return self.respond.client_left(ctx, where)
                try:
                    async with asyncio.timeout(POLL_SECONDS):
                        await ev.wait()
                except TimeoutError:
                    pass
            rec.queue_seconds = (
                (job.started - job.arrived)
                if job.started is not None
                else self.clock() - job.arrived
            )
            if job.ticket is not None:
                rec.engine = job.ticket.engine
            if job.head is None and job.state is JobState.DONE and self.anybox is not None:
                # Another box's engine ran it (a shared queue): its answer is relayed.
                place = self.anybox.shared.result_place(job.id)
                if place is not None and place.box != self.anybox.shared.box:
                    resp = await self.anybox.relay(
                        request, place, handle, rec.request_id, held=True
                    )
                    rec.status = rec.upstream_status = resp.status
                    return resp
            if job.head is None:
                return held.job_error(jobs, self.clock, ctx, job, handle)
            return await held.stream(jobs, ctx, job, coalesced, handle)
        finally:
            if undo is not None:
                undo()
            if attached:
                jobs.detach(job, handle)


def _key(ctx: RequestContext, client: str, idem: str | None, body_sha256: str) -> str:
    """The request's coalescing key (``ids.coalesce_key``), the one place it is made: after
    the body, and from the head alone when an ``Idempotency-Key`` makes the body moot."""
    request = ctx.request
    return coalesce_key(
        ctx.route.name,
        request.method,
        # The target exactly as forwarded: the engine sees /generate/ and /generate as
        # different paths (and may answer one 404), so they are different generations.
        request.raw_path.partition("?")[0],
        request.query_string,
        body_sha256,
        idem,
        **_identity(ctx.config, request, client, idem),
    )


def _identity(
    cfg: Config, request: web.BaseRequest, client: str, idem: str | None
) -> dict[str, Any]:
    """Who a coalescing key is for (issue #18 §3): the client key (kept for an
    Idempotency-Key, dropped only with ``jobs.coalesce_across_clients``) and the values
    of the ``jobs.coalesce_vary`` headers."""
    q = cfg.admission.queue
    names = vary_headers(
        cfg.jobs.coalesce_vary, q.client_key.header if q.client_key.source == "header" else None
    )
    shared = cfg.jobs.coalesce_across_clients and idem is None
    return {
        "client": "" if shared else client,
        "vary": vary_values(names, lambda name: request.headers.getall(name, [])),
    }


def _transport_gone(request: web.BaseRequest) -> bool:
    t = request.transport
    return t is None or t.is_closing()


async def _no_body() -> AsyncIterator[bytes]:
    return
    yield  # an async generator that yields nothing
