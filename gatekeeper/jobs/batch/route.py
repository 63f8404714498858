"""``POST`` on a ``batch`` route: the engine's batch body becomes N queued jobs.

1. the client key is derived (``core.clientkey``), as for a queued request;
2. ``storage_full`` is answered from the head (nothing is read);
3. the body is read whole, within ``batch.max_bytes`` (413 at pointer ``""``
   before a byte is read when ``Content-Length`` says so), and the spool budget
   (``limits.max_spooled_bytes``); a ``Content-Encoding`` other than identity
   is 415 (the items are cut from the JSON, so it is decoded here, never
   relayed);
4. ``items.cut``: 400/413 with the JSON pointer that failed (``BatchProblem``);
5. one job per item on the ``each`` route (its body the item's JSON, its
   headers the batch request's, ``Content-Type: application/json``), queued
   whole or refused whole (``service.submit_batch``: 429 ``client_limit`` past
   ``batch.per_client``);
6. ``202`` with ``Location: {jobs_path}/batches/<id>`` and the batch's JSON.

The request is always async: a batch of 5-15-minute songs is never held open.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web

from gatekeeper.core.errors import BodyTooLarge
from gatekeeper.core.headers import upstream_request_headers
from gatekeeper.core.vocab import Outcome
from gatekeeper.jobs.api import storage_error_answer
from gatekeeper.jobs.batch.api import batch_json, request_client
from gatekeeper.jobs.batch.items import BatchProblem, cut
from gatekeeper.jobs.batch.record import BatchRecord
from gatekeeper.jobs.batch.service import CapReached, submit_batch
from gatekeeper.jobs.batch.view import batch_view
from gatekeeper.jobs.guard import StorageError
from gatekeeper.jobs.ids import id_prefix, new_job_id
from gatekeeper.jobs.model import Refused
from gatekeeper.jobs.record import JobRecord
from gatekeeper.jobs.service import JobService
from gatekeeper.proxy.context import RequestContext
from gatekeeper.proxy.expect import send_continue
from gatekeeper.proxy.ports import Clock
from gatekeeper.proxy.respond import Responder
from gatekeeper.proxy.responses import json_answer, json_error
from gatekeeper.proxy.spool import SpoolBudget, take_body
from gatekeeper.upstream import ClientGone

log = logging.getLogger("gatekeeper.proxy")

# The batch request's headers that do not describe an item's body.
_NOT_COPIED = frozenset(
    {"content-length", "content-encoding", "content-type", "prefer", "idempotency-key", "expect"}
)


def problem_answer(p: BatchProblem, rid: str) -> web.Response:
    """A refused batch body: ``detail``, ``reason`` and the JSON ``pointer`` that failed."""
    body = {"detail": p.detail, "reason": p.reason, "pointer": p.pointer}
    data = json.dumps(body, ensure_ascii=False).encode()
    return json_answer(p.status, p.reason, data, request_id=rid, close=p.status == 413)


class BatchRoute:
    def __init__(self, jobs: JobService, clock: Clock, respond: Responder, budget: SpoolBudget):
        self.jobs = jobs
        self.clock = clock
        self.respond = respond
        self.budget = budget

    async def handle(self, ctx: RequestContext) -> web.StreamResponse:
        try:
            return await self._handle(ctx)
        except StorageError as exc:
            log.error("request %s: %s", ctx.rec.request_id, exc.detail)
            ctx.rec.reason, ctx.rec.status = exc.reason, 503
            return storage_error_answer(ctx.config, ctx.rec.request_id)

    def _refused(self, ctx: RequestContext, answer: web.Response, reason: str) -> web.Response:
        self.respond.count(ctx, Outcome.REJECTED)
        ctx.rec.reason, ctx.rec.status = reason, answer.status
        return answer

    async def _handle(self, ctx: RequestContext) -> web.StreamResponse:
        request, cfg, route, rec, jobs = ctx.request, ctx.config, ctx.route, ctx.rec, self.jobs
        spec, rid = route.batch, rec.request_id
        client = request_client(cfg, request)
        full = jobs.storage_refusal(self.clock())
        if full is not None:
            return self._waiting(ctx, full)
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            detail = f"a batch body is read as JSON: Content-Encoding {encoding!r} is not accepted"
            answer = json_error(415, "unsupported_encoding", detail, request_id=rid)
            answer.force_close()  # the body is not read
            return self._refused(ctx, answer, "unsupported_encoding")
        too_big = BatchProblem(
            413, "body_too_large", "", f"the batch body exceeds batch.max_bytes ({spec.max_bytes})"
        )
        if request.content_length is not None and request.content_length > spec.max_bytes:
            return self._refused(ctx, problem_answer(too_big, rid), too_big.reason)
        try:
            spool = await take_body(
                request.content.iter_any(),
                max_bytes=spec.max_bytes,
                idle_timeout=cfg.limits.client_body_timeout,
                deadline=cfg.limits.client_body_deadline,
                memory_limit=spec.max_bytes + 1,  # whole in memory: it is cut as JSON
                budget=self.budget,
                declared=request.content_length,
                before_read=lambda: send_continue(request),
            )
        except BodyTooLarge:
            return self._refused(ctx, problem_answer(too_big, rid), too_big.reason)
        except ClientGone:
            return self.respond.client_left(ctx, "sending the batch body")
        try:
            rec.bytes_in = spool.size
            body = spool.memory() or b""
        finally:
            spool.close()
        try:
            bodies = cut(body, spec, cfg.limits.max_body_bytes)
        except BatchProblem as p:
            return self._refused(ctx, problem_answer(p, rid), p.reason)
        each = ctx.runtime.router.match("POST", spec.each)  # a queue route (config checks)
        headers = upstream_request_headers(
            request.headers, client_ip=request.remote, scheme=request.scheme, request_id=rid
        )
        copied = [(k, v) for k, v in headers.items() if k.lower() not in _NOT_COPIED]
        copied.append(("Content-Type", "application/json"))
        box = id_prefix(cfg.box_id, cfg.jobs.store)
        batch = BatchRecord(new_job_id(box), client, route.name, 0.0, len(bodies))
        items = [(_item(box, batch.id, each.name, client, spec.each, copied, b), b) for b in bodies]
        result = submit_batch(jobs, batch, items, spec)
        if isinstance(result, Refused):
            return self._waiting(ctx, result)
        if isinstance(result, CapReached):
            detail = (
                f"you have {result.open_items} batch item(s) queued or running and this batch"
                f" has {result.asked}: at most {result.cap} at once (batch.per_client); submit"
                f" it when some are done (in about {result.refused.retry_after} s)"
            )
            r = result.refused
            answer = json_error(429, r.reason, detail, retry_after=r.retry_after, request_id=rid)
            return self._refused(ctx, answer, r.reason)
        self.respond.count(ctx, Outcome.QUEUED)
        stored = jobs.store.get_batch(batch.id) or batch
        base = cfg.jobs_path or ""
        view = batch_view(jobs, stored, result, self.clock(), base)
        rec.status = 202
        return batch_json(202, view, rid, Location=view["links"]["self"])

    def _waiting(self, ctx: RequestContext, r: Refused) -> web.Response:
        return self.respond.refuse_waiting(ctx, r.status, r.reason, r.retry_after, r.fields)


def _item(
    box: str | None,
    batch_id: str,
    route: str,
    client: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes,
) -> JobRecord:
    return JobRecord(
        id=new_job_id(box),
        route=route,
        client=client,
        held=False,
        method="POST",
        target=target,
        headers=tuple(headers),
        coalesce_key=None,
        body_size=len(body),
        batch=batch_id,
    )
