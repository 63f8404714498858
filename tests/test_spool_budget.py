"""``limits.max_spooled_bytes``: one budget of spooled body bytes (issue #18 §2).

A declared length is reserved before anything is read (refused: nothing read);
a chunked body takes its bytes as they come and is cut off past the budget; a
spool gives its bytes back exactly once, on every path (saved, closed, refused,
too large, the client gone, cancelled).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gatekeeper.core.errors import BodyTooLarge
from gatekeeper.proxy.spool import Spool, SpoolBudget, SpoolFull, take_body
from gatekeeper.upstream import ClientGone

MiB = 1024 * 1024


def budget(limit: int) -> SpoolBudget:
    return SpoolBudget(lambda: limit)


class Source:
    """A request body that counts what was read of it."""

    def __init__(self, *parts: bytes, fail: bool = False, hang: bool = False):
        self.parts = list(parts)
        self.read = 0
        self.fail = fail
        self.hang = hang

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._gen()

    async def _gen(self) -> AsyncIterator[bytes]:
        for p in self.parts:
            self.read += len(p)
            yield p
        if self.fail:
            raise ConnectionResetError("client gone")
        if self.hang:
            await asyncio.Event().wait()


async def take(source: Source, b: SpoolBudget, declared: int | None, **kw: object) -> Spool:
    args: dict[str, object] = {
        "max_bytes": 64 * MiB,
        "idle_timeout": 5.0,
        "deadline": 10.0,
        "memory_limit": 1024,
        "budget": b,
        "declared": declared,
    }
    args.update(kw)
    return await take_body(aiter(source), **args)  # type: ignore[arg-type]


async def test_a_declared_length_over_what_is_left_is_refused_before_a_byte_is_read() -> None:
    b = budget(10 * MiB)
    first = await take(Source(b"a" * (6 * MiB)), b, 6 * MiB)
    assert b.used == 6 * MiB
    invited: list[bool] = []

    async def before_read() -> None:
        invited.append(True)

    late = Source(b"b" * (5 * MiB))
    with pytest.raises(SpoolFull):
        await take(late, b, 5 * MiB, before_read=before_read)
    assert late.read == 0 and invited == []  # nothing read, no 100 Continue
    assert b.used == 6 * MiB
    first.close()
    first.close()  # once only
    assert b.used == 0


async def test_a_chunked_body_growing_past_the_budget_is_cut_off_and_freed(
    tmp_path: Path,
) -> None:
    b = budget(3 * MiB)
    parts = [b"c" * MiB] * 5
    with pytest.raises(SpoolFull):
        await take(Source(*parts), b, None, directory=tmp_path)
    assert b.used == 0
    assert os.listdir(tmp_path) == []  # the temp file went with it


async def test_saved_into_the_store_gives_the_bytes_back_once(tmp_path: Path) -> None:
    b = budget(8 * MiB)
    spool = await take(Source(b"d" * (2 * MiB)), b, 2 * MiB, directory=tmp_path, digest=True)
    assert b.used == 2 * MiB
    spool.save(tmp_path / "body")
    assert b.used == 0
    spool.close()
    assert b.used == 0 and (tmp_path / "body").stat().st_size == 2 * MiB


@pytest.mark.parametrize("declared", [3 * MiB, None])
async def test_every_failed_read_gives_the_bytes_back(declared: int | None) -> None:
    b = budget(8 * MiB)
    with pytest.raises(ClientGone):  # the client went away mid-body
        await take(Source(b"e" * MiB, fail=True), b, declared)
    assert b.used == 0
    with pytest.raises(BodyTooLarge):
        await take(Source(b"f" * (3 * MiB)), b, declared, max_bytes=2 * MiB)
    assert b.used == 0
    task = asyncio.create_task(take(Source(b"g" * MiB, hang=True), b, declared))
    for _ in range(50):
        await asyncio.sleep(0.01)
        if b.used:
            break
    assert b.used > 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.used == 0


async def test_a_body_shorter_than_declared_holds_only_until_closed() -> None:
    b = budget(8 * MiB)
    spool = await take(Source(b"h" * 10), b, 4 * MiB)
    assert b.used == 4 * MiB  # reserved at the head
    spool.close()
    assert b.used == 0


def test_the_budget_never_goes_below_zero() -> None:
    b = budget(10)
    assert b.take(10) and not b.take(1)
    b.give(10)
    with pytest.raises(RuntimeError):
        b.give(1)


def test_the_limit_is_read_live() -> None:
    limit = [5]
    b = SpoolBudget(lambda: limit[0])
    assert not b.take(6)
    limit[0] = 6
    assert b.take(6)


def test_the_budget_in_effect_is_never_below_max_body_bytes() -> None:
    """A config whose max_body_bytes is over max_spooled_bytes stays valid (as before the
    key existed), and its largest body still fits when nothing else is spooled."""
    from gatekeeper.config import load_config
    from gatekeeper.proxy.handler import spool_limit

    big = load_config("limits: {max_body_bytes: 2147483648}\n")
    assert spool_limit(big) == 2147483648
    small = load_config("limits: {max_spooled_bytes: 5000000, max_body_bytes: 1000000}\n")
    assert spool_limit(small) == 5000000
