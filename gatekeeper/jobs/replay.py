"""A stored result replayed from a descriptor already open (issue #18 §1: no TOCTOU).

``GET <id>/result`` opens the result file once (``api``), then answers from that
descriptor only: a file deleted or replaced after the open is still served whole
and as it was (the inode lives while it is open), never as a bodiless 404 nor as
another file's bytes.

A 200 is served by aiohttp's ``FileResponse`` (Range, If-Range, the conditional
requests, HEAD, sendfile), pointed at ``/proc/self/fd/<n>``: opening that link
opens the very inode the descriptor holds, even one already unlinked, so
aiohttp's own open cannot miss it. Where ``/proc`` is not mounted (another OS),
and for every other status, the body is streamed from the descriptor (a whole
200 there: a server may ignore ``Range``, RFC 9110 §14.2).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

# Each open descriptor of this process, as a path that opens the same file again.
PROC_FD = Path("/proc/self/fd")
_HAVE_PROC_FD = PROC_FD.is_dir()
CHUNK = 256 * 1024


class _SentFile(web.FileResponse):
    """A ``FileResponse`` sent inside the handler (while its descriptor is open): the
    server's own ``prepare`` after the handler returns must not open the link again."""

    gone = False  # the client left while it was sent: never open the link again

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.gone:  # aiohttp's finish after the handler: quiet about a ConnectionError
            raise ConnectionResetError("the client left during the answer")
        if self.prepared:  # StreamResponse.prepare: already sent, nothing to do
            return await web.StreamResponse.prepare(self, request)
        return await super().prepare(request)


async def served(
    request: web.BaseRequest,
    f: IO[bytes],
    status: int,
    reason: str | None,
    headers: Mapping[str, str],
) -> web.StreamResponse:
    """The answer ``status`` with ``headers`` and the bytes of the open file ``f``, sent
    (prepared) before this returns: the caller may close ``f`` then. A client that
    leaves during the answer ends it quietly (aiohttp's own finish logs no traceback
    for a ConnectionError), as any answer it leaves does."""
    fd = f.fileno()
    if status == 200 and _HAVE_PROC_FD:
        whole = _SentFile(PROC_FD / str(fd), headers=headers)
        try:
            await whole.prepare(request)
        except ConnectionError:
            whole.gone = True
        return whole
    out = web.StreamResponse(status=status, reason=reason, headers=headers)
    out.content_length = os.fstat(fd).st_size
    try:
        await out.prepare(request)
        if request.method != "HEAD":
            while chunk := f.read(CHUNK):
                await out.write(chunk)
        await out.write_eof()
    except ConnectionError:
        pass  # the answer is as far as it got; aiohttp's finish is quiet about the rest
    return out
