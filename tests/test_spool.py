"""Taking an admit route's body before admission: the spool and its three bounds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gatekeeper.core.errors import BodyTooLarge, ClientTimeout
from gatekeeper.proxy.spool import REPLAY_CHUNK, Spool, take_body
from gatekeeper.upstream import ClientGone


async def chunks(*parts: bytes, pause: float = 0.0) -> AsyncIterator[bytes]:
    for part in parts:
        if pause:
            await asyncio.sleep(pause)
        yield part


async def collect(spool: Spool) -> bytes:
    return b"".join([c async for c in spool.chunks()])


async def take(source: AsyncIterator[bytes], **kw: float) -> Spool:
    args = {"max_bytes": 1 << 30, "idle_timeout": 5.0, "deadline": 10.0, "memory_limit": 1024}
    args.update(kw)
    return await take_body(source, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sizes", "on_disk"),
    [((), False), ((10,), False), ((1024,), False), ((1024, 1), True), ((5000, 70000), True)],
)
async def test_body_is_kept_in_memory_up_to_the_limit_then_on_disk(
    sizes: tuple[int, ...], on_disk: bool
) -> None:
    """Up to spool_memory_bytes in memory, beyond it in a temp file; replayed byte for byte."""
    parts = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    spool = await take(chunks(*parts))
    try:
        assert spool.on_disk is on_disk
        assert spool.size == sum(sizes)
        assert await collect(spool) == b"".join(parts)
        assert await collect(spool) == b"".join(parts)  # replayable (a second read)
    finally:
        spool.close()
        spool.close()  # idempotent


async def test_replay_chunks_are_bounded() -> None:
    """A large spooled body is replayed in REPLAY_CHUNK pieces, never as one buffer."""
    spool = await take(chunks(b"x" * (3 * REPLAY_CHUNK + 5)), memory_limit=0)
    sizes = [len(c) async for c in spool.chunks()]
    spool.close()
    assert max(sizes) == REPLAY_CHUNK and sum(sizes) == 3 * REPLAY_CHUNK + 5


async def test_over_max_bytes_is_413() -> None:
    """More than limits.max_body_bytes is refused as it arrives."""
    with pytest.raises(BodyTooLarge, match="max_body_bytes"):
        await take(chunks(b"a" * 600, b"b" * 600), max_bytes=1000)


async def test_a_pause_longer_than_client_body_timeout_is_408() -> None:
    """A gap between two chunks over client_body_timeout: 408 naming that key."""
    with pytest.raises(ClientTimeout, match="client_body_timeout"):
        await take(chunks(b"a", b"b", pause=0.3), idle_timeout=0.1)


async def test_a_trickle_under_the_pause_timeout_still_meets_the_whole_body_deadline() -> None:
    """One byte just under every pause timeout is stopped by client_body_deadline."""

    async def trickle() -> AsyncIterator[bytes]:
        while True:
            await asyncio.sleep(0.05)
            yield b"x"

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(ClientTimeout, match="client_body_deadline"):
        await take(trickle(), idle_timeout=0.1, deadline=0.5)
    assert loop.time() - t0 < 1.0


async def test_a_broken_client_connection_is_client_gone() -> None:
    """The client's side failing mid-body is ClientGone (nothing is forwarded)."""

    async def broken() -> AsyncIterator[bytes]:
        yield b"a"
        raise ConnectionResetError("peer reset")

    with pytest.raises(ClientGone, match="peer reset"):
        await take(broken())


async def test_cancellation_is_never_swallowed() -> None:
    """Cancelling the reader propagates CancelledError (and frees the spool)."""

    async def forever() -> AsyncIterator[bytes]:
        yield b"a"
        await asyncio.sleep(3600)
        yield b"b"

    task = asyncio.create_task(take(forever()))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
