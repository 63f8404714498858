"""Hot reload end to end (issue #5 §1): a real ``gatekeeper run``, engine-sim, SIGHUP, POST /reload,
and the file watcher, while generations run."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import wave
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import Proc, poll, start_engine, start_gatekeeper

pytestmark = pytest.mark.slow

RULES = """\
upstream:
  probe: {{interval: 200ms}}
admission:
  max_in_flight: {max}
  sample_interval: 100ms
  resources:
    source: file
    file: {readings}
    cpu_percent: {{reject_above: {cpu_reject}, recover_below: {cpu_recover}}}
reload:
  watch: {watch}
  watch_interval: 100ms
# About admit-route semantics (busy at once); the waiting room has its own tests.
routes:
  - name: generate
    match: {{methods: [POST], path: /generate/**}}
    action: admit
"""

SONG = {"lyrics": "[verse] 海风吹过夏天的街", "description": "pop, piano, 90 bpm"}
# The two songs that must still run while the rules change: an hour long, ended by the
# test (engine-sim's POST /_sim/finish) once every step is done, however slow the box.
HELD = {**SONG, "seconds": 3600}


def metric(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{sample} not exported")


async def test_rules_change_under_running_generations(tmp_path: Path, procs: list[Proc]) -> None:
    """Raise/lower max_in_flight and move thresholds (SIGHUP, POST /reload, watch) mid-song."""
    readings = tmp_path / "readings.json"
    readings.write_text(json.dumps({"cpu_percent": 60, "memory_percent": 10}))
    params: dict[str, Any] = {
        "max": 1,
        "readings": readings,
        "cpu_reject": 90,
        "cpu_recover": 75,
        "watch": "false",
    }
    engine, upstream = start_engine(tmp_path, seconds=0.3)
    procs.append(engine)
    gk, proxy, admin = start_gatekeeper(tmp_path, RULES.format(**params), upstream)
    procs.append(gk)
    rules = Path(gk.args[2])

    def write(*, breakage: tuple[str, str] = ("", ""), **changes: Any) -> None:
        params.update(changes)
        rules.write_text(RULES.format(**params).replace(*breakage))

    async with httpx.AsyncClient(timeout=30, trust_env=False) as c:

        async def status() -> dict[str, Any]:
            doc: dict[str, Any] = (await c.get(admin + "/status")).json()
            return doc

        async def in_flight(n: int) -> bool:
            return bool((await status())["in_flight"] == n)

        async def ready() -> bool:
            return (await c.get(admin + "/readyz")).status_code == 200

        async def engine_running(n: int) -> bool:
            stats = (await c.get(upstream + "/_sim/stats")).json()
            return bool(stats["active_generations"] == n)

        await poll(ready)
        first = asyncio.create_task(c.post(proxy + "/generate", json=HELD))
        await poll(lambda: in_flight(1))
        busy = await c.post(proxy + "/generate", json=SONG)
        assert (busy.status_code, busy.headers["X-Gatekeeper-Reason"]) == (503, "busy")

        # Raise the limit with SIGHUP: a second song starts next to the running one.
        write(max=2)
        gk.signal(signal.SIGHUP)

        async def limit(n: int) -> bool:
            return bool((await status())["max_in_flight"] == n)

        await poll(lambda: limit(2))
        second = asyncio.create_task(c.post(proxy + "/generate", json=HELD))
        await poll(lambda: in_flight(2))

        # Lower it and tighten the CPU threshold with POST /reload: nothing is cancelled.
        write(max=1, cpu_reject=50, cpu_recover=40)
        resp = await c.post(admin + "/reload")
        assert resp.status_code == 200
        assert {ch["key"] for ch in resp.json()["changed"]} == {
            "admission.max_in_flight",
            "admission.resources.cpu_percent.reject_above",
            "admission.resources.cpu_percent.recover_below",
        }
        assert (await status())["in_flight"] == 2
        busy = await c.post(proxy + "/generate", json=SONG)
        assert (busy.status_code, busy.headers["X-Gatekeeper-Reason"]) == (503, "busy")

        # A broken file, by POST /reload and by SIGHUP: old rules stay, errors name lines.
        write(breakage=("max_in_flight: 1", "max_in_flight: -3"))
        resp = await c.post(admin + "/reload")
        assert resp.status_code == 400
        assert resp.json()["errors"] == [
            {
                "path": "admission.max_in_flight",
                "line": 4,
                "message": "must be >= 1 (0 would reject every generation as busy;"
                " to stop generations on purpose, use a block route)",
                "value": -3,
            }
        ]
        gk.signal(signal.SIGHUP)

        async def logged() -> bool:
            return "config reload (SIGHUP): " in gk.output() and "line 4" in gk.output()

        await poll(logged)
        assert (await status())["max_in_flight"] == 1

        # Both songs arrive whole once the engine ends them.
        await poll(lambda: engine_running(2))
        assert not first.done() and not second.done()
        assert (await c.post(upstream + "/_sim/finish")).json() == {"finished": 2}
        for task in (first, second):
            song = await task
            assert song.status_code == 200
            with wave.open(io.BytesIO(song.content)) as w:
                assert w.getnframes() > 0
        # The reloaded CPU threshold (60% > 50) now turns the next song away.
        refused = await c.post(proxy + "/generate", json=SONG)
        assert (refused.status_code, refused.headers["X-Gatekeeper-Reason"]) == (503, "cpu")

        metrics = (await c.get(admin + "/metrics")).text
        assert metric(metrics, 'gatekeeper_config_reloads_total{result="success"}') == 2
        assert metric(metrics, 'gatekeeper_config_reloads_total{result="failure"}') == 2

        # Switch the watcher on; from then on, saving the file is enough.
        write(cpu_reject=90, cpu_recover=75, watch="true")
        assert (await c.post(admin + "/reload")).status_code == 200
        write(max=3)
        await poll(lambda: limit(3))
        assert "config reloaded (watch)" in gk.output()
        ok = await c.post(proxy + "/generate", json=SONG)
        assert ok.status_code == 200
    assert gk.stop() == 0
