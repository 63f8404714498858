"""The body relay, both ends: a large request body fetched from the box that took it
(issue #21; docs/postgres.md, "Large bodies through the relay").

A body over ``jobs.postgres.max_body_bytes`` stays in the spool (``bodies/<id>``) of
the box that took the request (the job's ``body_box``). Any box may claim the job;
the claiming box fetches the body before its engine is asked:

- **the endpoint** (``body_endpoint``): ``GET <BODY_PATH>/<box>/<job id>`` on the
  admin listener of the taking box, beside the result relay and with its rule: only
  a caller showing the store's secret (``AnyBox.authorized``: ``Authorization:
  Gatekeeper-Box <secret>``), anyone else ``403 forbidden``. The path names the box
  the caller expects: another box at that address (an address reused by a new box)
  answers ``404 not_this_box``, never a body of its own; the right box without the
  file answers ``410 body_gone`` (the body can never come back). The file is served
  from its open descriptor (``FileResponse``: sendfile, never read whole), with its
  ``Content-Length``, as stored: the bytes the client sent, a gzip body still gzip.
- **the fetch** (``fetch``): streamed chunk by chunk into this box's own
  ``bodies/<id>.tmp`` (never whole in memory), committed under its final name only
  when exactly the announced and recorded ``body_size`` bytes arrived; what it came
  to (``bodyplan.Fetched``) is judged by ``bodyplan.judge``. A taking box that does
  not answer within ``FETCH_CONNECT`` or stalls ``FETCH_STALL`` seconds mid-body is
  a failed fetch: the partial file is deleted and the job given back to the queue.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gatekeeper.core.headers import REQUEST_ID
from gatekeeper.jobs.bodyplan import GONE_REASON, Fetched
from gatekeeper.jobs.guard import GuardedWriter, StorageError
from gatekeeper.proxy.responses import json_error

log = logging.getLogger("gatekeeper.jobs")

# On the admin listener: GET <BODY_PATH>/<box id>/<job id>.
BODY_PATH = "/relay/body"
AUTH_SCHEME = "Gatekeeper-Box"  # both relays' (``anybox`` imports it)
FETCH_CONNECT = 5.0  # seconds to reach the taking box
FETCH_STALL = 15.0  # seconds without a byte mid-body: the fetch failed
SERVE_CHUNK = 256 * 1024


async def fetch(
    address: str, box: str, job_id: str, secret: str, writer: GuardedWriter, rid: str
) -> Fetched:
    """Stream the body of ``job_id`` from ``box`` at ``address`` into ``writer`` (not
    committed here). Never raises for the network or this box's disk: the outcome says."""
    url = f"{address}{BODY_PATH}/{box}/{job_id}"
    headers = {
        "Authorization": f"{AUTH_SCHEME} {secret}",
        "Accept-Encoding": "identity",  # the stored bytes, never a coding of them
        REQUEST_ID: rid,
    }
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=FETCH_CONNECT, sock_read=FETCH_STALL)
    status: int | None = None
    announced: int | None = None
    received = 0
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session,
            session.get(url, headers=headers) as r,
        ):
            status, announced = r.status, r.content_length
            if status != 200:
                return Fetched(status, announced, reason=await _reason(r))
            async for chunk in r.content.iter_any():
                received += len(chunk)
                if announced is not None and received > announced:
                    break  # more than announced: not the recorded body
                writer.write(chunk)
            else:
                return Fetched(status, announced, received, whole=True)
            return Fetched(status, announced, received)
    except StorageError as exc:
        log.error("job %s… writing the fetched body failed: %s", job_id[:6], exc.detail)
        return Fetched(status, announced, received, local_fault=True)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.warning(
            "job %s… fetching its body from box %s at %s failed after %d bytes: %s",
            job_id[:6],
            box,
            address,
            received,
            exc or type(exc).__name__,
        )
        return Fetched(status, announced, received)


async def _reason(r: aiohttp.ClientResponse) -> str | None:
    """The ``reason`` of a refusal's JSON body (small), else None."""
    try:
        data: Any = json.loads(await r.content.read(64 * 1024))
    except (ValueError, aiohttp.ClientError, TimeoutError):
        return None
    reason = data.get("reason") if isinstance(data, dict) else None
    return reason if isinstance(reason, str) else None


def body_endpoint(
    me: str,
    authorized: Callable[[web.BaseRequest], bool],
    body_path: Callable[[str], Path | None],
) -> Any:
    """``GET <BODY_PATH>/<box>/<job id>`` on the admin listener of box ``me`` (module
    text): ``authorized`` is the result relay's check (``AnyBox.authorized``),
    ``body_path`` the store's."""

    async def serve(request: web.Request) -> web.StreamResponse:
        rid = request.headers.get(REQUEST_ID, "relay")
        if not authorized(request):
            return json_error(
                403,
                "forbidden",
                "only the boxes of this job store may fetch bodies here",
                request_id=rid,
            )
        box, job_id = request.match_info["box"], request.match_info["job"]
        if box != me:
            return json_error(404, "not_this_box", f"this is box {me}, not {box}", request_id=rid)
        try:
            path = body_path(job_id)
        except (ValueError, StorageError):
            path = None
        if path is None:
            return json_error(
                410,
                GONE_REASON,
                f"box {box} keeps no request body of job {job_id[:6]}…",
                request_id=rid,
            )
        headers = {"Content-Type": "application/octet-stream", REQUEST_ID: rid}
        return web.FileResponse(path, chunk_size=SERVE_CHUNK, headers=headers)

    return serve
