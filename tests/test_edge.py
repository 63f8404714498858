"""The public listener's connection table: head deadlines and the connection cap.

Pure tables over ``edge.Connections`` with a fake clock and fake transports, then
the real ``gatekeeper run`` process under slowloris: 1,000 connections that never
finish their request head, with the process's open-file limit at systemd's usual
1,024, while a legitimate client polls and generates.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from support import (
    eventually,
    find_binary,
    metric,
    raise_fd_limit,
    start_engine,
    start_gatekeeper,
    wait_metrics,
)

from gatekeeper.config import Limits
from gatekeeper.proxy.connections import Connections


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""
        self.state = "open"

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.state = "closed"

    def abort(self) -> None:
        self.state = "aborted"

    def is_closing(self) -> bool:
        return self.state != "open"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def table(
    cap: int = 3, header_timeout: float = 10.0
) -> tuple[Connections, Clock, dict[str, FakeTransport]]:
    clock = Clock()
    lim = replace(Limits(), max_client_connections=cap, header_timeout=header_timeout)
    conns = Connections(lambda: lim, clock)
    return conns, clock, {}


def open_conn(conns: Connections, transports: dict[str, FakeTransport], key: str) -> bool:
    t = FakeTransport()
    transports[key] = t
    return conns.opened(key, t)  # type: ignore[arg-type]


def test_fresh_connection_must_send_its_head_within_the_timeout() -> None:
    """A connection that has not completed a head header_timeout after opening gets 408."""
    conns, clock, ts = table()
    open_conn(conns, ts, "a")
    clock.now += 9.9
    assert conns.sweep() == 0
    clock.now += 0.1
    assert conns.sweep() == 1
    assert ts["a"].written.startswith(b"HTTP/1.1 408 ") and ts["a"].state == "closed"
    assert conns.open == 0 and conns.closed["header_timeout"] == 1


def test_a_running_request_has_no_head_deadline() -> None:
    """Between begin and end (a 15-minute generation) the connection is never timed out."""
    conns, clock, ts = table()
    open_conn(conns, ts, "a")
    clock.now += 1
    conns.begin("a")
    clock.now += 3600
    assert conns.sweep() == 0 and ts["a"].state == "open"


def test_keepalive_deadline_counts_from_the_first_byte_of_the_next_head() -> None:
    """After a request, idling is keepalive's business; a started head has header_timeout."""
    conns, clock, ts = table()
    open_conn(conns, ts, "a")
    conns.begin("a")
    conns.end("a")
    clock.now += 60  # idle keep-alive: not ours to close
    assert conns.sweep() == 0
    conns.received("a")  # first byte of the next head
    clock.now += 9
    conns.received("a")  # more bytes do not move the deadline
    assert conns.sweep() == 0
    clock.now += 1
    assert conns.sweep() == 1


@pytest.mark.parametrize(
    ("busy", "evicted"),
    [
        ((), "a"),  # nobody busy: the oldest goes
        (("a",), "b"),  # the oldest runs a request: the oldest waiting one goes
        (("a", "b"), "c"),
    ],
)
def test_over_the_cap_the_oldest_waiting_connection_is_closed(
    busy: tuple[str, ...], evicted: str
) -> None:
    """A new connection over the cap closes the oldest one still waiting for its head."""
    conns, _, ts = table(cap=3)
    for key in "abc":
        open_conn(conns, ts, key)
    for key in busy:
        conns.begin(key)
    assert open_conn(conns, ts, "d") is True
    assert ts[evicted].state == "aborted"
    assert [k for k, t in ts.items() if t.state != "open"] == [evicted]
    assert conns.open == 3 and conns.closed["connection_limit"] == 1


def test_when_every_connection_runs_a_request_the_new_one_is_refused() -> None:
    """Running requests (a generation, its downloads) are never evicted for a newcomer."""
    conns, _, ts = table(cap=2)
    for key in "ab":
        open_conn(conns, ts, key)
        conns.begin(key)
    assert open_conn(conns, ts, "c") is False
    assert ts["a"].state == ts["b"].state == "open"
    assert conns.open == 2


def test_cap_is_lowered_to_what_the_fd_limit_allows() -> None:
    """The effective cap is min(max_client_connections, the open-file ceiling)."""
    conns, _, _ = table(cap=1000)
    conns.cap_ceiling = 960
    assert conns.cap == 960
    conns.cap_ceiling = 5000
    assert conns.cap == 1000


def test_pipelined_overlap_keeps_the_connection_busy() -> None:
    """begin/begin/end leaves one request running: still no deadline."""
    conns, clock, ts = table()
    open_conn(conns, ts, "a")
    conns.begin("a")
    conns.begin("a")
    conns.end("a")
    clock.now += 100
    assert conns.sweep() == 0
    conns.end("a")
    conns.end("a")  # an extra end is ignored, never negative
    conns.received("a")
    clock.now += 10
    assert conns.sweep() == 1


# --------------------------------------------------------------------------- real process

SLOW = 1000
OPEN = "gatekeeper_client_connections"
EVICTED = 'gatekeeper_client_connections_closed_total{reason="connection_limit"}'
TIMED_OUT = 'gatekeeper_client_connections_closed_total{reason="header_timeout"}'


async def _slowloris(
    host: str, port: int, opened: list[asyncio.StreamWriter], refused: list[OSError]
) -> None:
    """Open a connection and send a request head that never ends."""
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        refused.append(exc)
        return
    opened.append(writer)
    writer.write(b"GET /progress HTTP/1.1\r\nHost: x\r\n")
    try:
        for _ in range(60):
            await asyncio.sleep(0.5)
            writer.write(b"X-a: b\r\n")
            await writer.drain()
    except (ConnectionError, OSError):
        pass


@pytest.mark.slow
async def test_slowloris_under_a_1024_fd_limit_never_locks_out_real_clients(
    tmp_path: Path,
) -> None:
    """1,000 never-ending heads at ulimit -n 1024: polls and a generation are still served."""
    raise_fd_limit(3 * SLOW)  # this process's sockets; gatekeeper gets its own 1,024
    engine, engine_url = start_engine(tmp_path, seconds=1.0)
    rules = "limits:\n  header_timeout: 3s\nupstream:\n  probe:\n    interval: 1s\n"
    gk, url, admin = start_gatekeeper(tmp_path, rules, engine_url, nofile=1024)
    opened: list[asyncio.StreamWriter] = []
    refused: list[OSError] = []
    try:
        assert "lowered to 960 by the open-file limit" in gk.output()
        host, port = url.removeprefix("http://").split(":")
        attack = [
            asyncio.create_task(_slowloris(host, int(port), opened, refused)) for _ in range(SLOW)
        ]
        # Every slow connection is open (or was refused), and gatekeeper holds each one
        # (or evicted it): the cap's work is done before the real clients come.
        assert await eventually(lambda: len(opened) + len(refused) == SLOW, 30)
        await wait_metrics(
            admin,
            lambda t: (
                metric(t, OPEN) + metric(t, EVICTED, default=0) + metric(t, TIMED_OUT, default=0)
                >= len(opened)
            ),
            timeout=30,
        )
        timings = []
        async with aiohttp.ClientSession() as http:
            for _ in range(10):
                t0 = time.monotonic()
                async with http.get(url + "/progress") as r:
                    assert r.status == 200
                timings.append(time.monotonic() - t0)
            t0 = time.monotonic()
            async with http.post(url + "/generate", json={"lyrics": "la", "seconds": 0.2}) as r:
                assert r.status == 200, await r.text()
                assert (await r.read())[:4] == b"RIFF"
            generation = time.monotonic() - t0
            async with http.get(admin + "/metrics") as r:
                metrics = await r.text()
        open_now = metric(metrics, OPEN)
        evicted = metric(metrics, EVICTED)
        assert open_now <= 960
        assert evicted >= SLOW - 960  # the cap held: the oldest waiting ones went
        # The head deadline (3 s) closes what is left of the attack.
        await wait_metrics(admin, lambda t: metric(t, OPEN) < 10, timeout=15)
        async with aiohttp.ClientSession() as http, http.get(admin + "/metrics") as r:
            metrics = await r.text()
        timed_out = metric(metrics, TIMED_OUT)
        assert timed_out >= 900
        assert metric(metrics, OPEN) < 10
        print(
            f"\nslowloris {SLOW} conns at nofile=1024: poll p50 {sorted(timings)[5] * 1000:.1f} ms,"
            f" max {max(timings) * 1000:.1f} ms; generation {generation:.2f}s;"
            f" evicted {evicted:.0f}, head timeouts {timed_out:.0f}"
        )
        for task in attack:
            task.cancel()
        await asyncio.gather(*attack, return_exceptions=True)
    finally:
        for w in opened:
            w.close()
        assert gk.stop() == 0
        engine.stop()
    assert "Traceback" not in gk.output()


@pytest.mark.slow  # real processes
async def test_a_connection_that_sends_nothing_gets_408_after_header_timeout(
    tmp_path: Path,
) -> None:
    """Silence after connecting is closed with 408 at header_timeout, logged with the key."""
    engine, engine_url = start_engine(tmp_path)
    gk, url, _ = start_gatekeeper(tmp_path, "limits:\n  header_timeout: 1s\n", engine_url)
    try:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET / HTTP/1.1\r\nHo")
        t0 = time.monotonic()
        data = await asyncio.wait_for(reader.read(), timeout=5)
        elapsed = time.monotonic() - t0
        assert data.startswith(b"HTTP/1.1 408 Request Timeout"), data
        assert 0.9 <= elapsed < 2.5, elapsed
        writer.close()
        await asyncio.sleep(0.2)
    finally:
        assert gk.stop() == 0
        engine.stop()
    assert "limits.header_timeout" in gk.output()


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["-H", "-B"])
async def test_slowhttptest_slow_headers_and_bodies_do_not_lock_out_users(
    tmp_path: Path, mode: str
) -> None:
    """The real slowhttptest (-H slowloris, -B slow body on /generate) with 1,000 connections:
    a user still polls and generates; no slow body ever holds the generation slot."""
    tool = find_binary("slowhttptest")
    raise_fd_limit(3 * SLOW)
    engine, engine_url = start_engine(tmp_path, seconds=1.0)
    gk, url, admin = start_gatekeeper(tmp_path, "limits:\n  header_timeout: 5s\n", engine_url)
    target = url + ("/generate" if mode == "-B" else "/progress")
    args = ["-c", str(SLOW), "-r", "500", "-i", "1", "-s", "100000", "-l", "12", "-x", "10"]
    attack = await asyncio.create_subprocess_exec(
        tool,
        mode,
        *args,
        "-p",
        "3",
        "-u",
        target,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # The attack is at full strength: gatekeeper holds (nearly) all its connections.
        metrics = await wait_metrics(admin, lambda t: metric(t, OPEN) >= 0.9 * SLOW, timeout=15)
        open_during = metric(metrics, OPEN)
        async with aiohttp.ClientSession() as http:
            async with http.get(admin + "/status") as r:
                assert (await r.json())["in_flight"] == 0  # no slow body holds the slot
            timings = []
            for _ in range(5):
                t0 = time.monotonic()
                async with http.get(url + "/progress") as r:
                    assert r.status == 200
                timings.append(time.monotonic() - t0)
            async with http.post(url + "/generate", json={"lyrics": "la", "seconds": 0.2}) as r:
                assert r.status == 200, await r.text()
        print(
            f"\nslowhttptest {mode} {SLOW} conns: {open_during:.0f} open on gatekeeper,"
            f" poll max {max(timings) * 1000:.1f} ms, generation 200"
        )
        if mode == "-B":
            assert open_during >= 500  # the attack really held connections open
    finally:
        if attack.returncode is None:
            attack.kill()
        await attack.wait()
        assert gk.stop() == 0
        engine.stop()


def test_close_logs_are_throttled_per_reason(caplog: pytest.LogCaptureFixture) -> None:
    """At most one line per reason per 10 s, with the count; one reason never delays another."""
    conns, clock, ts = table(cap=1, header_timeout=1.0)
    with caplog.at_level("WARNING", logger="gatekeeper.edge"):
        open_conn(conns, ts, "a")
        clock.now += 1
        conns.sweep()  # header_timeout: logged at once
        open_conn(conns, ts, "b")
        clock.now += 5
        open_conn(conns, ts, "c")  # connection_limit, 5 s later: logged at once too
        open_conn(conns, ts, "d")  # within 10 s: counted, not logged
        clock.now += 10
        conns.sweep()
    lines = [r.getMessage() for r in caplog.records]
    head, cap = "that sent no complete request head", "over the cap of 1"
    assert head in lines[0]  # a, at once
    assert cap in lines[1]  # b evicted by c, at once although a head line came 5 s before
    # The last sweep: d timed out (its own line); c's eviction by d, held back, is flushed.
    assert sorted(head in line for line in lines[2:]) == [False, True], lines
    assert all("closed 1 connection(s)" in line for line in lines)
