"""What a held client of a ``queue`` route gets: the job's answer streamed from its
result file as it grows, a kept answer replayed, or why the job ended first.

Every answer names the requester's own handle (``X-Gatekeeper-Job``: issue #18
§3); one that ended before the engine's answer began says why as the admit route
would, from the job's ``states.Ending`` (status, reason, Retry-After policy).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from gatekeeper.core.headers import REQUEST_ID, end_to_end
from gatekeeper.jobs.model import Job, Kept, ResultBroken
from gatekeeper.jobs.runner import follow
from gatekeeper.jobs.service import JobService
from gatekeeper.jobs.states import RetryAfter
from gatekeeper.proxy.context import RequestContext
from gatekeeper.proxy.ports import Clock
from gatekeeper.proxy.responses import json_error

# The proxy's logger: a job's failure is told where the admit route tells its own.
log = logging.getLogger("gatekeeper.proxy")


def job_error(
    jobs: JobService, clock: Clock, ctx: RequestContext, job: Job, handle: str
) -> web.Response:
    """The job ended before the engine answered: say why, as the admit route would
    (its ending's reason, status and Retry-After policy: ``states.Endings``)."""
    cfg, route, rec = ctx.config, ctx.route, ctx.rec
    assert job.ending is not None
    ending = job.ending
    reason = ending.reason or "internal"
    status = ending.status or 503
    retry_after: int | None = None
    if ending.retry_after is RetryAfter.QUEUE:
        retry_after = jobs.schedule.retry_after_timeout(clock())
    elif ending.retry_after is RetryAfter.DEFAULT:
        retry_after = cfg.admission.retry_after_default
    q = cfg.admission.queue
    detail = job.error_detail if ending.engine_failed and job.error_detail else None
    text = cfg.message(
        reason,
        route=route.name,
        retry_after=retry_after or 0,
        max_wait=int(q.max_wait),
        waiting=jobs.schedule.waiting(),
        max_waiting=q.max_waiting,
        per_client=q.per_client,
    )
    if ending.engine_failed:
        text = cfg.message(reason, route=route.name)
        if detail:
            log.info("job %s… failed: %s", job.id[:6], detail)
    resp = json_error(status, reason, text, retry_after=retry_after, request_id=rec.request_id)
    resp.headers["X-Gatekeeper-Job"] = handle
    rec.reason = reason
    rec.status = status
    return resp


async def stream(
    jobs: JobService, ctx: RequestContext, job: Job, coalesced: bool, handle: str
) -> web.StreamResponse:
    """The job's answer as it grows in its result file, to a held client."""
    request, cfg, rec = ctx.request, ctx.config, ctx.rec
    assert job.head is not None
    status, reason, pairs = job.head
    out = web.StreamResponse(status=status, reason=reason or None)
    out.headers.extend(_cim(pairs))
    out.headers[REQUEST_ID] = rec.request_id
    out.headers["X-Gatekeeper-Job"] = handle
    if coalesced:
        out.headers["X-Gatekeeper-Coalesced"] = "1"
    rec.upstream_status = status
    send_timeout = cfg.limits.client_send_timeout
    try:
        async with asyncio.timeout(send_timeout):
            await out.prepare(request)
        async for chunk in follow(jobs.store, job):
            rec.bytes_out += len(chunk)
            async with asyncio.timeout(send_timeout):
                await out.write(chunk)
        async with asyncio.timeout(send_timeout):
            await out.write_eof()
        rec.status = status
        if job.started is not None and job.finished is not None:
            rec.upstream_seconds = job.finished - job.started  # the engine's whole answer
    except ResultBroken as exc:
        rec.reason = job.reason or "upstream_mid_body"
        log.warning(
            "job %s… answer broke off (%s): aborting the client connection", job.id[:6], exc
        )
        if request.transport is not None:
            request.transport.abort()
    except (ConnectionError, TimeoutError) as exc:
        rec.client_gone = True
        rec.reason = "client_stalled" if isinstance(exc, TimeoutError) else "client_disconnect"
        if request.transport is not None:
            request.transport.abort()
    return out


async def replay_kept(jobs: JobService, ctx: RequestContext, kept: Kept) -> web.StreamResponse:
    """A retry of a request whose answer is kept: the stored answer, from disk."""
    request, rec = ctx.request, ctx.rec
    row = kept.job.record
    path = jobs.store.result_path(row.id)
    assert row.result_status is not None
    out = web.StreamResponse(status=row.result_status, reason=row.result_reason)
    out.headers.extend(end_to_end(_cim(row.result_headers or ())))
    out.headers[REQUEST_ID] = rec.request_id
    out.headers["X-Gatekeeper-Job"] = kept.handle
    out.headers["X-Gatekeeper-Coalesced"] = "1"
    rec.upstream_status = row.result_status
    try:
        await out.prepare(request)
        if path is not None:
            with open(path, "rb") as f:  # noqa: ASYNC230 - page-cache reads, as spool.py
                while chunk := f.read(256 * 1024):
                    rec.bytes_out += len(chunk)
                    await out.write(chunk)
        await out.write_eof()
        rec.status = row.result_status
    except ConnectionError:
        rec.client_gone = True
    return out


def _cim(pairs: Any) -> CIMultiDict[str]:
    return CIMultiDict(list(pairs))
