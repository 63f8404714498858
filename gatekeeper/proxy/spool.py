"""Take an admit route's request body *before* admission: a slow upload never holds the slot.

Measured before this existed: a client sending one byte just under every
``client_body_timeout`` held the one generation slot for as long as it liked
(12 of 12 legitimate generations got 503). Now the proxy first checks that a
slot is free (so a busy engine rejects at once, without taking a 100 MiB
upload), then reads the whole body here, and only then takes the lease:
the engine is only ever asked to start work whose input is complete.

The body is held in memory up to ``limits.spool_memory_bytes`` and in an
anonymous temporary file beyond that (``tempfile.TemporaryFile``: unlinked at
once, in ``$TMPDIR``), never whole in memory. Reading it is bounded three ways:

- ``limits.max_body_bytes``: more is refused with 413;
- ``limits.client_body_timeout``: a pause between two chunks -> 408;
- ``limits.client_body_deadline``: the whole body -> 408, whatever the pace;
- ``limits.max_spooled_bytes``: the bytes all spools hold at once, across every
  connection and route kind (``SpoolBudget``, one per process). A declared
  ``Content-Length`` is reserved whole before the first byte is read (over the
  budget: ``SpoolFull`` -> 503 ``spool_full``, nothing read); a chunked body
  takes its bytes as they come and is cut off with the same 503 when it would
  pass the budget. A spool gives its bytes back exactly once, when it is
  closed or saved (renamed into the job store), whatever ended it.

``before_read`` runs after the reservation and before the first read: the
``100 Continue`` of a client that sent ``Expect: 100-continue`` (``expect``),
so a refused client is never invited to send its body.

File writes are synchronous: they land in the page cache in microseconds per
64 KiB chunk, cheaper than a thread hop per chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO

from gatekeeper.core.errors import BodyTooLarge, ClientTimeout
from gatekeeper.upstream import ClientGone

# Size of the chunks a spooled body is replayed in.
REPLAY_CHUNK = 256 * 1024


class SpoolFull(Exception):
    """``limits.max_spooled_bytes`` would be passed: the request is refused 503 ``spool_full``
    (before its body is read when its length is declared; mid-body when chunked)."""


class SpoolBudget:
    """The bytes held by every spool in flight; ``limit`` reads ``limits.max_spooled_bytes``
    from the live rules (a reload applies to the next reservation)."""

    def __init__(self, limit: Callable[[], int]):
        self._limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        """Reserve ``n`` bytes; False (nothing reserved) if that would pass the limit."""
        if n > 0 and self.used + n > self._limit():
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n
        if self.used < 0:  # a spool gave back more than it took: a bug, never hidden
            raise RuntimeError(f"spool budget below zero ({self.used})")


class Spool:
    """A request body, in memory up to ``memory_limit`` bytes, in a temp file beyond.

    ``directory``: where the temp file goes (a queue route's: the state dir, so that
    ``save`` is a rename); None: an anonymous file in ``$TMPDIR``. ``digest``: keep a
    SHA-256 of the body as it arrives (the coalescing key of a job). ``budget``: the
    process's ``SpoolBudget``; the spool holds ``held`` bytes of it until ``close``.
    """

    def __init__(
        self,
        memory_limit: int,
        *,
        directory: Path | None = None,
        digest: bool = False,
        budget: SpoolBudget | None = None,
    ):
        self._limit = memory_limit
        self._budget = budget
        self.held = 0  # bytes reserved in the budget, given back once by ``close``
        self._buffer = bytearray()
        self._file: IO[bytes] | None = None
        self._dir = directory
        self._hash = hashlib.sha256() if digest else None
        self.size = 0

    @property
    def sha256(self) -> str:
        """Hex digest of the body (only with ``digest=True``)."""
        if self._hash is None:
            raise RuntimeError("Spool was created without digest=True")
        return self._hash.hexdigest()

    @property
    def on_disk(self) -> bool:
        return self._file is not None

    def memory(self) -> bytes | None:
        """The whole body while it is in memory (a small one); None once it is on disk."""
        return bytes(self._buffer) if self._file is None else None

    def reserve(self, n: int) -> None:
        """Hold ``n`` more bytes of the budget; SpoolFull (nothing held) if it has no room."""
        if self._budget is None or n <= 0:
            return
        if not self._budget.take(n):
            raise SpoolFull(n)
        self.held += n

    def write(self, chunk: bytes) -> None:
        beyond = self.size + len(chunk) - self.held
        if beyond > 0:
            self.reserve(beyond)  # a chunked body, or more than it declared
        self.size += len(chunk)
        if self._hash is not None:
            self._hash.update(chunk)
        if self._file is None and len(self._buffer) + len(chunk) <= self._limit:
            self._buffer += chunk
            return
        if self._file is None:
            if self._dir is None:
                self._file = tempfile.TemporaryFile(prefix="gatekeeper-body-")  # noqa: SIM115
            else:
                self._file = tempfile.NamedTemporaryFile(  # noqa: SIM115
                    prefix="spool-", suffix=".tmp", dir=self._dir, delete=False
                )
            self._file.write(self._buffer)
            self._buffer = bytearray()
        self._file.write(chunk)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, from the start, in ``REPLAY_CHUNK`` pieces."""
        if self._file is None:
            view = memoryview(self._buffer)
            for start in range(0, len(view), REPLAY_CHUNK):
                yield bytes(view[start : start + REPLAY_CHUNK])
            return
        f = self._file
        f.flush()
        f.seek(0)
        while chunk := f.read(REPLAY_CHUNK):
            yield chunk

    def save(self, path: Path) -> None:
        """Put the whole body at ``path``, atomically (a temp file renamed over it), and
        close the spool (its budget bytes given back, whether the save worked or not).
        A reader of ``path`` sees nothing or the whole body."""
        try:
            if self._file is not None and self._dir is not None:
                f = self._file
                f.close()  # flushed; a named temp file in the same directory tree: a rename
                os.replace(f.name, path)
                self._file = None  # renamed: nothing left to unlink
            else:
                tmp = path.with_name(path.name + ".tmp")
                with open(tmp, "wb") as out:
                    if self._file is not None:
                        self._file.flush()
                        self._file.seek(0)
                        while chunk := self._file.read(REPLAY_CHUNK):
                            out.write(chunk)
                    else:
                        out.write(self._buffer)
                os.replace(tmp, path)
        finally:
            self.close()

    def close(self) -> None:
        """Free the memory or the file and give the budget back; safe to call more than once."""
        self._buffer = bytearray()
        held, self.held = self.held, 0
        if self._budget is not None and held:
            self._budget.give(held)
        if self._file is not None:
            f, self._file = self._file, None
            f.close()  # closing twice (save's rename failed) is harmless
            if self._dir is not None:  # a named temp file: not unlinked by closing
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f.name)


async def take_body(
    source: AsyncIterator[bytes],
    *,
    max_bytes: int,
    idle_timeout: float,
    deadline: float,
    memory_limit: int,
    directory: Path | None = None,
    digest: bool = False,
    budget: SpoolBudget | None = None,
    declared: int | None = None,
    before_read: Callable[[], Awaitable[None]] | None = None,
) -> Spool:
    """Read a whole request body into a Spool; raises BodyTooLarge, ClientTimeout,
    ClientGone, SpoolFull.

    ``declared`` (the request's Content-Length) is reserved in ``budget`` before anything
    is read; then ``before_read`` runs (``expect.send_continue``). On any failure
    (cancellation included) the spool is closed, its budget given back, before the error
    leaves.
    """
    spool = Spool(memory_limit, directory=directory, digest=digest, budget=budget)
    try:
        if declared:
            spool.reserve(min(declared, max_bytes + 1))
        if before_read is not None:
            await before_read()
    except BaseException:
        spool.close()
        raise
    try:
        async with asyncio.timeout(deadline) as whole:
            while True:
                try:
                    async with asyncio.timeout(idle_timeout):
                        chunk = await anext(source)
                except StopAsyncIteration:
                    return spool
                except TimeoutError as exc:
                    raise ClientTimeout(
                        f"the client sent no request body data for {idle_timeout:g}s "
                        "(limits.client_body_timeout)"
                    ) from exc
                except Exception as exc:  # the client's connection broke mid-body
                    raise ClientGone(str(exc) or type(exc).__name__) from exc
                spool.write(chunk)
                if spool.size > max_bytes:
                    raise BodyTooLarge(
                        f"request body exceeds limits.max_body_bytes ({max_bytes} bytes); "
                        f"{spool.size} bytes were received when it was refused"
                    )
    except TimeoutError as exc:
        spool.close()
        if whole.expired():
            raise ClientTimeout(
                f"the client did not send its whole request body within {deadline:g}s "
                "(limits.client_body_deadline)"
            ) from exc
        raise
    except BaseException:
        spool.close()
        raise
