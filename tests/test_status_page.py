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
from support import Proc, find_binary

from gatekeeper.admin import build_admin_app
from gatekeeper.app import create_state
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
    live = start_live(tmp_path, procs, engine_seconds=60, expected=120, extra=ALERT_RULES)
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
def test_status_page_says_accepting_with_a_warning_when_the_engine_is_down(
    tmp_path: Path, procs: list[Proc]
) -> None:
    """The probe does not gate admission, so with the engine gone the page says
    "accepting" plus an "engine unreachable" warning (and why a generation would fail),
    not "not accepting"."""
    live = start_live(tmp_path, procs, engine_seconds=1)
    try:
        live.engine.kill()
        live.wait_status(lambda d: d["upstream_up"] is False)
        dom = Dom(chromium_dom(live.admin + "/", tmp_path))
    finally:
        live.close()
    assert dom.t("state") == "accepting · engine unreachable"
    assert dom.attrs["state"]["data-kind"] == "bad"
    assert dom.attrs["admission"]["data-accepting"] == "true"
    assert dom.t("accepting-text") == "Accepting generations"
    assert "502 upstream_unavailable" in dom.t("reason-hint")
    assert dom.t("upstream") == "DOWN"
