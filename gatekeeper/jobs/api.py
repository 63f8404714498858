"""The async-job endpoints under ``jobs_path`` (default ``/_gatekeeper/jobs``).

=========================  ====================================================
``GET    (jobs_path)``     the caller's own jobs, newest first, paginated
                           (``listing``: its client key's handles; ``jobs.listing``)
``GET    openapi.json``    the OpenAPI 3.1 document of this API (``openapi``)
``GET    <id>``            the job: state, position, ETA, waited, elapsed, progress
``GET    <id>/events``     the same as SSE, one ``job`` event per change (progress
                           and ETA changes included, at most 2 a second: ``watch``);
                           ends at a final state (``: keep-alive`` when quiet 15 s)
``GET    <id>/result``     the engine's stored answer replayed (status, end-to-end
                           headers, body from disk; ``Range`` on a 200: ``replay``);
                           409 with the state before it is done, 410 once expired
                           or when its file is gone
``DELETE <id>``            let go of the job: this id only, when other requests
                           hold the same job (coalesced: each has its own id);
                           by the last holder: queued -> removed; running -> per
                           ``admission.on_client_disconnect`` (cancel: stopped now;
                           finish: the engine finishes, the result is discarded)
=========================  ====================================================

``<id>`` is a handle (``handles``): the job's own id for the request that created
it, a fresh one for each request coalesced onto it or given its kept result, so
no answer carries another submitter's id.

A job id (144 random bits) is the only capability to read a result: the only
listing on the public port is a caller's own (``listing``), an unknown or
malformed id is a plain 404, except an id naming another box
(``<box>.<token>``, issue #11 §2): 421 misdirected. With a store every box shares
(``jobs.store: postgres``, issue #21) ids name no box and every box answers for
every job: one another box holds is read from the store, its result relayed from
the box that produced it, its ``DELETE`` left as a request for its holder
(``anybox``); ``relay_endpoint`` is that relay's end on the admin listener.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from gatekeeper.config import Config
from gatekeeper.core.headers import REQUEST_ID, end_to_end
from gatekeeper.core.vocab import FINAL_STATES, JobState
from gatekeeper.jobs import listing, openapi, watch
from gatekeeper.jobs.anybox import FOREIGN_LOOK, AnyBox, delete_foreign, foreign
from gatekeeper.jobs.bodyrelay import body_endpoint
from gatekeeper.jobs.guard import StorageError, StoreUnavailable, describe
from gatekeeper.jobs.handle_view import DELETED, handle_view, let_go_alone
from gatekeeper.jobs.handles import Handle
from gatekeeper.jobs.ids import BOX_SEPARATOR, is_job_id, routed_elsewhere
from gatekeeper.jobs.model import Job
from gatekeeper.jobs.replay import served
from gatekeeper.jobs.service import JobService
from gatekeeper.jobs.states import kept_whole
from gatekeeper.proxy.responses import json_answer, json_body, json_error

KEEPALIVE_SECONDS = 15.0
# Replayed from the stored answer, never from the file's own framing.
_NOT_REPLAYED = ("Content-Length", "Transfer-Encoding")


def _answer(status: int, reason: str, detail: str, rid: str, **extra: Any) -> web.Response:
    body = json.loads(json_body(detail, reason, None))
    body.update(extra)
    data = json.dumps(body, ensure_ascii=False).encode()
    return json_answer(status, reason, data, request_id=rid)


def storage_error_answer(cfg: Config, rid: str, exc: StorageError | None = None) -> web.Response:
    """The state directory failed under this request (``guard.StorageError``, logged where
    it happened): 503 storage_error in JSON, never aiohttp's text/plain 500; a shared
    store that does not answer (``guard.StoreUnavailable``): 503 store_unavailable, with
    the Retry-After of its breaker."""
    reason, retry_after = "storage_error", cfg.admission.retry_after_default
    if isinstance(exc, StoreUnavailable):
        reason, retry_after = exc.reason, exc.retry_after
    text = cfg.message(reason, retry_after=retry_after)
    return json_error(503, reason, text, retry_after=retry_after, request_id=rid)


def job_json(status: int, view: dict[str, Any], rid: str, **headers: str) -> web.Response:
    resp = web.json_response(view, status=status, dumps=lambda o: json.dumps(o, ensure_ascii=False))
    resp.headers["Cache-Control"] = "no-store"
    resp.headers[REQUEST_ID] = rid
    resp.headers["X-Gatekeeper-Job"] = view["id"]
    resp.headers.update(headers)
    return resp


class JobsApi:
    def __init__(self, jobs: JobService, base: str, clock: Any, anybox: AnyBox | None = None):
        self.jobs = jobs
        self.base = base
        self.clock = clock
        self.anybox = anybox  # a shared store's relay: results kept on another box

    async def handle(self, request: web.BaseRequest, rest: str, rid: str) -> web.StreamResponse:
        try:
            return await self._handle(request, rest, rid)
        except StorageError as exc:
            return storage_error_answer(self.jobs.config, rid, exc)

    async def _handle(self, request: web.BaseRequest, rest: str, rid: str) -> web.StreamResponse:
        parts = [p for p in rest.split("/") if p]
        if not parts or parts == [openapi.DOCUMENT]:
            if request.method not in ("GET", "HEAD"):
                resp = _answer(
                    405, "method_not_allowed", f"{request.method} is not allowed here", rid
                )
                resp.headers["Allow"] = "GET, HEAD"
                return resp
            if parts:
                return self._openapi(rid)
            return self._list(request, rid)
        if len(parts) > 2 or not is_job_id(parts[0]):
            return _answer(404, "not_found", "no such job", rid)
        job_id, sub = parts[0], parts[1] if len(parts) == 2 else ""
        held = self.jobs.find_handle(job_id)  # each submitter's own id (handles)
        if held is None:
            here = self.jobs.config.box_id
            owner = routed_elsewhere(job_id, here, self.jobs.config.jobs.store)
            if owner is not None:
                # RFC 9110 §15.5.20: this box cannot answer for that target. Behind HAProxy
                # the job URL must go to its box (issue #11 §2); a 404 would say the job
                # does not exist, which this box cannot know.
                return _answer(
                    421,
                    "misdirected",
                    f"job {job_id} belongs to box {owner!r}, this is box {here!r}; route"
                    f" {self.base}/{owner}{BOX_SEPARATOR}… to that box",
                    rid,
                    box=owner,
                )
            return _answer(404, "not_found", f"no job {job_id}", rid)
        allowed = {"": ("GET", "HEAD", "DELETE"), "events": ("GET",), "result": ("GET", "HEAD")}
        methods = allowed.get(sub)
        if methods is None:
            return _answer(404, "not_found", f"no such job resource {sub!r}", rid)
        if request.method not in methods:
            resp = _answer(405, "method_not_allowed", f"{request.method} is not allowed here", rid)
            resp.headers["Allow"] = ", ".join(methods)
            return resp
        found, handle = held
        if sub == "events":
            return await self._events(request, job_id, rid)
        if sub == "result":
            if let_go_alone(found, handle):
                return _answer(
                    409,
                    "no_result",
                    "this job id was deleted",
                    rid,
                    state=JobState.CANCELLED,
                    job_reason=DELETED,
                )
            return await self._result(request, found, rid, handle.id)
        if request.method == "DELETE":
            if foreign(self.jobs, found) and handle.attached:
                found, handle = await delete_foreign(self.jobs, found, handle)
                view = handle_view(self.jobs, found, handle, self.clock(), self.base)
                return job_json(200, view, rid)
            return self._delete(found, handle, rid)
        return job_json(200, handle_view(self.jobs, found, handle, self.clock(), self.base), rid)

    def _list(self, request: web.BaseRequest, rid: str) -> web.Response:
        """The caller's own jobs (``listing``)."""
        status, reason, body = listing.listing_answer(self.jobs, request, self.clock(), self.base)
        if reason is not None:
            return _answer(status, reason, body["detail"], rid)
        resp = web.json_response(body, dumps=lambda o: json.dumps(o, ensure_ascii=False))
        resp.headers["Cache-Control"] = "no-store"
        resp.headers[REQUEST_ID] = rid
        if body["links"]["next"] is not None:
            resp.headers["Link"] = f'<{body["links"]["next"]}>; rel="next"'  # RFC 8288
        return resp

    def _openapi(self, rid: str) -> web.Response:
        """The OpenAPI document of this API, built from the live rules (``openapi``)."""
        resp = web.Response(body=openapi.document_bytes(self.jobs.config))
        resp.content_type = "application/json"
        resp.headers[REQUEST_ID] = rid
        return resp

    def _delete(self, found: Job, handle: Handle, rid: str) -> web.Response:
        """Detach this handle only; the job goes when no handle holds it (handles)."""
        now = self.clock()
        if not found.final and handle.attached:
            handle = self.jobs.delete_handle(found, handle)
            job = self.jobs.find(found.id) or found
            return job_json(200, handle_view(self.jobs, job, handle, now, self.base), rid)
        view = handle_view(self.jobs, found, handle, now, self.base)
        return _answer(
            409,
            "job_finished",
            f"the job is already {view['state']}; nothing to cancel",
            rid,
            state=view["state"],
        )

    async def _result(
        self, request: web.BaseRequest, found: Job, rid: str, handle_id: str
    ) -> web.StreamResponse:
        row, state = found.record, found.state
        if state not in FINAL_STATES:
            return _answer(
                409, "not_done", f"the job is {state}; its result is not ready", rid, state=state
            )
        if state == JobState.EXPIRED:
            return _answer(
                410, "expired", "the result was kept for jobs.keep and is gone", rid, state=state
            )
        if row.result_status is None or not kept_whole(state, row.reason):
            return _answer(
                409,
                "no_result",
                f"the job is {state} ({row.reason}) and has no stored answer",
                rid,
                state=state,
                job_reason=row.reason,
            )
        path = self.jobs.store.result_path(row.id)
        if path is None and self.anybox is not None:
            place = self.anybox.shared.result_place(row.id)
            if place is not None and place.box != self.anybox.shared.box:
                return await self.anybox.relay(request, place, handle_id, rid)
        if path is None or path.name != row.id:  # a partial file is never a final job's result
            return _gone(found, rid, "no such file")
        headers = end_to_end(_cim(row.result_headers or ()), drop=_NOT_REPLAYED)
        headers[REQUEST_ID] = rid
        headers["X-Gatekeeper-Job"] = handle_id
        try:
            # Opened first, and everything below reads this descriptor: a file deleted or
            # replaced from here on is still read whole (the inode lives while open).
            f = open(path, "rb")  # noqa: SIM115, ASYNC230 - page-cache reads, as spool.py
        except FileNotFoundError as exc:
            return _gone(found, rid, describe(exc))
        except OSError as exc:
            raise StorageError("reading the result", exc) from exc
        with f:
            return await served(request, f, row.result_status, row.result_reason, headers)

    async def _events(self, request: web.BaseRequest, job_id: str, rid: str) -> web.StreamResponse:
        out = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
                REQUEST_ID: rid,
                "X-Gatekeeper-Job": job_id,
            }
        )
        await out.prepare(request)
        try:
            await self._tell(out, job_id)
            await out.write_eof()
        except ConnectionError:
            pass  # the client left; nothing to clean up
        return out

    async def _tell(self, out: web.StreamResponse, job_id: str) -> None:
        """One ``job`` event per change (``watch``: coalesced, ETA changes included)
        until the job's final state; a keep-alive comment when quiet for long."""
        told: watch.Told | None = None
        wrote = self.clock()
        while True:
            queue_moved = self.jobs.any_change()
            held = self.jobs.find_handle(job_id)  # the watcher's own handle (issue #18 §3)
            if held is None:
                return
            job_changed = held[0].changed()
            # A job another box holds: nothing here tells its changes, so look again.
            look_again = FOREIGN_LOOK if foreign(self.jobs, held[0]) else None
            now = self.clock()
            view = handle_view(self.jobs, *held, now, self.base)
            final = view["state"] in FINAL_STATES
            if watch.is_news(told, view, now):
                if told is not None and now - told.at < watch.MIN_GAP:
                    await asyncio.sleep(told.at + watch.MIN_GAP - now)
                    continue  # coalesced: the latest view goes out at the end of the gap
                told, wrote = watch.Told.of(view, now), now
                data = json.dumps(view, ensure_ascii=False)
                await out.write(f"event: job\ndata: {data}\n\n".encode())
            if final:
                return
            assert told is not None
            look = watch.next_look(told, view, now, self.jobs.schedule.steady_for(now))
            keepalive = max(0.0, wrote + KEEPALIVE_SECONDS - now)
            wait = keepalive if look is None else min(keepalive, max(0.05, look))
            if look_again is not None:
                wait = min(wait, look_again)
            woken = await _either(job_changed, queue_moved, wait)
            if not woken and self.clock() >= wrote + KEEPALIVE_SECONDS:
                wrote = self.clock()
                await out.write(b": keep-alive\n\n")


def relay_endpoint(anybox: AnyBox) -> Any:
    """``GET/HEAD <anybox.RELAY_PATH>/<handle>`` on the admin listener: a box of the
    store (``AnyBox.authorized``) asks for the result of a handle it resolved for its
    client; answered as ``GET <handle>/result`` is here (Range included), never relayed
    further."""

    async def serve(request: web.Request) -> web.StreamResponse:
        rid = request.headers.get(REQUEST_ID, "relay")
        if not anybox.authorized(request):
            return _answer(
                403, "forbidden", "only the boxes of this job store may fetch results here", rid
            )
        jobs = anybox.jobs
        api = JobsApi(jobs, jobs.config.jobs_path or "", jobs.deps.clock)
        return await api.handle(request, f"/{request.match_info['handle']}/result", rid)

    return serve


def body_relay(anybox: AnyBox) -> Any:
    """The body relay's endpoint (``bodyrelay.body_endpoint``) on this box's admin
    listener, with the result relay's secret check."""
    store = anybox.jobs.store
    return body_endpoint(anybox.shared.box, anybox.authorized, store.body_path)


def _gone(found: Job, rid: str, why: str) -> web.Response:
    """A kept answer whose file is gone (deleted by hand, or by a broken disk)."""
    return _answer(
        410,
        "result_gone",
        f"the job is {found.state} but its stored answer is gone from the state directory"
        f" ({why}); submit the request again",
        rid,
        state=found.state,
        job_reason=found.record.reason,
    )


async def _either(a: asyncio.Event, b: asyncio.Event, within: float) -> bool:
    """Wait until ``a`` or ``b`` is set, at most ``within`` seconds; whether one was."""
    if a.is_set() or b.is_set():
        return True
    waits = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        done, _ = await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    return bool(done)


def _cim(pairs: Any) -> Any:
    from multidict import CIMultiDict

    return CIMultiDict(list(pairs))
