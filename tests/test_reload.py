"""Hot reload of rules.yaml (issue #5 §1): pure tables, then in-process apps on real sockets."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from support import connections_closed, eventually, settle

from gatekeeper.admin import build_admin_app
from gatekeeper.app.state import AppState
from gatekeeper.app.wiring import build_proxy_app, create_state
from gatekeeper.config import ConfigProblem, HostPort, load_config
from gatekeeper.lifecycle.changes import (
    Change,
    Overrides,
    ReloadResult,
    diff,
    keep_restart_only,
    problem_json,
)
from gatekeeper.lifecycle.epochs import RuntimeUsage
from gatekeeper.lifecycle.reload import Reloader

# --------------------------------------------------------------------------- pure tables

BASE = """
listen: 127.0.0.1:8080
admin_listen: 127.0.0.1:9090
upstream:
  url: http://127.0.0.1:8000
admission:
  max_in_flight: 1
"""


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("", []),
        (
            "  expected_seconds: 42",
            [Change("admission.expected_seconds", 600.0, 42.0)],
        ),
        (
            "  resources:\n    cpu_percent: {reject_above: 70, recover_below: 60}",
            [
                Change("admission.resources.cpu_percent.reject_above", 90.0, 70.0),
                Change("admission.resources.cpu_percent.recover_below", 75.0, 60.0),
            ],
        ),
        (
            "messages:\n  busy: later",
            [Change("messages.busy", load_config("").messages["busy"], "later")],
        ),
        (
            "routes:\n  - {name: g, match: {path: /g}, action: admit}",
            [
                Change(
                    "routes",
                    [
                        "generate: POST /generate/** queue",
                        "batch-generate: POST /batch-generate/** batch (items /items -> POST"
                        " /generate each, at most 20)",
                    ],
                    ["g: * /g admit"],
                )
            ],
        ),
    ],
)
def test_diff_lists_changed_leaf_settings(extra: str, expected: list[Change]) -> None:
    """diff names every changed setting by its dotted YAML path, with old and new values."""
    old = load_config(BASE)
    new = load_config(BASE + extra + "\n")
    assert diff(old, new) == expected


def test_diff_masks_credentials_in_upstream_urls() -> None:
    """A changed upstream URL is reported without its userinfo."""
    old = load_config(BASE)
    new = load_config(BASE.replace("http://127.0.0.1:8000", "http://u:hunter2@10.0.0.9:8000"))
    (change,) = diff(old, new)
    assert change == Change("upstream.url", "http://127.0.0.1:8000", "http://***@10.0.0.9:8000")


@pytest.mark.parametrize(
    ("file_listen", "file_admin", "restart_keys"),
    [
        ("127.0.0.1:8080", "127.0.0.1:9090", []),
        ("0.0.0.0:8081", "127.0.0.1:9090", ["listen"]),
        ("127.0.0.1:8080", "127.0.0.1:9999", ["admin_listen"]),
        ("0.0.0.0:8081", "127.0.0.1:9999", ["listen", "admin_listen"]),
    ],
)
def test_listener_changes_need_a_restart_and_keep_the_running_value(
    file_listen: str, file_admin: str, restart_keys: list[str]
) -> None:
    """listen/admin_listen changes are reported and not applied; everything else is."""
    running = load_config(BASE)
    text = BASE.replace("127.0.0.1:8080", file_listen).replace("127.0.0.1:9090", file_admin)
    loaded = load_config(text + "  expected_seconds: 5\n")
    kept, restart = keep_restart_only(running, loaded)
    assert [c.key for c in restart] == restart_keys
    assert (kept.listen, kept.admin_listen) == (running.listen, running.admin_listen)
    assert kept.admission.expected_seconds == 5
    assert diff(running, kept) == [Change("admission.expected_seconds", 600.0, 5.0)]


def test_overrides_beat_the_file() -> None:
    """Command-line overrides are re-applied to every loaded file."""
    ov = Overrides(upstream="http://10.1.1.1:1", listen="127.0.0.1:1", admin_listen=None)
    cfg = ov.apply(load_config(BASE))
    assert cfg.upstream.url == "http://10.1.1.1:1"
    assert cfg.listen == HostPort("127.0.0.1", 1)
    assert cfg.admin_listen == HostPort("127.0.0.1", 9090)


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        (
            ConfigProblem("admission.max_in_flight", 7, "must be an integer", "one", True),
            {
                "path": "admission.max_in_flight",
                "line": 7,
                "message": "must be an integer",
                "value": "one",
            },
        ),
        (
            ConfigProblem("x.y", 3, "unknown key"),
            {"path": "x.y", "line": 3, "message": "unknown key", "value": None},
        ),
        (
            ConfigProblem("x", 1, "bad", {1, 2}, True),
            {"path": "x", "line": 1, "message": "bad", "value": "{1, 2}"},
        ),
    ],
)
def test_problem_json(problem: ConfigProblem, expected: dict[str, Any]) -> None:
    """Each error is answered as {path, line, message, value}, value JSON-safe."""
    assert problem_json(problem) == expected
    json.dumps(problem_json(problem))


def test_outcome_json_shapes() -> None:
    """Success carries changed/needs_restart; failure carries errors; both name the trigger."""
    ok = ReloadResult(True, "SIGHUP", "r.yaml", (Change("a", 1, 2),), (Change("listen", "x", "y"),))
    assert ok.to_json() == {
        "result": "success",
        "trigger": "SIGHUP",
        "source": "r.yaml",
        "changed": [{"key": "a", "old": 1, "new": 2}],
        "needs_restart": [{"key": "listen", "old": "x", "new": "y"}],
    }
    bad = ReloadResult(False, "watch", "r.yaml", errors=(ConfigProblem("a", 2, "m"),))
    assert bad.to_json()["errors"] == [{"path": "a", "line": 2, "message": "m", "value": None}]


def test_runtime_usage_counts_requests_by_the_epoch_they_entered() -> None:
    """An epoch is idle once every request that entered at or before it has left."""
    u = RuntimeUsage()
    a = u.enter()  # epoch 0
    ended = u.advance()  # reload: epoch 0 ended
    b = u.enter()  # epoch 1
    assert (a, ended, b) == (0, 0, 1)
    assert u.open_through(0) == 1
    assert u.open_through(1) == 2
    u.leave(b)
    assert u.open_through(0) == 1
    u.leave(a)
    assert u.open_through(0) == 0
    assert u.open_through(1) == 0


async def test_runtime_usage_wakes_a_waiter_when_the_epoch_drains() -> None:
    """wait_idle_through returns as soon as the last old request leaves, not before."""
    u = RuntimeUsage()
    token = u.enter()
    ended = u.advance()
    newer = u.enter()
    waiter = asyncio.create_task(u.wait_idle_through(ended))
    await settle()  # the waiter runs to its wait
    u.leave(newer)
    await settle()  # woken by the newer request's leaving, it rechecked and waits again
    assert not waiter.done()
    u.leave(token)
    await asyncio.wait_for(waiter, 1.0)


# --------------------------------------------------------------------------- in-process

# The log line of a retiring pool that waits for running requests (gated and passthrough).
STAYS_OPEN = re.compile(r"old (gated|passthrough) upstream pool .* stays open for \d+ running")


@dataclass
class FakeEngine:
    """An engine on a real socket whose /generate answers only when released."""

    server: TestServer
    name: str
    release: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0
    seen: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def until_waiting(self, n: int) -> None:
        for _ in range(200):
            if self.waiting >= n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{self.name}: {self.waiting} waiting, expected {n}")


async def fake_engine(aiohttp_server: Any, name: str) -> FakeEngine:
    holder: list[FakeEngine] = []

    async def generate(request: web.Request) -> web.Response:
        eng = holder[0]
        eng.seen.append(f"{request.method} {request.path}")
        eng.waiting += 1
        try:
            await eng.release.wait()
        finally:
            eng.waiting -= 1
        return web.Response(body=b"SONG-" + name.encode() * 1000)

    async def other(request: web.Request) -> web.Response:
        holder[0].seen.append(f"{request.method} {request.path}")
        return web.json_response({"engine": name})

    app = web.Application()
    app.router.add_post("/generate", generate)
    app.router.add_route("*", "/{tail:.*}", other)
    eng = FakeEngine(await aiohttp_server(app), name)
    holder.append(eng)
    return eng


RULES = """
upstream:
  url: {url}
admission:
  max_in_flight: {max}
  sample_interval: 50ms
  expected_seconds: 100
  resources:
    source: file
    file: {readings}
    cpu_percent: {{reject_above: {cpu_reject}, recover_below: {cpu_recover}}}
reload:
  watch: {watch}
  watch_interval: 50ms
# These tests are about admit-route semantics (busy at once); the waiting room has its own.
routes:
  - name: generate
    match: {{methods: [POST], path: /generate/**}}
    action: admit
"""


@dataclass
class Rig:
    """gatekeeper's two apps in-process, a rules file on disk and its reloader."""

    path: Path
    readings: Path
    st: AppState
    reloader: Reloader
    proxy: TestClient[Any, Any]
    admin: TestClient[Any, Any]
    params: dict[str, Any]

    def write(self, **changes: Any) -> None:
        self.params.update(changes)
        self.path.write_text(RULES.format(**self.params))

    async def reload(self, **changes: Any) -> tuple[int, dict[str, Any]]:
        self.write(**changes)
        resp = await self.admin.post("/reload")
        return resp.status, await resp.json()

    def metric(self, name: str, labels: str = "") -> float:
        value = self.st.metrics.registry.get_sample_value(
            name, dict(kv.split("=") for kv in labels.split(",")) if labels else None
        )
        assert value is not None, name
        return value


@pytest.fixture
def make_rig(tmp_path: Path, aiohttp_client: Any) -> Callable[..., Awaitable[Rig]]:
    async def make(url: str, *, monitor: bool = False, **params: Any) -> Rig:
        readings = tmp_path / "readings.json"
        readings.write_text(json.dumps({"cpu_percent": 60, "memory_percent": 10}))
        p = {
            "url": url,
            "max": 1,
            "readings": readings,
            "cpu_reject": 90,
            "cpu_recover": 75,
            "watch": "false",
        }
        p.update(params)
        path = tmp_path / "rules.yaml"
        path.write_text(RULES.format(**p))
        st = await create_state(load_config(path.read_text(), source=str(path)))
        rl = Reloader(st, str(path))
        proxy = await aiohttp_client(build_proxy_app(st, monitor=monitor, probe=False, reloader=rl))
        admin = await aiohttp_client(build_admin_app(st, rl))
        return Rig(path, readings, st, rl, proxy, admin, p)

    return make


async def _generate(rig: Rig) -> tuple[int, bytes, str | None]:
    resp = await rig.proxy.post("/generate", data=b"{}")
    return resp.status, await resp.read(), resp.headers.get("X-Gatekeeper-Reason")


async def test_lowering_max_in_flight_cancels_nothing(
    aiohttp_server: Any, make_rig: Callable[..., Awaitable[Rig]]
) -> None:
    """Two generations run; max_in_flight 2 -> 1 keeps both, and admits again only at 0."""
    eng = await fake_engine(aiohttp_server, "A")
    rig = await make_rig(eng.url, max=2)
    first = asyncio.create_task(_generate(rig))
    second = asyncio.create_task(_generate(rig))
    await eng.until_waiting(2)
    status, body = await rig.reload(max=1)
    assert status == 200, body
    assert body["changed"] == [{"key": "admission.max_in_flight", "old": 2, "new": 1}]
    assert rig.st.gate.in_flight == 2
    assert (await _generate(rig))[0::2] == (503, "busy")
    eng.release.set()
    assert (await first)[:2] == (200, b"SONG-" + b"A" * 1000)
    assert (await second)[:2] == (200, b"SONG-" + b"A" * 1000)
    assert rig.st.gate.in_flight == 0
    assert (await _generate(rig))[0] == 200


async def test_raising_max_in_flight_admits_next_to_a_running_generation(
    aiohttp_server: Any, make_rig: Callable[..., Awaitable[Rig]]
) -> None:
    """max_in_flight 1 -> 2 while one runs: the next request is admitted at once."""
    eng = await fake_engine(aiohttp_server, "A")
    rig = await make_rig(eng.url, max=1)
    first = asyncio.create_task(_generate(rig))
    await eng.until_waiting(1)
    assert (await _generate(rig))[0::2] == (503, "busy")
    assert (await rig.reload(max=2))[0] == 200
    second = asyncio.create_task(_generate(rig))
    await eng.until_waiting(2)
    eng.release.set()
    assert [(await t)[0] for t in (first, second)] == [200, 200]


async def test_threshold_change_applies_at_the_next_sample(
    aiohttp_server: Any, make_rig: Callable[..., Awaitable[Rig]]
) -> None:
    """cpu reject_above 90 -> 50 with CPU at 60%: admissions stop, the running one finishes."""
    eng = await fake_engine(aiohttp_server, "A")
    rig = await make_rig(eng.url, monitor=True, max=2)
    running = asyncio.create_task(_generate(rig))
    await eng.until_waiting(1)
    assert (await rig.reload(cpu_reject=50, cpu_recover=40))[0] == 200
    for _ in range(100):
        if rig.st.gate.resources.cpu_overloaded:
            break
        await asyncio.sleep(0.02)
    assert (await _generate(rig))[0::2] == (503, "cpu")
    eng.release.set()
    assert (await running)[0] == 200


async def test_expected_seconds_reload_moves_the_estimator_prior(
    aiohttp_server: Any, make_rig: Callable[..., Awaitable[Rig]]
) -> None:
    """admission.expected_seconds is the estimator's prior after a reload."""
    eng = await fake_engine(aiohttp_server, "A")
    rig = await make_rig(eng.url)
    assert rig.st.gate.estimator.expected == 100
    rig.path.write_text(
        rig.path.read_text().replace("expected_seconds: 100", "expected_seconds: 7")
    )
    assert (await rig.admin.post("/reload")).status == 200
    assert rig.st.gate.estimator.expected == 7


async def test_invalid_file_keeps_the_old_rules_and_answers_400_with_lines(
    aiohttp_server: Any, make_rig: Callable[..., Awaitable[Rig]]
) -> None:
    """Every problem comes back with path and line; rules, counters and flag behave."""
    eng = await fake_engine(aiohttp_server, "A")
    rig = await make_rig(eng.url, max=1)
    before = rig.st.runtime
    status, body = await rig.reload(max="two", cpu_reject=50, cpu_recover=70)
    assert status == 400
    assert body["result"] == "failure"
    assert body["errors"] == [
        {
            "path": "admission.max_in_flight",
            "line": 5,
            "message": "must be an integer",
            "value": "two",
        },
        {
            "path": "admission.resources.cpu_percent.recover_below",
            "line": 11,
            "message": "must be <= reject_above (50) for hysteresis",
            "value": 70.0,
        },
    ]
    assert rig.st.runtime is before
    assert rig.st.gate.limits.max_in_flight == 1
    assert rig.st.config_reload_failed is True
    assert rig.metric("gatekeeper_config_reloads_total", "result=failure") == 1
    assert rig.metric("gatekeeper_config_reloads_total", "result=success") == 0
    stamp = rig.metric("gatekeeper_config_last_reload_success_timestamp_seconds")

    status, body = await rig.reload(max=3, cpu_reject=90, cpu_recover=75)
    assert status == 200
    assert rig.st.config_reload_failed is False
    assert rig.st.gate.limits.max_in_flight == 3
    assert rig.metric("gatekeeper_config_reloads_total", "result=success") == 1
    assert rig.metric("gatekeeper_config_last_reload_success_timestamp_seconds") >= stamp


async def test_unreadable_file_is_a_failed_reload(
    aiohttp_server: Any, make_rig: Callable[..., Awaitable[Rig]]
) -> None:
    """A rules file that vanished is reported as an error, not a crash."""
    eng = await fake_engine(aiohttp_server, "A")
    rig = await make_rig(eng.url)
    rig.path.unlink()
    resp = await rig.admin.post("/reload")
    assert resp.status == 400
    (err,) = (await resp.json())["errors"]
    assert err["message"].startswith("cannot read file")


async def test_upstream_change_applies_to_new_requests_and_old_pool_closes_when_idle(
    aiohttp_server: Any, make_rig: Callable[..., Awaitable[Rig]], caplog: pytest.LogCaptureFixture
) -> None:
    """A generation on engine A survives a switch to B; A's pool closes only after it ends."""
    caplog.set_level(logging.INFO, logger="gatekeeper.reload")
    a = await fake_engine(aiohttp_server, "A")
    b = await fake_engine(aiohttp_server, "B")
    rig = await make_rig(a.url, max=2)
    old = rig.st.runtime
    running = asyncio.create_task(_generate(rig))
    await a.until_waiting(1)
    status, body = await rig.reload(url=b.url)
    assert status == 200
    assert body["changed"] == [{"key": "upstream.url", "old": a.url, "new": b.url}]
    assert rig.st.runtime.gated is not old.gated
    assert (await (await rig.proxy.get("/ping")).json()) == {"engine": "B"}
    # The retirement of the old pools has looked and decided to wait for the running song.
    assert await eventually(lambda: len(STAYS_OPEN.findall(caplog.text)) == 2)
    await settle()
    assert not old.gated.session.closed
    assert not old.passthrough.session.closed
    a.release.set()
    assert await running == (200, b"SONG-" + b"A" * 1000, None)
    for _ in range(100):
        if old.gated.session.closed and old.passthrough.session.closed:
            break
        await asyncio.sleep(0.01)
    assert old.gated.session.closed and old.passthrough.session.closed
    assert not rig.st.runtime.gated.session.closed


async def test_reload_never_closes_a_pool_under_a_finish_job_whose_client_left(
    aiohttp_server: Any, make_rig: Callable[..., Awaitable[Rig]], caplog: pytest.LogCaptureFixture
) -> None:
    """The client leaves (its handler is cancelled), a reload replaces the pools: the
    generation still holds its slot and its old pool until the engine answers."""
    caplog.set_level(logging.INFO, logger="gatekeeper.reload")
    a = await fake_engine(aiohttp_server, "A")
    b = await fake_engine(aiohttp_server, "B")
    rig = await make_rig(a.url, max=1)
    old = rig.st.runtime
    assert rig.proxy.server.port is not None
    _, writer = await asyncio.open_connection("127.0.0.1", rig.proxy.server.port)
    writer.write(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    await writer.drain()
    await a.until_waiting(1)
    writer.transport.abort()  # aiohttp's test server cancels the handler now
    assert await eventually(lambda: connections_closed(rig.proxy.server))
    status, _ = await rig.reload(url=b.url)
    assert status == 200
    # The retirement of the old pools has looked and decided to wait for the running song.
    assert await eventually(lambda: len(STAYS_OPEN.findall(caplog.text)) == 2)
    await settle()
    assert rig.st.gate.in_flight == 1  # the engine is still computing
    assert not old.gated.session.closed  # and its connection was not cut by the reload
    a.release.set()
    for _ in range(100):
        if rig.st.gate.in_flight == 0 and old.gated.session.closed:
            break
        await asyncio.sleep(0.01)
    assert rig.st.gate.in_flight == 0 and old.gated.session.closed
    assert a.seen == ["POST /generate"]


async def test_unchanged_pools_are_kept_warm(
    aiohttp_server: Any, make_rig: Callable[..., Awaitable[Rig]]
) -> None:
    """A reload that leaves upstream settings alone keeps the same pools (and connections)."""
    eng = await fake_engine(aiohttp_server, "A")
    rig = await make_rig(eng.url)
    old = rig.st.runtime
    assert (await rig.reload(max=4))[0] == 200
    assert rig.st.runtime is not old
    assert rig.st.runtime.gated is old.gated
    assert rig.st.runtime.passthrough is old.passthrough


async def test_listen_change_is_reported_as_needs_restart(
    aiohttp_server: Any, make_rig: Callable[..., Awaitable[Rig]]
) -> None:
    """A new listen address is answered as needs_restart and not applied."""
    eng = await fake_engine(aiohttp_server, "A")
    rig = await make_rig(eng.url)
    running = rig.st.config.listen
    rig.path.write_text(rig.path.read_text() + "listen: 127.0.0.1:1\n")
    resp = await rig.admin.post("/reload")
    body = await resp.json()
    assert resp.status == 200
    assert body["needs_restart"] == [{"key": "listen", "old": str(running), "new": "127.0.0.1:1"}]
    assert body["changed"] == []
    assert rig.st.config.listen == running


async def test_cli_overrides_survive_a_reload(
    aiohttp_server: Any, make_rig: Callable[..., Awaitable[Rig]]
) -> None:
    """--upstream given on the command line keeps winning over upstream.url after a reload."""
    a = await fake_engine(aiohttp_server, "A")
    b = await fake_engine(aiohttp_server, "B")
    rig = await make_rig(b.url)
    rig.reloader.overrides = Overrides(upstream=a.url)
    status, body = await rig.reload(max=2)
    assert status == 200
    assert rig.st.config.upstream.url == a.url
    assert {c["key"] for c in body["changed"]} == {"admission.max_in_flight", "upstream.url"}
    assert (await (await rig.proxy.get("/x")).json()) == {"engine": "A"}


class Stop(Exception):
    """Raised by a fake sleep to end an endless loop after a few steps."""


async def test_watch_mode_reloads_on_change_only(tmp_path: Path) -> None:
    """With reload.watch a content change reloads once; a touch or a broken file do not loop."""
    p = {"url": "http://127.0.0.1:1", "max": 1, "readings": tmp_path / "r.json"}
    p.update(cpu_reject=90, cpu_recover=75, watch="true")
    path = tmp_path / "rules.yaml"
    mtimes = itertools.count(1_700_000_000 * 10**9, 10**9)

    def touch() -> None:
        # Each write a new mtime: a coarse file-system clock must not hide a change.
        t = next(mtimes)
        os.utime(path, ns=(t, t))

    def write(**changes: Any) -> None:
        p.update(changes)
        path.write_text(RULES.format(**p))
        touch()

    def reloads(result: str) -> float | None:
        name = "gatekeeper_config_reloads_total"
        return st.metrics.registry.get_sample_value(name, {"result": result})

    write()
    st = await create_state(load_config(path.read_text(), source=str(path)))
    rl = Reloader(st, str(path))
    try:
        assert await rl.poll_once() is None  # nothing changed since start

        write(max=5)
        out = await rl.poll_once()
        assert out is not None and out.ok and out.trigger == "watch"
        assert st.gate.limits.max_in_flight == 5
        assert await rl.poll_once() is None  # reloaded once, not at every step
        assert reloads("success") == 1

        path.write_text(path.read_text())  # same bytes, new mtime
        touch()
        assert await rl.poll_once() is None
        assert reloads("success") == 1

        write(max="x")
        out = await rl.poll_once()
        assert out is not None and not out.ok
        assert st.config_reload_failed
        for _ in range(6):  # the same broken file is not retried
            assert await rl.poll_once() is None
        assert reloads("failure") == 1
        assert st.gate.limits.max_in_flight == 5

        write(max=2, watch="false")
        out = await rl.poll_once()
        assert out is not None and out.ok
        assert st.gate.limits.max_in_flight == 2
        assert st.config_reload_failed is False
        write(max=3)  # watching is now off
        assert await rl.poll_once() is None
        assert st.gate.limits.max_in_flight == 2
    finally:
        await rl.close()
        await st.runtime.close()


async def test_watch_steps_at_the_live_interval(tmp_path: Path) -> None:
    """watch sleeps reload.watch_interval, then polls; a reload that changes the interval
    applies at the next sleep."""
    p = {"url": "http://127.0.0.1:1", "max": 1, "readings": tmp_path / "r.json"}
    p.update(cpu_reject=90, cpu_recover=75, watch="true")
    path = tmp_path / "rules.yaml"
    path.write_text(RULES.format(**p))
    st = await create_state(load_config(path.read_text(), source=str(path)))
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 1:
            text = RULES.format(**p).replace("watch_interval: 50ms", "watch_interval: 7s")
            path.write_text(text)
        if len(slept) == 3:
            raise Stop

    rl = Reloader(st, str(path), sleep=sleep)
    try:
        with pytest.raises(Stop):
            await rl.watch()
        assert slept == [0.05, 7.0, 7.0]
        assert st.config.reload.watch_interval == 7.0
    finally:
        await rl.close()
        await st.runtime.close()


async def test_concurrent_reloads_are_serialised(
    aiohttp_server: Any, make_rig: Callable[..., Awaitable[Rig]]
) -> None:
    """Many reloads at once all succeed and leave exactly one consistent runtime."""
    eng = await fake_engine(aiohttp_server, "A")
    rig = await make_rig(eng.url)
    rig.write(max=3)
    statuses = await asyncio.gather(*(rig.admin.post("/reload") for _ in range(5)))
    assert [r.status for r in statuses] == [200] * 5
    assert rig.metric("gatekeeper_config_reloads_total", "result=success") == 5
    assert rig.st.gate.limits.max_in_flight == rig.st.config.admission.max_in_flight == 3


async def test_an_engine_added_while_a_body_is_spooled_gets_the_generation(
    aiohttp_server: Any, make_rig: Callable[..., Awaitable[Rig]]
) -> None:
    """A generation whose upload is still arriving when a reload swaps `upstream.url` for
    `upstream.engines` (engine "gpu0"): the gate picks gpu0 from the live rules, and the
    request, which began under the old rules, still reaches it (not a 500)."""
    eng = await fake_engine(aiohttp_server, "A")
    rig = await make_rig(eng.url)
    more = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b'{"lyrics": '
        await more.wait()
        yield b'"la"}'

    sending = asyncio.create_task(rig.proxy.post("/generate", data=body()))
    await asyncio.sleep(0.2)  # the head is in, the body is being spooled
    text = rig.path.read_text().replace(
        f"upstream:\n  url: {eng.url}\n",
        f'upstream:\n  engines:\n    - {{name: gpu0, url: "{eng.url}"}}\n',
    )
    rig.path.write_text(text.replace("  max_in_flight: 1\n", ""))
    reloaded = await rig.admin.post("/reload")  # not rig.reload: it rewrites the template
    assert reloaded.status == 200, await reloaded.text()
    more.set()
    assert await eventually(lambda: eng.waiting == 1)
    assert [e.name for e in rig.st.config.upstream.engines] == ["gpu0"]
    assert rig.st.gate.in_flight_on("gpu0") == 1
    eng.release.set()
    resp = await sending
    assert resp.status == 200
    assert (await resp.read()).startswith(b"SONG-A")
    assert rig.st.gate.in_flight == 0
