"""The live status page on the admin listener (issue #3 §3), down to a real headless browser."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from live import Live, start_live
from support import ADMIT_ROUTES, Proc, find_binary

from gatekeeper.admin import build_admin_app
from gatekeeper.app.wiring import create_state
from gatekeeper.config import Config

PAGE = Path(__file__).resolve().parent.parent / "gatekeeper" / "static" / "status.html"


class Dom(HTMLParser):
    """Text and attributes of every element with an id, from a DOM dump."""

    VOID = frozenset({"meta", "link", "br", "hr", "img", "input", "col", "source", "wbr"})

    def __init__(self, html: str):
        super().__init__()
        self.html = html
        self.attrs: dict[str, dict[str, str]] = {}
        self.text: dict[str, str] = {}
        self._open: list[str | None] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        ident = a.get("id")
        if ident:
            self.attrs[ident] = a
            self.text.setdefault(ident, "")
        if tag not in self.VOID:
            self._open.append(ident)

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.VOID and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for ident in self._open:
            if ident:
                self.text[ident] += data

    def t(self, ident: str) -> str:
        return " ".join(self.text[ident].split())


async def test_admin_root_serves_the_self_contained_page(aiohttp_client: Any) -> None:
    """GET / on the admin listener is the HTML page: no external resource, phone viewport,
    a CSP that forbids loading anything but ./status."""
    st = await create_state(Config())
    await st.runtime.close()  # no upstream traffic here: only the admin app is served
    client = await aiohttp_client(build_admin_app(st))
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html" and resp.charset == "utf-8"
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    html = await resp.text()
    assert html == PAGE.read_text(encoding="utf-8")
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert 'fetch("status"' in html
    # Works offline: nothing is loaded from anywhere (no src/href to another origin, no @import).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html and "<link" not in html
    head = await client.head("/")
    assert head.status == 200 and await head.read() == b""


def chromium_dom(url: str, tmp_path: Path, budget_ms: int = 3000) -> str:
    """The DOM after ``budget_ms`` of virtual time in Debian's headless chromium."""
    chromium = find_binary("chromium", "chromium-browser", "google-chrome")
    profile = tmp_path / "chromium-profile"
    argv = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}",
        "--dump-dom",
        url,
    ]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


# Issue #4's alert rules: one that fires as soon as a generation runs.
ALERT_RULES = """
alerts:
  evaluation_interval: 100ms
  receivers: [{name: log, type: log}]
  rules:
    - alert: SongRunning
      expr: in_flight >= 1
      for: 0s
      severity: warning
      summary: "a song is being generated"
      runbook: "nothing to do"
"""


@pytest.fixture
def busy_gatekeeper(tmp_path: Path, procs: list[Proc]) -> Iterator[Live]:
    """A gatekeeper with one admitted generation running, one busy rejection and one
    blocked batch request; CPU 42.5 % and memory 37.5 % from a resource file."""
    live = start_live(
        # The page's admit-route view (busy at once); the queue's is tested on its own.
        tmp_path,
        procs,
        engine_seconds=60,
        expected=120,
        extra=ALERT_RULES + ADMIT_ROUTES,
    )
    try:
        live.start_generation()
        assert live.post("/generate", json={}).status_code == 503
        assert live.post("/batch-generate", json={}).status_code == 410
        live.wait_status(lambda d: bool(d.get("alerts")))
        yield live
    finally:
        live.close()


@pytest.mark.e2e
def test_status_page_renders_live_values_in_chromium(busy_gatekeeper: Live, tmp_path: Path) -> None:
    """Headless chromium shows in-flight 1/1, the running route with its progress, "not
    accepting: busy", the file-sourced CPU/memory with their thresholds, the counts and
    the rejection reasons, engine up and the firing alert."""
    started = time.monotonic()
    dom = Dom(chromium_dom(busy_gatekeeper.admin + "/", tmp_path))
    elapsed = time.monotonic() - started
    assert dom.attrs["admission"]["data-accepting"] == "false"
    assert dom.t("state") == "not accepting: busy"
    assert dom.attrs["state"]["data-kind"] == "busy"
    assert dom.t("reasons") == "busy"
    assert dom.t("in-flight") == "1/1"
    assert dom.attrs["in-flight"]["data-in-flight"] == "1"
    gen = dom.attrs["gen-0"]
    assert gen["data-route"] == "generate"
    assert gen["data-expected"] == "120"
    assert 0 < float(gen["data-elapsed"]) < 60
    assert "generate" in dom.t("gen-0") and "left" in dom.t("gen-0")
    assert dom.t("cpu-value") == "42.5%"
    assert dom.t("memory-value") == "37.5%"
    cpu = dom.attrs["res-cpu"]
    assert (cpu["data-reject"], cpu["data-recover"]) == ("85", "70")
    assert cpu["data-overloaded"] == "false"
    assert "reject > 85%" in dom.t("cpu-note") and "recover < 70%" in dom.t("cpu-note")
    assert dom.t("count-admitted") == "1"
    assert dom.t("count-rejected") == "1"
    assert dom.t("count-blocked") == "1"
    rows = re.findall(r'<tr data-reason="(\w+)" data-count="(\d+)">', dom.html)
    assert sorted(rows) == [("blocked", "1"), ("busy", "1")]
    assert dom.t("upstream") == "up"
    assert dom.attrs["alerts"]["data-count"] == "1"
    assert re.search(r'<li data-alertname="SongRunning" data-severity="warning">', dom.html)
    assert "SongRunning [warning]" in dom.t("alerts")
    assert "a song is being generated" in dom.t("alerts")
    assert "firing for" in dom.t("alerts") and "nothing to do" in dom.t("alerts")
    assert dom.attrs["error"]["data-visible"] == "false"
    assert elapsed < 30


@pytest.mark.e2e
def test_status_page_says_why_when_cpu_is_overloaded(tmp_path: Path, procs: list[Proc]) -> None:
    """With CPU over its reject threshold and nothing running, the page says "not
    accepting: cpu", marks CPU overloaded, shows the generation as idle and no alert
    (the default CPU alert waits 2 minutes)."""
    live = start_live(tmp_path, procs, engine_seconds=1, cpu=97.5)
    try:
        live.wait_status(lambda d: d["overloaded"]["cpu"] is True)
        dom = Dom(chromium_dom(live.admin + "/", tmp_path))
    finally:
        live.close()
    assert dom.t("state") == "not accepting: cpu"
    assert dom.attrs["state"]["data-kind"] == "warn"
    assert dom.attrs["res-cpu"]["data-overloaded"] == "true"
    assert dom.t("cpu-value") == "97.5%"
    assert "OVERLOADED" in dom.t("cpu-note")
    assert dom.attrs["generations"]["data-count"] == "0"
    assert dom.t("idle").startswith("idle")
    assert dom.t("in-flight") == "0/1"
    assert dom.attrs["alerts"]["data-count"] == "0" and dom.t("alerts") == "none"


@pytest.mark.e2e
def test_status_page_says_not_accepting_engine_down_when_the_engine_is_down(
    tmp_path: Path, procs: list[Proc]
) -> None:
    """A down engine gets no new generation (issue #11 §1), so with the engine gone the
    page says "not accepting: engine_down" plus the "engine unreachable" warning, and
    why (no engine answers its probe; queued jobs wait)."""
    live = start_live(tmp_path, procs, engine_seconds=1)
    try:
        live.engine.kill()
        live.wait_status(lambda d: d["upstream_up"] is False)
        dom = Dom(chromium_dom(live.admin + "/", tmp_path))
    finally:
        live.close()
    assert dom.t("state") == "not accepting: engine_down · engine unreachable"
    assert dom.attrs["state"]["data-kind"] == "bad"
    assert dom.attrs["admission"]["data-accepting"] == "false"
    assert dom.t("accepting-text") == "Not accepting"
    assert "engine_down: no engine with a free slot answers its probe" in dom.t("reason-hint")
    assert "queued jobs wait" in dom.t("reason-hint")
    assert dom.t("upstream") == "DOWN"
    assert dom.attrs["engines"]["data-count"] == "0"  # one engine: no per-engine list


@pytest.mark.e2e
async def test_status_page_lists_each_engine_in_chromium(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    """Several engines (issue #11 §1): one line per engine with running/slots and its
    probe state (a removed one "finishing"), and each running generation says its engine."""
    import asyncio

    from test_cli_status import QUEUED

    doc = dict(
        QUEUED,
        in_flight=2,
        max_in_flight=2,
        upstream_up=True,
        running=[
            {
                "route": "generate",
                "engine": "gpu1",
                "elapsed_seconds": 10.0,
                "expected_seconds": 60.0,
            },
            {
                "route": "generate",
                "engine": "old",
                "elapsed_seconds": 50.0,
                "expected_seconds": 60.0,
            },
        ],
        engines=[
            {"name": "gpu0", "url": "http://a", "up": False, "in_flight": 0, "max_in_flight": 1},
            {"name": "gpu1", "url": "http://b", "up": True, "in_flight": 1, "max_in_flight": 1},
            {
                "name": "old",
                "url": None,
                "up": True,
                "in_flight": 1,
                "max_in_flight": 0,
                "removed": True,
            },
        ],
    )
    url = await serve_page(aiohttp_server, doc)
    dom = Dom(await asyncio.to_thread(chromium_dom, url, tmp_path))
    assert dom.attrs["engines"]["data-count"] == "3"
    items = re.findall(
        r'<li data-engine="(\w+)" data-up="(\w+)"[^>]*><b>\w+</b>([^<]*)</li>', dom.html
    )
    assert items == [
        ("gpu0", "false", " 0/1 · DOWN"),
        ("gpu1", "true", " 1/1 · up"),
        ("old", "true", " 1/0 · removed, finishing"),
    ]
    assert re.findall(r'class="muted gen-engine">([^<]*)<', dom.html) == ["on gpu1", "on old"]


async def serve_page(aiohttp_server: Any, doc: dict[str, Any]) -> str:
    """The status page at / and ``doc`` as ./status, on 127.0.0.1; returns the page URL."""
    from aiohttp import web

    async def page(_request: web.Request) -> web.Response:
        return web.Response(text=PAGE.read_text(encoding="utf-8"), content_type="text/html")

    async def status(_request: web.Request) -> web.Response:
        return web.json_response(doc)

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/status", status)
    server = await aiohttp_server(app, host="127.0.0.1")
    return f"http://127.0.0.1:{server.port}/"


def queued_document() -> dict[str, Any]:
    from test_cli_status import QUEUED

    return dict(
        QUEUED, running=[{"route": "generate", "elapsed_seconds": 100.2, "expected_seconds": 600.0}]
    )


@pytest.mark.e2e
async def test_status_page_shows_the_queue_in_chromium(aiohttp_server: Any, tmp_path: Path) -> None:
    """With a `queue` object, headless chromium shows waiting/max, the full notice with its
    Retry-After, one row per entry (running first; hashed client, held or async, waited,
    ETA, coalesced) and the kept results."""
    import asyncio

    url = await serve_page(aiohttp_server, queued_document())
    dom = Dom(await asyncio.to_thread(chromium_dom, url, tmp_path))
    q = dom.attrs["queue"]
    assert "hidden" not in q
    assert (q["data-waiting"], q["data-max-waiting"], q["data-full"]) == ("2", "2", "true")
    assert dom.t("queue-waiting") == "2/2 waiting"
    assert dom.t("queue-limits") == "max wait 30m00s · 2 per client"
    assert "Retry-After: 540 s" in dom.t("queue-full")
    assert dom.attrs["queue-entries"]["data-count"] == "3"
    rows = re.findall(
        r'<tr class="queue-entry" data-position="(\d)" data-state="(\w+)" data-route="generate"'
        r' data-client="(\w+)" data-held="(\w+)" data-eta="([\d.]*)" data-coalesced="(\d)">'
        r"(.*?)</tr>",
        dom.html,
    )
    assert [r[:6] for r in rows] == [
        ("0", "running", "3fa2c1d9", "true", "499.8", "1"),
        ("1", "queued", "9b1e0a77", "false", "1099.8", "0"),
        ("2", "queued", "3fa2c1d9", "true", "", "0"),
    ]
    cells = [re.findall(r"<td>(.*?)</td>", r[6]) for r in rows]
    assert cells[0] == [
        "running",
        "running",
        "generate",
        "3fa2c1d9",
        "12s",
        "1m40s",
        "~8m20s",
        "+1",
    ]
    assert cells[1] == ["#1", "queued (async)", "generate", "9b1e0a77", "40s", "–", "~18m20s", "–"]
    assert cells[2][-2:] == ["?", "–"]
    assert dom.t("jobs-results") == "Kept results: 1.2 KiB of 10.0 GiB in /var/lib/gk"
    # Issue #18 §7: songs of a queue route count as queued/coalesced; the page shows both.
    assert (dom.t("count-queued"), dom.t("count-coalesced")) == ("3", "2")
    assert dom.t("count-admitted") == "1"
    assert dom.t("in-flight") == "1/1"  # the rest of the page still renders
    assert dom.attrs["error"]["data-visible"] == "false"


@pytest.mark.e2e
async def test_status_page_says_how_many_more_wait_than_are_listed(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    """A document listing the first waiting jobs only (issue #18 §6: 10,000 waiting, 2
    listed) shows its rows and one more row: "… and 9998 more waiting"."""
    import asyncio

    doc = queued_document()
    doc["queue"] = {**doc["queue"], "waiting": 10_000, "max_waiting": 20_000, "listed": 2}
    url = await serve_page(aiohttp_server, doc)
    dom = Dom(await asyncio.to_thread(chromium_dom, url, tmp_path))
    assert dom.attrs["queue-entries"]["data-count"] == "3"
    assert '<tr class="queue-more" data-more="9998">' in dom.html
    assert "… and 9998 more waiting" in dom.html


@pytest.mark.e2e
async def test_status_page_of_an_older_gatekeeper_hides_the_queue(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    """A document without `queue` and `jobs` (older gatekeeper) leaves the waiting-room
    section hidden and everything else working."""
    import asyncio

    from test_cli_status import BUSY

    url = await serve_page(aiohttp_server, BUSY)
    dom = Dom(await asyncio.to_thread(chromium_dom, url, tmp_path))
    assert "hidden" in dom.attrs["queue"]
    assert dom.t("state") == "not accepting: busy"
    assert dom.attrs["error"]["data-visible"] == "false"
