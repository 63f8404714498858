"""The shared store's boxes as operators and clients see them (issue #21), without
processes: ids that name no box (no 421) with ``jobs.store: postgres``, the box's
address, the heartbeat signal and gauges, the status lines, the dashboard's boxes row
and the multi-box recipe in deploy/multibox (the real PostgreSQL and two real boxes:
``test_postgres_anybox_e2e``, the alert in a real Prometheus:
``test_postgres_boxes_alert_e2e``)."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from support import find_binary

from gatekeeper.app.wiring import box_address
from gatekeeper.cli.status_view import box_lines
from gatekeeper.config import Config, default_alert_rules, load_config, load_config_file
from gatekeeper.jobs.anybox_store import BoxRow, Fleet, RunningJob
from gatekeeper.jobs.fleet import FleetWatch
from gatekeeper.jobs.ids import id_prefix, new_job_id, routed_elsewhere
from gatekeeper.observability.alerts.inputs import SIGNALS
from gatekeeper.observability.dashboard import dashboard
from gatekeeper.observability.gauges import box_gauges
from gatekeeper.observability.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
MULTIBOX = ROOT / "deploy" / "multibox"
BOXES_DASHBOARD = ROOT / "dashboards" / "gatekeeper-boxes.json"
PG = "jobs:\n  store: postgres\n  postgres: {dsn_env: GK_DSN}\n"


@pytest.mark.parametrize(
    ("job_id", "box", "store", "owner"),
    [
        ("b." + "A" * 24, "a", "sqlite", "b"),  # another box's job: 421 names it
        ("a." + "A" * 24, "a", "sqlite", None),  # this box's: a plain 404 if unknown
        ("A" * 24, "a", "sqlite", None),  # no prefix: a plain 404
        ("b." + "A" * 24, "a", "postgres", None),  # any box answers: never 421
        ("b." + "A" * 24, None, "postgres", None),
    ],
)
def test_an_unknown_id_is_misdirected_only_with_a_store_of_one_box(
    job_id: str, box: str | None, store: str, owner: str | None
) -> None:
    """421 (routed_elsewhere) only where HAProxy routes job URLs by box: SQLite."""
    assert routed_elsewhere(job_id, box, store) == owner


def test_new_ids_name_no_box_with_a_shared_store() -> None:
    """With postgres the box prefix is dropped (issue #21); with SQLite it stays."""
    assert "." not in new_job_id(id_prefix("a", "postgres"))
    assert new_job_id(id_prefix("a", "sqlite")).startswith("a.")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("admin_listen: 127.0.0.1:9191\n", "http://127.0.0.1:9191"),
        ("admin_listen: '[::1]:9191'\n", "http://[::1]:9191"),
        (
            "admin_listen: 127.0.0.1:9191\njobs: {postgres: {address: 'http://box-3.internal:9090/'}}\n",
            "http://box-3.internal:9090",
        ),
    ],
)
def test_the_box_address_is_the_admin_listener_unless_configured(text: str, want: str) -> None:
    """jobs.postgres.address, else http://<admin host>:<admin port> (trailing / dropped)."""
    assert box_address(load_config(text)) == want


def test_the_box_address_of_a_wildcard_listener_is_this_host_s_name() -> None:
    """0.0.0.0 is no address another box can reach: the host's FQDN stands for it."""
    import socket

    assert box_address(load_config("admin_listen: 0.0.0.0:9090\n")) == (
        f"http://{socket.getfqdn()}:9090"
    )


def test_a_bad_address_names_the_key() -> None:
    """jobs.postgres.address must be an http(s) URL: the error names the key."""
    with pytest.raises(Exception, match=r"jobs\.postgres\.address"):
        load_config("jobs: {postgres: {address: 'box-3:9090'}}\n")


def test_the_stale_box_alert_follows_the_lease() -> None:
    """GatekeeperBoxHeartbeatStale fires above jobs.lease (30 s when the rules name none)."""
    rules = {r.alert: r for r in default_alert_rules(lease=12.0)}
    assert rules["GatekeeperBoxHeartbeatStale"].threshold == 12.0
    (shipped,) = [r for r in Config().alerts.rules if r.alert == "GatekeeperBoxHeartbeatStale"]
    assert (shipped.signal, shipped.op, shipped.threshold) == ("box_heartbeat_age_seconds", ">", 30)
    assert SIGNALS["box_heartbeat_age_seconds"].promql() == (
        "max by (instance) (gatekeeper_box_heartbeat_age_seconds)"
    )


@dataclass
class FakeShared:
    """A shared store's boxes, as the tests set them (``anybox_store.AnyBoxStore``)."""

    box: str = "me"
    fleets: list[Fleet] = field(default_factory=list)

    async def fleet(self) -> Fleet:
        return self.fleets.pop(0)


def _fleet(*boxes: BoxRow, queued: int = 0, jobs: tuple[RunningJob, ...] = ()) -> Fleet:
    running = sum(b.running for b in boxes)
    return Fleet("me", boxes, queued, running, 12.0 if queued else 0.0, jobs)


def _box(box: str, age: float, running: int = 0, stopped: bool = False) -> BoxRow:
    return BoxRow(box, f"http://{box}:9090", 100.0, age, running, stopped)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _watch(clock: _Clock, fleet: Fleet) -> FleetWatch:
    """A watch whose last read was ``fleet``, now."""
    watch = FleetWatch(FakeShared(), clock)  # type: ignore[arg-type]
    watch.latest, watch.read_at = fleet, clock()
    return watch


def test_heartbeat_ages_grow_between_reads_and_stopped_boxes_have_none() -> None:
    """An age is the database's at the read plus the time since on this box's clock, so it
    grows while the store does not answer; a box that stopped cleanly is not silent."""
    clock = _Clock()
    watch = _watch(clock, _fleet(_box("me", 0.5), _box("b", 3.0, 1), _box("gone", 900, 0, True)))
    clock.now += 10
    assert watch.ages(clock()) == {"me": 10.5, "b": 13.0}
    assert watch.running_on() == {"me": 0, "b": 1}
    assert SIGNALS["box_heartbeat_age_seconds"].read(_Readings(watch), clock()) == 13.0
    assert SIGNALS["box_heartbeat_age_seconds"].read(_Readings(None), clock()) == 0.0


@dataclass
class _Readings:
    boxes: Any


def test_box_gauges_follow_the_boxes_that_come_and_go() -> None:
    """Each box gets its series at the read that first lists it and loses them at the read
    that no longer does; the whole queue's gauges read the last read."""
    clock = _Clock()
    watch = _watch(clock, _fleet(_box("me", 0.5), _box("b", 40.0, 1), queued=3))
    m = Metrics()
    follow = box_gauges(m, watch, clock)
    follow()
    text = generate_latest(m.registry).decode()
    assert 'gatekeeper_box_heartbeat_age_seconds{box="b"} 40.0' in text
    assert 'gatekeeper_box_running_jobs{box="b"} 1.0' in text
    assert "gatekeeper_shared_queue_depth 3.0" in text
    assert "gatekeeper_shared_queue_running 1.0" in text
    watch.latest = _fleet(_box("me", 0.5))
    follow()
    text = generate_latest(m.registry).decode()
    assert 'box="b"' not in text and 'box="me"' in text


def test_status_shows_every_box_what_it_runs_and_the_whole_queue() -> None:
    """The boxes and shared_queue sections, and gatekeeper status' lines of them; no job id."""
    clock = _Clock()
    job = RunningJob("b", "generate", "default", "ip:10.0.0.7", 61.0, 0.5)
    watch = _watch(clock, _fleet(_box("me", 0.4), _box("b", 2.0, 1), queued=4, jobs=(job,)))
    doc = watch.status(clock())
    me, b = doc["boxes"]
    assert me["this"] is True and b["this"] is False
    assert b["jobs"][0]["route"] == "generate" and "10.0.0.7" not in json.dumps(doc)
    assert doc["shared_queue"]["waiting"] == 4 and doc["shared_queue"]["running"] == 1
    lines = box_lines(doc)
    assert " ".join(lines[0].split()) == (
        "all boxes 4 waiting, 1 running on 2 box(es) (oldest waited 12s)"
    )
    assert "me (this box) at http://me:9090: seen 0s ago, 0 running" in lines[1]
    assert "b at http://b:9090: seen 2s ago, 1 running" in lines[2]
    assert "running generate on default" in lines[3] and "1m01s" in lines[3]
    assert box_lines({"queue": {}}) == []  # a store of one box: no such lines


def test_the_boxes_row_only_with_a_shared_store() -> None:
    """The dashboard has the Boxes row with jobs.store: postgres, not with SQLite, whose
    boxes series do not exist; its heartbeat panel draws the alert's threshold."""
    rows = [p["title"] for p in dashboard(Config())["panels"] if p["type"] == "row"]
    assert "Boxes" not in rows
    shared = dashboard(load_config(PG))
    rows = [p["title"] for p in shared["panels"] if p["type"] == "row"]
    assert rows[2] == "Boxes"
    (age,) = [p for p in shared["panels"] if p.get("title") == "Heartbeat age per box"]
    steps = age["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == 30


@pytest.mark.slow  # runs the CLI
def test_checked_in_boxes_dashboard_is_current() -> None:
    """dashboards/gatekeeper-boxes.json is `gatekeeper dashboard` for deploy/multibox's rules."""
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "gatekeeper", "dashboard", "--config", str(MULTIBOX / "rules.yaml")],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert BOXES_DASHBOARD.read_text(encoding="utf-8") == out, (
        "stale: gatekeeper dashboard --config deploy/multibox/rules.yaml"
        " > dashboards/gatekeeper-boxes.json"
    )


def test_the_multibox_recipe_routes_no_job_url_by_box() -> None:
    """deploy/multibox: the rules use the shared store; HAProxy and the Kubernetes Service
    send any request to any box (no box-id routing); the boxes keep a volume each and find
    one another through a headless Service on the admin port only."""
    cfg = load_config_file(MULTIBOX / "rules.yaml")
    assert cfg.jobs.store == "postgres" and cfg.jobs.postgres.dsn_file is not None
    haproxy = (MULTIBOX / "haproxy.cfg").read_text()
    assert not re.search(r"^\s*[^#\s].*(txn\.box|be_job_|use_backend)", haproxy, re.M)
    docs = list(yaml.safe_load_all((MULTIBOX / "kubernetes.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs if d["kind"] != "Service"}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    sts = kinds["StatefulSet"]
    assert sts["spec"]["serviceName"] in services
    headless = services[sts["spec"]["serviceName"]]["spec"]
    assert headless["clusterIP"] == "None" and [p["port"] for p in headless["ports"]] == [9090]
    public = services["music"]["spec"]
    assert public["selector"] == sts["spec"]["selector"]["matchLabels"]
    assert [p["targetPort"] for p in public["ports"]] == ["http"]
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "state"
    rules = load_config(kinds["ConfigMap"]["data"]["rules.yaml"])
    assert rules.jobs.store == "postgres" and rules.jobs.dir == "/var/lib/gatekeeper"


@pytest.mark.slow  # runs haproxy
def test_the_multibox_haproxy_cfg_is_valid() -> None:
    """haproxy -c accepts deploy/multibox/haproxy.cfg as shipped."""
    haproxy = find_binary("haproxy", "/usr/sbin/haproxy")
    out = subprocess.run(
        [haproxy, "-c", "-f", str(MULTIBOX / "haproxy.cfg")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
