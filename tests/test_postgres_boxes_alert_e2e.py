"""End to end: a box whose heartbeat stopped fires GatekeeperBoxHeartbeatStale in a real
Prometheus (issue #21), from the series a real ``gatekeeper run`` on a real PostgreSQL
store exports, with the rules ``gatekeeper alert-rules`` exports; gatekeeper's own
evaluator fires it too, and both resolve when the dead box's row is removed.

The silent box is a row in the store's ``boxes`` table whose ``seen`` is 1,000 s old,
exactly what a box killed 17 minutes ago leaves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import httpx
import pytest
from pgserver import PgServer
from support import Proc, poll, resources_file, rules, start_gatekeeper, stop_process
from test_prometheus_e2e import start_prometheus, substitute

from gatekeeper.config import load_config
from gatekeeper.observability.alerts.promrules import rule_file
from gatekeeper.observability.dashboard import dashboard

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("no_traceback")]

ALERT = "GatekeeperBoxHeartbeatStale"


async def _sql(dsn: str, statement: str) -> None:
    con = await asyncpg.connect(dsn)
    try:
        await con.execute(statement)
    finally:
        await con.close()


def _firing(prom_url: str) -> list[dict[str, Any]]:
    with httpx.Client(timeout=2, trust_env=False) as c:
        alerts = c.get(prom_url + "/api/v1/alerts").json()["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == ALERT and a["state"] == "firing"]


async def test_a_stale_box_fires_the_alert_in_prometheus_and_in_gatekeeper(
    tmp_path: Path,
    procs: list[Proc],
    fresh_engine: tuple[Proc, str],
    http: aiohttp.ClientSession,
    pg_server: PgServer,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A box row seen 1,000 s ago: the live box exports its age, the exported rule fires
    in Prometheus and the built-in evaluator lists it in /status; the boxes row of the
    dashboard has data; the row deleted, both resolve and the dead box's series goes."""
    monkeypatch.setenv("GK_E2E_DSN", pg_server.dsn)
    text = rules(
        {
            "upstream": {"probe": {"interval": 0.5}},
            "alerts": {"evaluation_interval": 0.2},
            "jobs": {
                "store": "postgres",
                "postgres": {"dsn_env": "GK_E2E_DSN", "schema": pg_schema},
            },
        },
        resources_file(tmp_path / "r.json"),
    )
    proc, _, admin = start_gatekeeper(tmp_path, text, fresh_engine[1], "--state-dir", str(tmp_path))
    procs.append(proc)
    await _sql(
        pg_server.dsn,
        f"INSERT INTO {pg_schema}.boxes (id, address, started, seen) VALUES ('dead',"
        " 'http://10.0.0.99:9090', extract(epoch from now()) - 2000,"
        " extract(epoch from now()) - 1000)",
    )
    config = load_config(text)  # the box's rules: its alert rules and dashboard
    rules_path = tmp_path / "gatekeeper-rules.yml"
    rules_path.write_text(rule_file(config), encoding="utf-8")
    prom = start_prometheus(tmp_path, admin.removeprefix("http://"), rules_path)
    try:

        async def fires() -> bool:
            return bool(_firing(prom.url))

        async def resolved() -> bool:
            return not _firing(prom.url)

        await poll(fires, 30.0)
        (alert,) = _firing(prom.url)
        assert float(alert["value"]) > 999  # the age of the silent box, not the live one's
        assert alert["labels"]["severity"] == "critical"

        async def listed() -> bool:
            async with http.get(admin + "/status") as r:
                doc = await r.json()
            return any(a["alertname"] == ALERT for a in doc["alerts"])

        await poll(listed, 10.0)
        instance = admin.removeprefix("http://")
        boxes_row = [
            t["expr"]
            for p in dashboard(config)["panels"]
            if p.get("title") in ("Heartbeat age per box", "Running jobs per box")
            for t in p["targets"]
        ]
        assert len(boxes_row) == 2
        with httpx.Client(timeout=2, trust_env=False) as c:
            for expr in boxes_row:
                series = prom.query(c, substitute(expr, instance))
                assert {s["metric"]["box"] for s in series} >= {"dead"}, expr

        await _sql(pg_server.dsn, f"DELETE FROM {pg_schema}.boxes WHERE id = 'dead'")
        await poll(resolved, 30.0)
        async with http.get(admin + "/metrics") as r:
            assert 'box="dead"' not in await r.text()
    finally:
        stop_process(prom.proc)
