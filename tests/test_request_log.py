"""Request logs (issue #5 §3): one access line per request, text and JSON, via the real CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import Proc, start_engine, start_gatekeeper

pytestmark = pytest.mark.slow

RULES = """
upstream:
  probe: {interval: 200ms}
admission:
  sample_interval: 200ms
"""
# The shipped routes, with /batch-generate blocked as shipped before batch routes (issue
# #20 §3): the log shows a blocked request's line.
WITH_BLOCK = (
    RULES
    + """routes:
  - {name: generate, match: {methods: [POST], path: /generate/**}, action: queue}
  - name: batch-generate
    match: {methods: [POST], path: /batch-generate/**}
    action: block
    status: 410
"""
)

ACCESS_FIELDS = {
    "request_id",
    "client",
    "method",
    "path",
    "route",
    "action",
    "decision",
    "reason",
    "status",
    "upstream_status",
    "bytes_in",
    "bytes_out",
    "queue_s",
    "upstream_s",
    "total_s",
}

_PAIR = re.compile(r'(\w+)=("(?:[^"]*)"|\S+)')


def parse_text(line: str) -> dict[str, Any]:
    """``<date> <level> <logger> <message> k=v k="v w"`` -> fields plus time/level/logger."""
    date, level, logger, rest = line.split(None, 3)
    fields: dict[str, Any] = {"time": date, "level": level, "logger": logger}
    for key, value in _PAIR.findall(rest):
        fields[key] = value.strip('"')
    return fields


def _traffic(tmp_path: Path, procs: list[Proc], *extra: str) -> tuple[Proc, dict[str, Any]]:
    """Run gatekeeper, send one request of each kind, stop it; returns (proc, observations)."""
    engine, upstream = start_engine(tmp_path, seconds=0.3)
    procs.append(engine)
    secret_upstream = upstream.replace("http://", "http://ops:s3cret-token@")
    gk, proxy, _ = start_gatekeeper(tmp_path, WITH_BLOCK, secret_upstream, *extra)
    procs.append(gk)
    seen: dict[str, Any] = {}
    with httpx.Client(timeout=10, trust_env=False) as c:
        given = c.get(proxy + "/_sim/echo/a?x=1", headers={"X-Request-ID": "req-given-42"})
        seen["given"] = (given.headers.get("X-Request-ID"), given.json()["headers"])
        made = c.get(proxy + "/_sim/echo/b")
        seen["made"] = (made.headers.get("X-Request-ID"), made.json()["headers"])
        song = c.post(proxy + "/generate", json={"lyrics": "la", "description": "pop"})
        seen["song"] = (song.status_code, len(song.content))
        seen["blocked"] = c.post(proxy + "/batch-generate", json={}).status_code
    assert gk.stop() == 0
    return gk, seen


def _upstream_id(headers: list[list[str]]) -> str | None:
    return next((v for k, v in headers if k.lower() == "x-request-id"), None)


def _check_request_ids(seen: dict[str, Any]) -> str:
    rid, upstream_headers = seen["given"]
    assert rid == "req-given-42"
    assert _upstream_id(upstream_headers) == "req-given-42"
    made, upstream_headers = seen["made"]
    assert made and re.fullmatch(r"[0-9a-f]{32}", made)
    assert _upstream_id(upstream_headers) == made
    return str(made)


def _check_access(records: list[dict[str, Any]], made_id: str) -> None:
    by_path = {r["path"]: r for r in records}
    assert set(by_path) == {"/_sim/echo/a", "/_sim/echo/b", "/generate", "/batch-generate"}
    for r in records:
        assert set(r) >= ACCESS_FIELDS, sorted(ACCESS_FIELDS - set(r))
        assert r["client"] == "127.0.0.1"
        assert r["time"]
    assert by_path["/_sim/echo/a"]["request_id"] == "req-given-42"
    assert by_path["/_sim/echo/b"]["request_id"] == made_id
    song = by_path["/generate"]
    assert (song["route"], song["action"], song["decision"]) == (
        "generate",
        "queue",
        "admitted",
    )  # found the slot free
    assert str(song["upstream_status"]) == "200" and str(song["status"]) == "200"
    assert int(song["bytes_out"]) > 1000 and int(song["bytes_in"]) > 0
    assert float(song["upstream_s"]) >= 0.3
    assert float(song["total_s"]) >= float(song["upstream_s"]) >= 0
    assert float(song["queue_s"]) >= 0
    assert song["engine"] == "default"  # the engine it ran on (issue #11 §1)
    assert "engine" not in by_path["/_sim/echo/a"]  # a pass route's line names none
    blocked = by_path["/batch-generate"]
    assert (blocked["decision"], blocked["reason"], str(blocked["status"])) == (
        "blocked",
        "blocked",
        "410",
    )
    assert blocked["upstream_status"] in (None, "-")


def _check_startup(out: str) -> None:
    assert "s3cret" not in out
    assert "config: upstream http://***@127.0.0.1:" in out
    assert "config: admission: max_in_flight=1" in out
    assert re.search(r"proxy listener bound to http://127\.0\.0\.1:\d+", out)
    assert re.search(r"admin listener bound to http://127\.0\.0\.1:\d+", out)


def test_text_access_lines_have_every_field(tmp_path: Path, procs: list[Proc]) -> None:
    """--log-format text: one key=value access line per request with all issue fields."""
    gk, seen = _traffic(tmp_path, procs, "--log-format", "text")
    made = _check_request_ids(seen)
    out = gk.output()
    lines = [ln for ln in out.splitlines() if " gatekeeper.access " in ln]
    records = [parse_text(ln) for ln in lines]
    assert all(r["level"] == "INFO" for r in records)
    _check_access([r for r in records if "/_gatekeeper" not in r["path"]], made)
    _check_startup(out)


def test_json_access_lines_have_every_field(tmp_path: Path, procs: list[Proc]) -> None:
    """--log-format json: every log line is one JSON object; access lines carry all fields."""
    gk, seen = _traffic(tmp_path, procs, "--log-format", "json")
    made = _check_request_ids(seen)
    out = gk.output()
    records = []
    for line in out.splitlines():
        if line.startswith("gatekeeper ") and " listening on " in line:
            continue  # the two "listening" lines on stdout, meant for people and scripts
        records.append(json.loads(line))
    access = [r for r in records if r["logger"] == "gatekeeper.access"]
    _check_access(access, made)
    assert all(r["level"] == "info" for r in access)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]) for r in access)
    assert any(r["message"] == "gatekeeper stopped" for r in records)
    _check_startup(out)


def test_reload_and_drain_lines_have_their_levels(tmp_path: Path, procs: list[Proc]) -> None:
    """A failed reload logs at ERROR with the YAML line, a good one at INFO, the drain at INFO."""
    engine, upstream = start_engine(tmp_path, seconds=0.3)
    procs.append(engine)
    gk, _, admin = start_gatekeeper(tmp_path, RULES, upstream, "--log-format", "json")
    procs.append(gk)
    rules = Path(gk.args[2])
    with httpx.Client(timeout=10, trust_env=False) as c:
        rules.write_text(RULES + "  max_in_flight: many\n")
        assert c.post(admin + "/reload").status_code == 400
        rules.write_text(RULES + "  max_in_flight: 2\n")
        assert c.post(admin + "/reload").status_code == 200
    assert gk.stop() == 0  # the output is complete once the process exited
    records = [json.loads(ln) for ln in gk.output().splitlines() if ln.startswith("{")]
    reload_lines = [r for r in records if r["logger"] == "gatekeeper.reload"]
    errors = [r for r in reload_lines if r["level"] == "error"]
    assert any(
        "line 6: admission.max_in_flight: must be an integer" in r["message"] for r in errors
    )
    assert any(r.get("result") == "failure" and r.get("event") == "reload" for r in errors)
    good = [r for r in reload_lines if r.get("result") == "success"]
    assert [r["level"] for r in good] == ["info"]
    assert any(r["message"].startswith("received SIGTERM: draining") for r in records)
