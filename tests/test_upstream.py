"""Upstream pool parts without sockets: permits (pool limit + pool timeout) and error mapping."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from gatekeeper.config import Timeouts
from gatekeeper.core.errors import (
    BodyTooLarge,
    ClientTimeout,
    UpstreamDropped,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gatekeeper.upstream import BodyState, ClientGone, Permits, _map_error


async def test_permits_fast_path_and_fifo() -> None:
    """Free permits are taken synchronously; waiters are served in arrival order."""
    p = Permits(1)
    assert p.try_take() and not p.try_take()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await p.take()
        order.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
    await asyncio.sleep(0)
    for _ in range(3):
        p.give()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    p.give()
    assert p.try_take()


async def test_cancelled_waiter_never_loses_a_permit() -> None:
    """A waiter cancelled (pool timeout) before or after being handed a permit loses none."""
    p = Permits(1)
    assert p.try_take()
    t1 = asyncio.create_task(p.take())
    t2 = asyncio.create_task(p.take())
    await asyncio.sleep(0)
    t1.cancel()  # cancelled while waiting
    await asyncio.sleep(0)
    p.give()  # goes to t2
    await t2
    t3 = asyncio.create_task(p.take())
    await asyncio.sleep(0)
    p.give()  # handed to t3 ...
    t3.cancel()  # ... which is cancelled before it runs: the permit must pass on
    with pytest.raises(asyncio.CancelledError):
        await t3
    with pytest.raises(asyncio.CancelledError):
        await t1
    assert p.try_take() and not p.try_take()


async def test_waiter_cancelled_then_permit_given_in_the_same_tick() -> None:
    """Cancel a waiter, give() before it resumes: it raises CancelledError, nothing else."""
    p = Permits(1)
    assert p.try_take()
    waiter = asyncio.create_task(p.take())
    await asyncio.sleep(0)
    waiter.cancel()
    p.give()  # skips the cancelled future, so the permit stays free
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert p.try_take() and not p.try_take()


def _state(**kw: object) -> BodyState:
    s = BodyState()
    for k, v in kw.items():
        setattr(s, k, v)
    return s


@pytest.mark.parametrize(
    ("exc", "state", "write_expired", "expected", "gone"),
    [
        (
            aiohttp.ClientConnectorError(None, OSError(111, "refused")),  # type: ignore[arg-type]
            {},
            False,
            UpstreamUnavailable,
            True,
        ),
        (aiohttp.ConnectionTimeoutError(), {}, False, UpstreamUnavailable, True),
        (aiohttp.SocketTimeoutError(), {}, False, UpstreamTimeout, False),
        (TimeoutError(), {}, True, UpstreamTimeout, False),
        # the engine dropped a connection it had accepted (its process died): a verdict
        (aiohttp.ServerDisconnectedError(), {}, False, UpstreamDropped, True),
        (aiohttp.ClientConnectionResetError(), {}, False, UpstreamDropped, True),
        (aiohttp.ClientOSError(104, "reset"), {}, False, UpstreamDropped, True),
        (
            aiohttp.ClientResponseError(None, (), status=400),
            {},
            False,
            UpstreamProtocolError,
            False,
        ),  # type: ignore[arg-type]
        (aiohttp.ClientOSError(), {"refusal": BodyTooLarge("x")}, False, BodyTooLarge, False),
        (aiohttp.ClientOSError(), {"refusal": ClientTimeout("x")}, False, ClientTimeout, False),
        (aiohttp.ClientOSError(), {"refusal": ClientGone("x")}, False, ClientGone, False),
    ],
)
def test_error_mapping_table(
    exc: BaseException, state: dict[str, object], write_expired: bool, expected: type, gone: bool
) -> None:
    """Each aiohttp failure maps to the error (status, reason) the client is answered with,
    and says whether it is a verdict on the engine (down until its probe answers)."""
    got = _map_error(exc, _state(**state), write_expired=write_expired, timeouts=Timeouts())
    assert type(got) is expected
    assert getattr(got, "engine_gone", False) is gone


def test_cancellation_is_never_translated() -> None:
    """CancelledError is re-raised as is, never mapped to an HTTP error."""
    assert (
        _map_error(asyncio.CancelledError(), _state(), write_expired=False, timeouts=Timeouts())
        is None
    )
