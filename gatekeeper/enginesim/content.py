"""The bytes the simulator serves: the songs, the ``/download`` pattern, the gzip body.

Pure and deterministic (same input, same bytes, on every run and machine), so tests can
compute what a relayed body must be instead of storing it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import random
import sys
import wave
from array import array
from functools import lru_cache

SAMPLE_RATE = 22050
NOTE_SECONDS = 0.25
NOTE_COUNT = 12  # 3 s of audio: long enough to be a "song", short enough to stay cheap

_PATTERN_SIZE = 1 << 20


def synthesize_wav(lyrics: str) -> bytes:
    """Return the WAV the simulator answers for ``lyrics``: same lyrics, same bytes.

    A sequence of enveloped sine notes whose pitches come from the characters (mixed with
    a hash so that lyrics sharing letters still sound different).
    """
    digest = hashlib.sha256(lyrics.encode("utf-8")).digest()
    chars = [c for c in lyrics if not c.isspace()] or ["~"]
    per_note = int(SAMPLE_RATE * NOTE_SECONDS)
    fade = SAMPLE_RATE // 100  # 10 ms ramps: notes joined without clicks
    samples = array("h")
    for i in range(NOTE_COUNT):
        char = chars[i * len(chars) // NOTE_COUNT]
        semitone = (ord(char) + digest[i]) % 24
        step = 2 * math.pi * 220.0 * 2 ** (semitone / 12) / SAMPLE_RATE
        samples.extend(
            int(12000 * min(1.0, k / fade, (per_note - k) / fade) * math.sin(step * k))
            for k in range(per_note)
        )
    if sys.byteorder == "big":
        samples.byteswap()  # WAV is little-endian
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(samples.tobytes())
    return out.getvalue()


@lru_cache(maxsize=1)
def _pattern() -> bytes:
    # Doubled so that any chunk, wherever it starts in the period, is one contiguous slice.
    block = random.Random(0x5EED).randbytes(_PATTERN_SIZE)
    return block + block


def pattern_view(offset: int, size: int) -> memoryview:
    """Bytes ``[offset, offset + size)`` of the download content, without a copy.

    ``size`` must be at most 1 MiB (the period); :func:`download_content` has no limit.
    """
    start = offset % _PATTERN_SIZE
    return memoryview(_pattern())[start : start + size]


def download_content(offset: int, size: int) -> bytes:
    """Return bytes ``[offset, offset + size)`` of what ``GET /download`` serves.

    The content is pseudo-random with a period of 1 MiB, so relayed bodies of any size can
    be checked without storing them.
    """
    parts = []
    while size > 0:
        n = min(size, _PATTERN_SIZE)
        parts.append(bytes(pattern_view(offset, n)))
        offset += n
        size -= n
    return b"".join(parts)


@lru_cache(maxsize=1)
def gzip_plain_body() -> bytes:
    """Return the decompressed body of ``GET /_sim/gzip``."""
    lines = (f"{i:05d} the quick brown fox jumps over the lazy engine\n" for i in range(2000))
    return "".join(lines).encode("ascii")


@lru_cache(maxsize=1)
def gzip_body() -> bytes:
    """The body of ``GET /_sim/gzip`` as sent: :func:`gzip_plain_body`, gzip-compressed."""
    return gzip.compress(gzip_plain_body(), mtime=0)  # mtime=0: same bytes on every run
