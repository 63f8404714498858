"""A batch's results as one tar archive, streamed from disk in bounded memory.

``tar_chunks`` yields the archive piece by piece (POSIX ustar, the headers made
by ``tarfile.TarInfo.tobuf``): first ``index.json`` (the results index, so the
archive says which items it holds), then each item's stored answer as
``<index>-<job id>.<ext>``, read ``CHUNK`` bytes at a time, never a whole file
in memory. A result is opened before its header is written, so one evicted
meanwhile is left out whole (the archive stays valid); an open file is read to
its end even if it is deleted meanwhile (the inode lives while open). The
caller writes each piece to the client with backpressure (``api``).
"""

from __future__ import annotations

import mimetypes
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

BLOCK = 512
CHUNK = 256 * 1024
_EXTENSIONS = {
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/wave": ".wav",
    "audio/mpeg": ".mp3",
    "audio/flac": ".flac",
    "application/json": ".json",
    "text/event-stream": ".sse",
}


def member_name(index: int, job_id: str, content_type: str | None) -> str:
    """``007-<job id>.wav``: sorted in item order, the extension from the answer's type."""
    ct = (content_type or "").split(";", 1)[0].strip().lower()
    ext = _EXTENSIONS.get(ct) or (mimetypes.guess_extension(ct) if ct else None) or ".bin"
    return f"{index:03d}-{job_id}{ext}"


def header(name: str, size: int, mtime: float) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(mtime), 0o644
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _pad(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def tar_chunks(index: bytes, files: Iterable[tuple[str, Path]], mtime: float) -> Iterator[bytes]:
    """The archive (module text): ``index`` as index.json, then ``files`` (name, path)."""
    yield header("index.json", len(index), mtime) + index + _pad(len(index))
    for name, path in files:
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below, after its last chunk
        except OSError:
            continue  # evicted between the index and here: left out whole
        with f:
            size = os.fstat(f.fileno()).st_size
            yield header(name, size, mtime)
            left = size
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:  # cut short under us: the member keeps its announced size
                    chunk = b"\0" * min(CHUNK, left)
                left -= len(chunk)
                yield chunk
            yield _pad(size)
    yield b"\0" * (2 * BLOCK)  # the end-of-archive marker
