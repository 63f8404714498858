"""The batch endpoints under ``{jobs_path}/batches`` (issue #20 §3).

=============================  ================================================
``GET    <id>``                the batch: n of N done, each item's job (state,
                               position, ETA, link): ``view.batch_view``
``DELETE <id>``                cancel its items still queued or running, as each
                               one's own ``DELETE`` would (never another's job)
``GET    <id>/results``        one JSON index of result links (``view``); with
                               ``?format=tar`` or ``Accept: application/x-tar``:
                               one tar of the stored answers, streamed from disk
                               (``archive``)
=============================  ================================================

A batch belongs to the client key that submitted it: to any other identity it
does not exist (404), like an unknown id; a batch id naming another box is 421
as for a job (``jobs.api``).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gatekeeper.config import Config
from gatekeeper.core.clientkey import client_key
from gatekeeper.core.headers import REQUEST_ID
from gatekeeper.jobs.api import storage_error_answer
from gatekeeper.jobs.batch import archive
from gatekeeper.jobs.batch.record import BatchRecord
from gatekeeper.jobs.batch.service import delete_batch, items_of
from gatekeeper.jobs.batch.view import batch_view, has_result, results_index
from gatekeeper.jobs.guard import StorageError
from gatekeeper.jobs.ids import is_job_id, routed_elsewhere
from gatekeeper.jobs.record import Headers
from gatekeeper.jobs.service import JobService
from gatekeeper.proxy.ports import Clock
from gatekeeper.proxy.responses import json_error

TAR = "application/x-tar"


def request_client(cfg: Config, request: web.BaseRequest) -> str:
    """The caller's client key, derived as for a queued request (``core.clientkey``)."""
    q = cfg.admission.queue
    return client_key(
        q.client_key,
        q.trusted_proxies,
        request.remote,
        request.headers,
        request.headers.getall("X-Forwarded-For", []),
    )


def batch_json(status: int, body: dict[str, Any], rid: str, **headers: str) -> web.Response:
    resp = web.json_response(body, status=status, dumps=lambda o: json.dumps(o, ensure_ascii=False))
    resp.headers["Cache-Control"] = "no-store"
    resp.headers[REQUEST_ID] = rid
    resp.headers.update(headers)
    return resp


def wants_tar(request: web.BaseRequest) -> bool | None:
    """``?format=tar`` or ``Accept: application/x-tar``: True; ``?format=json`` or
    nothing: False; another format: None (400)."""
    fmt = request.query.get("format")
    if fmt is not None:
        return {"tar": True, "json": False}.get(fmt)
    accept = request.headers.get("Accept", "")
    return any(a.split(";", 1)[0].strip().lower() == TAR for a in accept.split(","))


class BatchApi:
    def __init__(self, jobs: JobService, clock: Clock):
        self.jobs = jobs
        self.clock = clock

    async def __call__(
        self, request: web.BaseRequest, config: Config, rest: str, request_id: str
    ) -> web.StreamResponse:
        try:
            return await self._handle(request, config, rest, request_id)
        except StorageError:
            return storage_error_answer(config, request_id)

    async def _handle(
        self, request: web.BaseRequest, cfg: Config, rest: str, rid: str
    ) -> web.StreamResponse:
        parts = [p for p in rest.split("/") if p]
        if not parts or len(parts) > 2 or not is_job_id(parts[0]):
            return json_error(404, "not_found", "no such batch", request_id=rid)
        batch_id, sub = parts[0], parts[1] if len(parts) == 2 else ""
        methods = {"": ("GET", "HEAD", "DELETE"), "results": ("GET", "HEAD")}.get(sub)
        if methods is None:
            return json_error(404, "not_found", f"no such batch resource {sub!r}", request_id=rid)
        batch = self.jobs.store.get_batch(batch_id)
        if batch is None or batch.client != request_client(cfg, request):
            owner = routed_elsewhere(batch_id, cfg.box_id, cfg.jobs.store)
            if batch is None and owner is not None:
                detail = f"batch {batch_id} belongs to box {owner!r}, this is box {cfg.box_id!r}"
                return json_error(421, "misdirected", detail, request_id=rid)
            return json_error(404, "not_found", f"no batch {batch_id}", request_id=rid)
        if request.method not in methods:
            resp = json_error(
                405, "method_not_allowed", f"{request.method} is not allowed here", request_id=rid
            )
            resp.headers["Allow"] = ", ".join(methods)
            return resp
        base = cfg.jobs_path or ""
        if sub == "results":
            return await self._results(request, batch, base, rid)
        if request.method == "DELETE":
            delete_batch(self.jobs, batch)
        items = items_of(self.jobs, batch)
        return batch_json(200, batch_view(self.jobs, batch, items, self.clock(), base), rid)

    async def _results(
        self, request: web.BaseRequest, batch: BatchRecord, base: str, rid: str
    ) -> web.StreamResponse:
        tar = wants_tar(request)
        if tar is None:
            detail = f"format must be json or tar, not {request.query.get('format')!r}"
            return json_error(400, "bad_format", detail, request_id=rid)
        items = items_of(self.jobs, batch)
        index = results_index(batch, items, base)
        if not tar:
            return batch_json(200, index, rid)
        files = []
        for i, job in enumerate(items):
            path = self.jobs.store.result_path(job.id) if has_result(job) else None
            if path is not None and path.name == job.id:  # never a partial (.part) file
                ctype = _header(job.record.result_headers or (), "Content-Type")
                files.append((archive.member_name(i, job.id, ctype), path))
        out = web.StreamResponse(
            headers={
                "Content-Type": TAR,
                "Content-Disposition": f'attachment; filename="batch-{batch.id}.tar"',
                "Cache-Control": "no-store",
                REQUEST_ID: rid,
            }
        )
        await out.prepare(request)
        if request.method == "HEAD":
            return out
        data = json.dumps(index, ensure_ascii=False, indent=1).encode()
        try:
            for piece in archive.tar_chunks(data, files, batch.created):
                await out.write(piece)  # waits while the client is slow: bounded memory
            await out.write_eof()
        except ConnectionError:
            pass  # the client left mid-archive; nothing to clean up
        return out


def _header(headers: Headers, name: str) -> str | None:
    low = name.lower()
    return next((v for k, v in headers if k.lower() == low), None)
