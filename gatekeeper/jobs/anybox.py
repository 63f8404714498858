"""Every box answers for every job (issue #21; docs/postgres.md): the parts of the jobs
API that a job another box holds needs, with a store several boxes share.

A job's record and its handles are in the shared store, so any box resolves an id
to its handle and its job by the same rules as for its own (``JobService.find_handle``:
an unknown id is a 404, another identity's job is reached only through its own
handle). What another box holds:

- **Its state and events.** A job another box holds (``foreign``) is read back from
  the store; nothing of this process tells its changes, so a ``/events`` watcher
  looks again every ``FOREIGN_LOOK`` seconds (``jobs.api``).
- **Its result** lives on the box that produced it (the record's ``run_box``).
  ``AnyBox.relay`` fetches it from that box's internal address (``boxes.address``,
  ``jobs.postgres.address``) at ``RELAY_PATH`` on its admin listener and streams it
  chunk by chunk (never read whole into memory), passing ``Range`` and the
  conditional headers both ways, so a 206 is the producing box's own.
- **The relay endpoint** (``api.relay_endpoint``, served on the admin listener) answers
  only a caller that shows the store's secret (``AnyBoxStore.relay_secret``:
  ``Authorization: Gatekeeper-Box <secret>``; whoever reads the store is a box of it),
  and only for a *handle*: the asking box sends the handle it resolved for its
  client, the producing box resolves it again, so a result is never served across
  identities, not even to a box.
- **Its cancel.** ``delete_foreign`` detaches the caller's handle in the store and,
  when no async handle holds the job any more, leaves a cancel request there; the
  box that holds the job takes it within ``FOREIGN_LOOK`` (``fleet.FleetWatch``) and
  decides with what only it knows (its held connections), as for its own
  ``DELETE`` (``apply_cancels``). The asking box waits up to ``CANCEL_WAIT`` for
  that outcome, so its answer is, as often as possible, the job's new state.
"""

from __future__ import annotations

import asyncio
import hmac
import logging

import aiohttp
from aiohttp import web

from gatekeeper.core.headers import HOP_BY_HOP, REQUEST_ID
from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.anybox_store import AnyBoxStore, ResultPlace, anybox_store_of
from gatekeeper.jobs.bodyrelay import AUTH_SCHEME
from gatekeeper.jobs.handles import Handle
from gatekeeper.jobs.model import Job
from gatekeeper.jobs.service import JobService
from gatekeeper.proxy.responses import json_error

log = logging.getLogger("gatekeeper.jobs")

# On the admin listener: GET/HEAD <RELAY_PATH>/<handle id>.
RELAY_PATH = "/relay/result"
FOREIGN_LOOK = 0.5  # seconds: how often a watcher of a foreign job reads it again
CANCEL_WAIT = 2.0  # seconds a DELETE of a foreign job waits for its holder to act
RELAY_CONNECT = 5.0  # seconds to reach the producing box
RELAY_RETRY_AFTER = 5
# The request headers a result's answer depends on (RFC 9110 §13, §14.2).
_ASKED = ("Range", "If-Range", "If-Match", "If-None-Match", "If-Modified-Since")
_NOT_RELAYED = HOP_BY_HOP | {"content-length", REQUEST_ID.lower()}


def foreign(jobs: JobService, job: Job) -> bool:
    """A live job of a shared store that another box holds or runs: not live here, or
    running here without a runner (a view of a job another box's engine runs; a job
    this box runs always has its runner task, set in the step that marked it running)."""
    if job.final or job.id in jobs.unsaved or anybox_store_of(jobs.store) is None:
        return False
    local = jobs.live.get(job.id)
    return local is None or (local.state is JobState.RUNNING and local.task is None)


async def delete_foreign(jobs: JobService, job: Job, handle: Handle) -> tuple[Job, Handle]:
    """``DELETE`` of ``handle`` on a job another box holds (module text): the job and
    the handle as they are after it (the holder's decision, or within ``CANCEL_WAIT``)."""
    shared = anybox_store_of(jobs.store)
    assert shared is not None
    if jobs.store.get_handle(handle.id) is None:
        jobs.store.add_handle(handle)  # an implied creator's handle: stored now
    handle = jobs.store.detach_handle(handle.id, jobs.deps.wall())
    holders = [h for h in jobs.store.handles_of(job.id) if h.attached and not h.held]
    local = jobs.live.get(job.id)  # this box took it: its held connections hold it too
    if local is not None:
        local.holders.discard(handle.id)
        if not handle.held:
            local.async_owners = max(0, local.async_owners - 1)
    if holders or (local is not None and local.holders):
        return job, handle  # others hold it: only this handle let go
    shared.request_cancel(job.id)
    deadline = jobs.deps.clock() + CANCEL_WAIT
    while jobs.deps.clock() < deadline:
        await asyncio.sleep(0.1)
        now = jobs.find(job.id)
        if now is None:
            break
        job = now
        if job.final:
            return job, handle
    job.cancel_requested = True  # asked; the box that runs it decides (finish mode)
    return job, handle


def apply_cancels(jobs: JobService, job_ids: list[str]) -> None:
    """The cancel requests another box left for jobs this box holds (``delete_foreign``):
    the handles detached there let go here, and a job no handle holds any more is
    deleted as by its own ``DELETE`` (``JobService.delete``)."""
    for job_id in job_ids:
        job = jobs.live.get(job_id)
        if job is None or job.final:
            continue
        for h in jobs.store.handles_of(job_id):
            if not h.attached and h.id in job.holders:
                if not h.held:
                    job.async_owners = max(0, job.async_owners - 1)
                job.holders.discard(h.id)
        if not job.holders:
            log.info("job %s… cancelled from another box", job_id[:6])
            jobs.delete(job)
        else:
            job.notify()


class AnyBox:
    """The relay, both ends: fetching a result from the box that produced it, and
    serving this box's results to the other boxes (module text)."""

    def __init__(self, jobs: JobService, shared: AnyBoxStore):
        self.jobs = jobs
        self.shared = shared
        self._secret: str | None = None
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def of(cls, jobs: JobService | None) -> AnyBox | None:
        """The relay of ``jobs``' store; None for a store of one box."""
        shared = None if jobs is None else anybox_store_of(jobs.store)
        return None if jobs is None or shared is None else cls(jobs, shared)

    def secret(self) -> str:
        if self._secret is None:
            self._secret = self.shared.relay_secret()
        return self._secret

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=RELAY_CONNECT)
            self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
        return self._session

    async def relay(
        self,
        request: web.BaseRequest,
        place: ResultPlace,
        handle_id: str,
        rid: str,
        *,
        held: bool = False,
    ) -> web.StreamResponse:
        """The result of ``handle_id``'s job, fetched from ``place`` and streamed.

        ``held``: the answer of a held client's request (a ``POST`` that waited on this
        box while another box's engine ran its job): the whole result, fetched with a
        plain ``GET`` whatever the request's method and conditional headers were."""
        if place.address is None:
            return _unreachable(rid, f"box {place.box} registered no address")
        url = f"{place.address}{RELAY_PATH}/{handle_id}"
        asked = {} if held else {k: v for k in _ASKED if (v := request.headers.get(k)) is not None}
        asked["Authorization"] = f"{AUTH_SCHEME} {self.secret()}"
        asked[REQUEST_ID] = rid
        out: web.StreamResponse | None = None
        try:
            method = "GET" if held else request.method
            async with self._client().request(method, url, headers=asked) as up:
                out = web.StreamResponse(status=up.status, reason=up.reason)
                for k, v in up.headers.items():
                    if k.lower() not in _NOT_RELAYED:
                        out.headers.add(k, v)
                out.headers[REQUEST_ID] = rid
                if held:
                    out.headers["X-Gatekeeper-Job"] = handle_id
                if up.content_length is not None:
                    out.content_length = up.content_length
                await out.prepare(request)
                if method != "HEAD":
                    async for chunk in up.content.iter_any():
                        await out.write(chunk)
                await out.write_eof()
                return out
        except ConnectionError:
            if out is not None and out.prepared:
                return out  # the client left: the answer is as far as it got
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            if out is not None and out.prepared:
                # Cut mid-body: the connection is closed after what was sent, so the client
                # sees a short body (its Content-Length says so), never a whole-looking one.
                log.warning("relaying a result from box %s broke off: %s", place.box, exc)
                out.force_close()
                return out
            return _unreachable(rid, f"box {place.box} at {place.address}: {exc or type(exc)}")

    def authorized(self, request: web.BaseRequest) -> bool:
        """The caller showed the store's secret: it is a box of this store."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        secret = self.secret().encode()
        return scheme == AUTH_SCHEME and hmac.compare_digest(token.strip().encode(), secret)


def _unreachable(rid: str, why: str) -> web.Response:
    return json_error(
        503,
        "box_unreachable",
        f"the result is kept on another box, which does not answer now ({why})",
        retry_after=RELAY_RETRY_AFTER,
        request_id=rid,
    )
