"""The status JSON on the public listener (issue #3 §2): ``status_path`` in rules.yaml."""

from __future__ import annotations

import math
import socket
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gatekeeper.admin import build_admin_app
from gatekeeper.app.state import AppState
from gatekeeper.app.wiring import build_proxy_app, create_state
from gatekeeper.config import load_config
from gatekeeper.core.lease import Lease
from gatekeeper.lifecycle.reload import Reloader

RULES = """
upstream:
  url: {upstream}
admission:
  expected_seconds: 120
routes:
  - name: generate
    match: {{methods: [POST], path: /generate}}
    action: admit
{extra}
"""


async def _upstream(aiohttp_server: Any) -> tuple[TestServer, list[str]]:
    """A fake engine on a real socket that records the paths it was asked for."""
    seen: list[str] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        return web.json_response({"engine": True, "path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return await aiohttp_server(app), seen


async def _gatekeeper(
    aiohttp_client: Any, upstream: TestServer, extra: str = ""
) -> tuple[TestClient[Any, Any], AppState]:
    cfg = load_config(RULES.format(upstream=str(upstream.make_url("")), extra=extra))
    st = await create_state(cfg)
    client = await aiohttp_client(build_proxy_app(st, monitor=False, probe=False))
    return client, st


async def test_default_status_path_serves_the_admin_status_json(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    """GET /_gatekeeper/status on the public port answers the same document as admin /status."""
    upstream, seen = await _upstream(aiohttp_server)
    client, st = await _gatekeeper(aiohttp_client, upstream)
    admin = await aiohttp_client(build_admin_app(st))
    resp = await client.get("/_gatekeeper/status?cache=bust")
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    admin_body = await (await admin.get("/status")).json()
    for doc in (body, admin_body):
        doc.pop("uptime_seconds")
    assert body == admin_body
    assert body["accepting"] is True
    assert body["max_in_flight"] == 1
    assert body["expected_seconds"] == 120
    assert seen == []  # never forwarded


async def test_status_path_shows_a_running_generation(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    """While a generation holds the slot the public status says busy, with its route."""
    upstream, _ = await _upstream(aiohttp_server)
    client, st = await _gatekeeper(aiohttp_client, upstream)
    ticket = st.gate.try_admit("generate", st.clock())
    assert isinstance(ticket, Lease)
    try:
        body = await (await client.get("/_gatekeeper/status")).json()
    finally:
        ticket.release()
    assert body["accepting"] is False
    assert body["reasons"] == ["busy"]
    assert body["in_flight"] == 1
    assert [r["route"] for r in body["running"]] == ["generate"]
    assert body["running"][0]["expected_seconds"] == 120
    assert 1 <= body["retry_after"] <= 120


async def test_head_on_status_path_has_no_body(aiohttp_client: Any, aiohttp_server: Any) -> None:
    """HEAD on the status path answers 200 JSON headers and no body, not forwarded."""
    upstream, seen = await _upstream(aiohttp_server)
    client, _ = await _gatekeeper(aiohttp_client, upstream)
    resp = await client.head("/_gatekeeper/status")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert await resp.read() == b""
    assert seen == []


async def test_status_path_is_not_counted_as_traffic(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    """Polling the status path changes no request counter (a frontend polls every second)."""
    upstream, _ = await _upstream(aiohttp_server)
    client, st = await _gatekeeper(aiohttp_client, upstream)
    for _ in range(3):
        assert (await client.get("/_gatekeeper/status")).status == 200
    assert set(st.counters.outcomes.values()) == {0}, st.counters.outcomes


async def test_other_methods_on_status_path_are_proxied(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    """Only GET and HEAD are answered locally; a POST to that path goes upstream."""
    upstream, seen = await _upstream(aiohttp_server)
    client, _ = await _gatekeeper(aiohttp_client, upstream)
    resp = await client.post("/_gatekeeper/status", data=b"x")
    assert (await resp.json())["engine"] is True
    assert seen == ["POST /_gatekeeper/status"]


async def test_custom_status_path(aiohttp_client: Any, aiohttp_server: Any) -> None:
    """A configured status_path moves the document; the default path is then proxied."""
    upstream, seen = await _upstream(aiohttp_server)
    client, _ = await _gatekeeper(aiohttp_client, upstream, "status_path: /api/gk-status")
    assert "accepting" in await (await client.get("/api/gk-status")).json()
    assert (await (await client.get("/_gatekeeper/status")).json())["engine"] is True
    assert seen == ["GET /_gatekeeper/status"]


async def test_null_status_path_disables_it(aiohttp_client: Any, aiohttp_server: Any) -> None:
    """status_path: null serves nothing locally: the path is proxied upstream like any other."""
    upstream, seen = await _upstream(aiohttp_server)
    client, _ = await _gatekeeper(aiohttp_client, upstream, "status_path: null")
    body = await (await client.get("/_gatekeeper/status")).json()
    assert body == {"engine": True, "path": "/_gatekeeper/status"}
    assert seen == ["GET /_gatekeeper/status"]


async def test_status_path_follows_a_reload(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    """The path is read from the request's Runtime, so a reload moves it at once."""
    upstream, seen = await _upstream(aiohttp_server)
    url = str(upstream.make_url(""))
    path = tmp_path / "rules.yaml"
    path.write_text(RULES.format(upstream=url, extra=""))
    st = await create_state(load_config(path.read_text(), source=str(path)))
    rl = Reloader(st, str(path))
    client = await aiohttp_client(build_proxy_app(st, monitor=False, probe=False, reloader=rl))
    path.write_text(RULES.format(upstream=url, extra="status_path: null"))
    assert (await rl.reload("test")).ok
    body = await (await client.get("/_gatekeeper/status")).json()
    assert body["engine"] is True
    path.write_text(RULES.format(upstream=url, extra="status_path: /_gatekeeper/status"))
    assert (await rl.reload("test")).ok
    assert "accepting" in await (await client.get("/_gatekeeper/status")).json()
    assert seen == ["GET /_gatekeeper/status"]


async def test_engine_down_gets_no_new_generation(
    aiohttp_client: Any,
) -> None:
    """With the probe saying the one engine is down (issue #11 §1: a down engine gets no
    new job), the status says not accepting, reason engine_down, warning
    upstream_unavailable, and a generation is refused 503 engine_down with the probe
    interval as Retry-After; nothing is admitted. The engine answering its probe again
    makes the next generation admitted (here: 502, nothing listens on the port), and that
    refused connection makes the engine down again until the probe answers."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    st = await create_state(
        load_config(RULES.format(upstream=f"http://127.0.0.1:{port}", extra=""))
    )
    client = await aiohttp_client(build_proxy_app(st, monitor=False))
    st.set_upstream_up(False)
    body = await (await client.get("/_gatekeeper/status")).json()
    assert body["accepting"] is False
    assert body["reasons"] == ["engine_down"]
    assert body["warnings"] == ["upstream_unavailable"]
    assert body["upstream_up"] is False
    assert body["engines"] == [
        {
            "name": "default",
            "url": f"http://127.0.0.1:{port}",
            "up": False,
            "in_flight": 0,
            "max_in_flight": 1,
        }
    ]
    resp = await client.post("/generate", data=b"{}")
    assert resp.status == 503
    assert (await resp.json())["reason"] == "engine_down"
    assert resp.headers["Retry-After"] == str(math.ceil(st.config.upstream.probe.interval))
    assert st.counters.outcomes["admitted"] == 0
    st.set_upstream_up(True)
    resp = await client.post("/generate", data=b"{}")
    assert resp.status == 502
    assert (await resp.json())["reason"] == "upstream_unavailable"
    assert st.counters.outcomes["admitted"] == 1
    # The refused connection marks the engine down at once, not at its next probe.
    body = await (await client.get("/_gatekeeper/status")).json()
    assert body["warnings"] == ["upstream_unavailable"] and body["reasons"] == ["engine_down"]
    st.set_upstream_up(True)
    assert (await (await client.get("/_gatekeeper/status")).json())["warnings"] == []
