"""A real gatekeeper in front of a real engine-sim, driven like production (issue #3 tests).

Used by the status page (chromium), ``gatekeeper status`` and Prometheus/dashboard
end-to-end tests: both processes are the real CLI on loopback sockets; CPU and
memory come from a ``file`` resource source the test writes, so overload is
deterministic.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from support import Proc, start_engine, start_gatekeeper

RULES = """
upstream:
  probe: {{interval: 200ms, timeout: 1s}}
admission:
  sample_interval: 100ms
  expected_seconds: {expected}
  resources:
    source: file
    file: {resources}
    cpu_percent: {{reject_above: {cpu_reject}, recover_below: {cpu_recover}}}
    memory_percent: {{reject_above: 90, recover_below: 80}}
shutdown:
  drain_timeout: 500ms
{extra}
"""

SONG = {"lyrics": "[verse] 海风吹过夏天的街", "description": "pop, piano, 90 bpm"}


@dataclass
class Live:
    engine: Proc
    gatekeeper: Proc
    proxy: str
    admin: str
    resources: Path
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10, trust_env=False))

    @property
    def admin_port(self) -> int:
        return int(self.admin.rsplit(":", 1)[1])

    def close(self) -> None:
        self.client.close()

    def set_resources(self, cpu: float, memory: float) -> None:
        write_resources(self.resources, cpu, memory)

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.client.get(self.admin + "/status").json()
        return doc

    def wait_status(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        doc = self.status()
        while not pred(doc):
            assert time.monotonic() < deadline, f"status never matched: {doc}"
            time.sleep(0.05)
            doc = self.status()

    def start_generation(self, song: dict[str, Any] | None = None) -> Generation:
        """POST /generate in a thread; returns once gatekeeper has admitted it."""
        gen = Generation(self.proxy, song)
        gen.start()
        self.wait_status(lambda d: d["in_flight"] >= 1)
        return gen

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.post(self.proxy + path, **kw)


def write_resources(path: Path, cpu: float, memory: float) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"cpu_percent": cpu, "memory_percent": memory}))
    tmp.replace(path)  # atomic: the monitor never reads half a file


class Generation(threading.Thread):
    """One admitted generation running in the background; ``status`` once it ended."""

    def __init__(self, proxy: str, song: dict[str, Any] | None = None):
        super().__init__(daemon=True)
        self.proxy = proxy
        self.song = SONG if song is None else song  # another song: not coalesced with SONG
        self.status: int | None = None
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            with httpx.Client(timeout=60, trust_env=False) as c:
                self.status = c.post(self.proxy + "/generate", json=self.song).status_code
        except httpx.HTTPError as exc:  # gatekeeper stopped mid-generation at teardown
            self.error = exc


def start_live(
    tmp_path: Path,
    procs: list[Proc],
    *,
    engine_seconds: float,
    expected: float = 120,
    cpu: float = 42.5,
    memory: float = 37.5,
    cpu_reject: float = 85,
    cpu_recover: float = 70,
    extra: str = "",
) -> Live:
    res = tmp_path / "resources.json"
    engine, upstream = start_engine(tmp_path, seconds=engine_seconds)
    procs.append(engine)
    write_resources(res, cpu, memory)
    rules = RULES.format(
        expected=expected,
        resources=res,
        cpu_reject=cpu_reject,
        cpu_recover=cpu_recover,
        extra=extra,
    )
    gk, proxy, admin = start_gatekeeper(tmp_path, rules, upstream)
    procs.append(gk)
    live = Live(engine, gk, proxy, admin, res)
    live.wait_status(lambda d: d["upstream_up"] is True and d["cpu_percent"] == cpu)
    return live
