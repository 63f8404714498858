"""The deliverer in-process (issue #20 §1): a real SQLite outbox, httpx's mock transport
as the receivers. What each answer does to the outbox, and that lanes are independent."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

from gatekeeper.config import Config, load_config
from gatekeeper.jobs.guard import GuardedStore
from gatekeeper.jobs.outbox import Delivery
from gatekeeper.jobs.sqlite import SqliteJobStore
from gatekeeper.jobs.webhooks.deliver import Deliverer
from gatekeeper.observability.metrics import Metrics

SECRET = "whsec_" + base64.b64encode(b"in-process-deliverer-test-key!!!").decode()
Handler = Callable[[httpx.Request], "asyncio.Future[httpx.Response] | httpx.Response"]


def config(tmp_path: Path, secret: str = SECRET, extra: str = "") -> Config:
    (tmp_path / "s").write_text(secret)
    return load_config(
        f"""
jobs:
  webhooks:
    concurrency: 1
    max_age: 1h
    destinations:
      - {{name: a, url: http://a.test/h, secret_file: {tmp_path / "s"}}}
      - {{name: b, url: http://b.test/h, secret_file: {tmp_path / "s"}}}
{extra}"""
    )


def row(n: int, dest: str = "a", job: str = "j1", created: float | None = None) -> Delivery:
    at = time.time() if created is None else created
    url = f"http://{dest}.test/h"
    return Delivery(f"msg_{dest}{n}", job, dest, url, "job.completed", b'{"n":1}', at, at)


class Rig:
    def __init__(self, tmp_path: Path, answer: Callable[[httpx.Request], object]):
        self.store = GuardedStore(SqliteJobStore.open(tmp_path / "state"))
        self.cfg = config(tmp_path)
        self.metrics = Metrics()
        self.seen: list[httpx.Request] = []

        async def handle(request: httpx.Request) -> httpx.Response:
            self.seen.append(request)
            got = answer(request)
            if asyncio.iscoroutine(got):
                got = await got
            assert isinstance(got, httpx.Response)
            return got

        self.deliverer = Deliverer(
            self.store, lambda: self.cfg, self.metrics, transport=httpx.MockTransport(handle)
        )

    def count(self, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "gatekeeper_webhook_deliveries_total", {"outcome": outcome}
        )
        return value or 0.0


@pytest.fixture
async def running() -> AsyncIterator[Callable[[Rig], None]]:
    """Starts a rig's deliverer; at the end stops it and closes its store."""
    rigs: list[tuple[Rig, asyncio.Task[None]]] = []

    def start(rig: Rig) -> None:
        rigs.append((rig, asyncio.create_task(rig.deliverer.run())))

    yield start
    for _, t in rigs:
        t.cancel()
    await asyncio.gather(*(t for _, t in rigs), return_exceptions=True)
    for rig, _ in rigs:
        rig.store.close()


async def until(check: Callable[[], bool], limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_2xx_delivers_signed_and_the_row_goes(
    tmp_path: Path, running: Callable[[Rig], None]
) -> None:
    """A 2xx deletes the row; the request verifies with the reference library."""
    rig = Rig(tmp_path, lambda r: httpx.Response(204))
    rig.store.outbox_add([row(1)])
    running(rig)
    await until(lambda: rig.store.outbox_backlog().count == 0)
    sent = rig.seen[0]
    assert Webhook(SECRET).verify(sent.content, dict(sent.headers)) == {"n": 1}
    assert sent.headers["webhook-id"] == "msg_a1" and rig.count("delivered") == 1


async def test_410_stops_that_destination_for_that_job(
    tmp_path: Path, running: Callable[[Rig], None]
) -> None:
    """410: the job's other rows for that destination go, later ones are not written,
    and other jobs and destinations are untouched."""
    rig = Rig(tmp_path, lambda r: httpx.Response(410 if r.url.host == "a.test" else 200))
    rig.store.outbox_add([row(1), row(2), row(3, job="j2", dest="b")])
    running(rig)
    await until(lambda: rig.store.outbox_backlog().count == 0)
    assert rig.count("gone") == 1 and rig.count("delivered") == 1
    rig.store.outbox_add([row(4)])  # a later event of j1 for a: not written
    assert rig.store.outbox_pending("j1") == []


@pytest.mark.slow  # in process, but a real retry delay each: the fast tier stays under a minute
@pytest.mark.parametrize("status", [500, 302, 401])
async def test_anything_else_is_retried_with_the_same_id(
    tmp_path: Path, running: Callable[[Rig], None], status: int
) -> None:
    """A 5xx, a redirect (never followed) or a 4xx: retried, the same webhook-id."""
    answers = iter([httpx.Response(status, headers={"location": "http://evil.test/"})])
    rig = Rig(tmp_path, lambda r: next(answers, httpx.Response(200)))
    rig.store.outbox_add([row(1)])
    running(rig)
    await until(lambda: rig.store.outbox_backlog().count == 0)
    assert [r.url.host for r in rig.seen] == ["a.test", "a.test"]  # evil.test never asked
    assert {r.headers["webhook-id"] for r in rig.seen} == {"msg_a1"}
    assert rig.count("retry") == 1 and rig.count("delivered") == 1


async def test_given_up_at_max_age(tmp_path: Path, running: Callable[[Rig], None]) -> None:
    """A delivery whose next retry would pass max_age is given up: expired, the row goes."""
    rig = Rig(tmp_path, lambda r: httpx.Response(503))
    rig.store.outbox_add([row(1, created=time.time() - 3600)])
    running(rig)
    await until(lambda: rig.store.outbox_backlog().count == 0)
    assert rig.count("expired") == 1 and len(rig.seen) == 1


async def test_a_slow_destination_holds_only_its_own_lane(
    tmp_path: Path, running: Callable[[Rig], None]
) -> None:
    """Destination a never answers (its one place is held); b gets all of its deliveries."""
    hang = asyncio.Event()

    async def slow() -> httpx.Response:
        await hang.wait()
        return httpx.Response(200)

    rig = Rig(tmp_path, lambda r: slow() if r.url.host == "a.test" else httpx.Response(200))
    rows = [row(n, job=f"j{n}") for n in range(5)]
    rig.store.outbox_add(rows + [row(n, dest="b", job=f"j{n}") for n in range(20)])
    running(rig)
    await until(lambda: rig.count("delivered") == 20)
    assert [r.url.host for r in rig.seen].count("a.test") == 1  # concurrency 1: one waits
    assert rig.deliverer.backlog()["backlog"] == 5
    hang.set()
    await until(lambda: rig.store.outbox_backlog().count == 0)


async def test_no_secret_no_request(tmp_path: Path, running: Callable[[Rig], None]) -> None:
    """A destination whose secret cannot be read is never sent to unsigned: it waits."""
    rig = Rig(tmp_path, lambda r: httpx.Response(200))
    rig.cfg = config(tmp_path, secret="not-a-whsec-secret")  # new rules: read again
    rig.store.outbox_add([row(1)])
    assert rig.deliverer.keys().key_for("a") is None
    assert any("whsec_" in p for p in rig.deliverer.keys().problems)
    running(rig)
    await until(lambda: rig.count("retry") >= 1)
    assert rig.seen == [] and rig.store.outbox_backlog().count == 1
