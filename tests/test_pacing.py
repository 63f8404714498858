"""Refusal pacing (issue #18 §8): a retry storm is answered at a bounded rate.

The schedule's rule as a table (``core.pacing``), then the proxy's handler on a
real socket: a storm of refusals past the burst is answered later and counted,
and never while draining or with pacing off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from prometheus_client import generate_latest
from support import ADMIT_ROUTES, metric

from gatekeeper.app.wiring import build_proxy_app, create_state
from gatekeeper.config import load_config
from gatekeeper.config.limits import RefusalPacing
from gatekeeper.core.lease import Lease
from gatekeeper.core.pacing import RefusalPacer

ClientFactory = Callable[..., Awaitable[TestClient]]

RULE = RefusalPacing(rate=10.0, burst=3, max_delay=0.5)


def delays(pacer: RefusalPacer, times: list[float], rule: RefusalPacing = RULE) -> list[float]:
    return [round(pacer.delay(rule, t), 3) for t in times]


@pytest.mark.parametrize(
    ("rule", "times", "expected"),
    [
        # off: never paced, however many
        (RefusalPacing(rate=0.0, burst=0, max_delay=2.0), [0.0] * 5, [0.0] * 5),
        # the burst (3) and the turn it refills at once (rate 10/s: 0.1 s a turn) ...
        (RULE, [0.0] * 4, [0.0, 0.0, 0.0, 0.0]),
        # ... then each later one waits one more turn, up to max_delay (0.5 s), and past it
        # is answered after max_delay without taking a turn (the schedule stays 0.5 s ahead)
        (RULE, [0.0] * 11, [0.0] * 4 + [0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.5]),
        # refusals spread at the rate are never paced
        (RULE, [i * 0.1 for i in range(20)], [0.0] * 20),
        # a quiet second refills the burst
        (RULE, [0.0] * 6 + [5.0] * 4, [0.0] * 4 + [0.1, 0.2] + [0.0] * 4),
        # burst 0: the second refusal in the same instant waits its turn
        (RefusalPacing(rate=10.0, burst=0, max_delay=2.0), [0.0, 0.0, 0.0], [0.0, 0.1, 0.2]),
    ],
)
def test_the_schedule(rule: RefusalPacing, times: list[float], expected: list[float]) -> None:
    assert delays(RefusalPacer(), times, rule) == expected


def test_paced_and_capped_are_counted_and_crowded_is_never_paced() -> None:
    pacer = RefusalPacer()
    assert delays(pacer, [0.0] * 10) == [0.0] * 4 + [0.1, 0.2, 0.3, 0.4, 0.5, 0.5]
    assert (pacer.paced, pacer.capped) == (6, 1)
    assert pacer.behind(RULE, 0.0) == 0.5  # a refusal decided now would wait this long
    assert pacer.delay(RULE, 0.0, crowded=True) == 0.0
    assert (pacer.paced, pacer.capped) == (6, 1)
    assert pacer.behind(RULE, 10.0) == 0.0


# --------------------------------------------------------------------------- the handler


def _rules(pacing: dict[str, Any]) -> Any:
    doc: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:1",
        "upstream": {"url": "http://127.0.0.1:9"},  # never reached: every request is refused
        "admission": {"max_in_flight": 1},
        "limits": {"refusal_pacing": pacing},
        "routes": yaml.safe_load(ADMIT_ROUTES)["routes"],
    }
    return load_config(yaml.safe_dump(doc))


async def _storm(
    aiohttp_client: ClientFactory, pacing: dict[str, Any], n: int, *, draining: bool = False
) -> tuple[list[tuple[int, str]], float, str]:
    """``n`` refusals at once while the one slot is held: (status and reason of each,
    gatekeeper_refusals_paced_total, the metrics text)."""
    st = await create_state(_rules(pacing))
    st.set_upstream_up(True)
    held = st.gate.try_admit("generate", st.clock())
    assert isinstance(held, Lease)
    st.gate.draining = draining
    client = await aiohttp_client(build_proxy_app(st, monitor=False, probe=False))

    async def one() -> tuple[int, str]:
        resp = await client.post("/generate", json={"lyrics": "again"})
        return resp.status, (await resp.json())["reason"]

    answers = await asyncio.gather(*(one() for _ in range(n)))
    held.release()
    text = generate_latest(st.metrics.registry).decode()
    return answers, metric(text, "gatekeeper_refusals_paced_total"), text


async def test_a_storm_past_the_burst_is_answered_later_with_the_same_answer(
    aiohttp_client: ClientFactory,
) -> None:
    answers, paced, text = await _storm(
        aiohttp_client, {"rate": 20, "burst": 4, "max_delay": "400ms"}, 12
    )
    assert answers == [(503, "busy")] * 12
    # the burst and one turn at once, the other 7 each waited for a turn
    assert paced == 7
    assert metric(text, 'gatekeeper_rejections_total{reason="busy",route="generate"}') == 12


async def test_no_pacing_when_off_or_draining(aiohttp_client: ClientFactory) -> None:
    answers, paced, _ = await _storm(aiohttp_client, {"rate": 0}, 12)
    assert answers == [(503, "busy")] * 12 and paced == 0
    answers, paced, _ = await _storm(
        aiohttp_client, {"rate": 1, "burst": 0, "max_delay": "30s"}, 12, draining=True
    )
    assert answers == [(503, "draining")] * 12 and paced == 0
