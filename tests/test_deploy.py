"""Deployment files (issue #5 §4): every file in deploy/ parses, and the invariants that keep
a rollout from killing a running generation hold against the rules they ship with."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gatekeeper.app.process import CLOSE_GRACE_SECONDS
from gatekeeper.config import Config, load_config, load_config_file

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "gatekeeper.service"


def stop_budget(cfg: Config) -> float:
    """Longest a clean stop may take: drain, linger, then aiohttp's close grace."""
    return cfg.shutdown.drain_timeout + cfg.shutdown.linger + CLOSE_GRACE_SECONDS


# --------------------------------------------------------------------------- parsing


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """systemd unit syntax: sections of ``Key=value`` lines, keys may repeat, # comments."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None and "=" in line, f"line {n}: not Key=value: {raw!r}"
        key, value = line.split("=", 1)
        current.append((key.strip(), value.strip()))
    return sections


def unit_value(sections: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    values = [v for k, v in sections[section] if k == key]
    assert values, f"[{section}] {key}= missing"
    return values[-1]


def unit_seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)\s*(s|sec|min|m)?", value)
    assert m, f"unsupported time span {value!r}"
    return float(m.group(1)) * (60 if m.group(2) in ("min", "m") else 1)


def kube_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(KUBE.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def kube(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in kube_docs() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def configmap_rules(tmp_path: Path) -> tuple[Path, Config]:
    text = kube("ConfigMap", "gatekeeper-rules")["data"]["rules.yaml"]
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return path, load_config(text, source=str(path))


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = kube("Deployment", "music-engine")["spec"]["template"]["spec"]
    return spec


def container(name: str) -> dict[str, Any]:
    spec = pod_spec()
    found = [
        c for c in spec.get("containers", []) + spec.get("initContainers", []) if c["name"] == name
    ]
    assert len(found) == 1, name
    return found[0]


def test_every_file_in_deploy_parses() -> None:
    """YAML files load (all documents), units parse, and no file type goes unchecked."""
    seen = []
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        rel = path.relative_to(DEPLOY).as_posix()
        seen.append(rel)
        if path.suffix in (".yaml", ".yml"):
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
            assert docs and all(isinstance(d, dict) for d in docs), rel
            if rel.startswith("kubernetes/"):
                assert all({"apiVersion", "kind"} <= set(d) for d in docs), rel
        elif path.suffix == ".service":
            assert {"Unit", "Service", "Install"} <= set(parse_unit(path.read_text())), rel
        elif path.suffix == ".sysusers":
            lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
            assert lines and all(ln.split()[0] in ("u", "g", "m", "r") for ln in lines), rel
        elif path.suffix == ".cfg":  # haproxy -c runs on it in tests/test_haproxy_e2e.py
            assert re.search(r"^global$", path.read_text(), re.M), rel
        elif path.suffix == ".py":
            compile(path.read_text(), rel, "exec")
        elif path.suffix == ".md":  # a recipe's README: a title, then text
            assert path.read_text().startswith("# "), rel
        else:
            pytest.fail(f"deploy/{rel}: no check for this kind of file")
    assert "systemd/gatekeeper.service" in seen
    assert "kubernetes/deployment.yaml" in seen


# --------------------------------------------------------------------------- kubernetes


@pytest.mark.slow  # runs the CLI
def test_configmap_rules_pass_gatekeeper_check(tmp_path: Path) -> None:
    """The ConfigMap's rules.yaml is accepted by the real `gatekeeper check`."""
    path, _ = configmap_rules(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "gatekeeper", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


def test_grace_period_outlasts_the_drain(tmp_path: Path) -> None:
    """terminationGracePeriodSeconds covers drain_timeout + linger + close grace."""
    _, cfg = configmap_rules(tmp_path)
    assert pod_spec()["terminationGracePeriodSeconds"] >= stop_budget(cfg)


def test_engine_outlives_gatekeeper_on_termination() -> None:
    """The engine is a native sidecar: Kubernetes stops it only after gatekeeper drained."""
    spec = pod_spec()
    assert [c["name"] for c in spec["initContainers"]] == ["engine"]
    assert spec["initContainers"][0]["restartPolicy"] == "Always"
    assert [c["name"] for c in spec["containers"]] == ["gatekeeper"]


def test_probes_hit_the_admin_listener(tmp_path: Path) -> None:
    """liveness /healthz and readiness /readyz on admin_listen's port, bound for kubelet."""
    _, cfg = configmap_rules(tmp_path)
    gk = container("gatekeeper")
    assert gk["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": cfg.admin_listen.port}
    assert gk["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": cfg.admin_listen.port}
    assert cfg.admin_listen.host in ("0.0.0.0", "::", "")  # kubelet probes the pod IP
    ports = {p["name"]: p["containerPort"] for p in gk["ports"]}
    assert ports == {"http": cfg.listen.port, "admin": cfg.admin_listen.port}


def test_public_service_targets_gatekeeper_not_the_engine(tmp_path: Path) -> None:
    """The frontend's Service points at gatekeeper's listen port; the engine is never exposed."""
    _, cfg = configmap_rules(tmp_path)
    svc = kube("Service", "music-engine")
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == [cfg.listen.port]
    engine_port = container("engine")["ports"][0]["containerPort"]
    for doc in kube_docs():
        if doc["kind"] == "Service":
            assert engine_port not in [p["targetPort"] for p in doc["spec"]["ports"]]
    assert cfg.upstream.url == f"http://127.0.0.1:{engine_port}"


def test_rules_come_from_the_configmap() -> None:
    """--config points into a directory mount of the ConfigMap (no subPath: edits propagate)."""
    gk = container("gatekeeper")
    (mount,) = gk["volumeMounts"]
    volume = next(v for v in pod_spec()["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "gatekeeper-rules"
    assert "subPath" not in mount
    config = gk["args"][gk["args"].index("--config") + 1]
    assert config == mount["mountPath"] + "/rules.yaml"


def test_service_monitor_scrapes_the_admin_service() -> None:
    """The ServiceMonitor selects the admin Service and names one of its ports."""
    sm = kube("ServiceMonitor", "gatekeeper")
    selector = sm["spec"]["selector"]["matchLabels"]
    matches = [
        d
        for d in kube_docs()
        if d["kind"] == "Service" and selector.items() <= d["metadata"]["labels"].items()
    ]
    assert [d["metadata"]["name"] for d in matches] == ["music-engine-admin"]
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in [p["name"] for p in matches[0]["spec"]["ports"]]
    assert (
        matches[0]["spec"]["ports"][0]["targetPort"]
        == container("gatekeeper")["ports"][1]["containerPort"]
    )


@pytest.mark.slow  # runs the CLI
def test_prometheus_rule_equals_the_alert_rules_export(tmp_path: Path) -> None:
    """The PrometheusRule's spec is exactly `gatekeeper alert-rules` for the ConfigMap's rules."""
    path, _ = configmap_rules(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "gatekeeper", "alert-rules", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    rule = kube("PrometheusRule", "gatekeeper")
    assert rule["spec"] == yaml.safe_load(done.stdout), "run scripts/gen-prometheusrule"


def cpu_millicores(quantity: str | float) -> float:
    """A Kubernetes CPU quantity (``100m``, ``3``, ``0.5``) in millicores."""
    text = str(quantity)
    return float(text[:-1]) if text.endswith("m") else float(text) * 1000


def test_gatekeeper_weighs_less_than_the_engine_for_the_cpu() -> None:
    """Issue #18 §8: CPU requests are the containers' CPU weights (a container without one
    gets the minimum, below gatekeeper's): the engine requests far more than gatekeeper,
    and gatekeeper has no CPU limit (a CFS quota would stall its event loop in bursts)."""
    gk, engine = container("gatekeeper")["resources"], container("engine")["resources"]
    assert cpu_millicores(engine["requests"]["cpu"]) >= 10 * cpu_millicores(gk["requests"]["cpu"])
    assert "cpu" not in gk.get("limits", {})


def test_kustomization_lists_every_manifest() -> None:
    """kubectl apply -k deploy/kubernetes applies every manifest in the directory."""
    kust = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    files = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files


def test_multi_replica_overlay() -> None:
    """deploy/kubernetes/multi-replica: >= 2 replicas, one per node, can-admit readiness on
    the admin port, a PDB, a grace period that outlasts the drain, box_id from the pod."""
    over = KUBE / "multi-replica"
    kust = yaml.safe_load((over / "kustomization.yaml").read_text())
    assert "../" in kust["resources"] and "pdb.yaml" in kust["resources"]
    patch = yaml.safe_load((over / "deployment-patch.yaml").read_text())
    assert {p["path"] for p in kust["patches"]} == {"deployment-patch.yaml"}
    spec = patch["spec"]
    assert spec["replicas"] >= 2
    pod = spec["template"]["spec"]
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    assert pod["terminationGracePeriodSeconds"] >= stop_budget(Config())
    (gk,) = pod["containers"]
    assert gk["name"] == "gatekeeper"
    assert gk["readinessProbe"]["httpGet"] == {"path": "/readyz?admit=1", "port": 9090}
    assert gk["args"][-2:] == ["--box-id", "$(POD_NAME)"]
    assert gk["args"][:-2] == container("gatekeeper")["args"]  # the base's flags, kept
    env = {e["name"]: e for e in gk["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    pdb = yaml.safe_load((over / "pdb.yaml").read_text())
    assert pdb["kind"] == "PodDisruptionBudget" and pdb["spec"]["maxUnavailable"] == 1
    labels = kube("Deployment", "music-engine")["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == labels


# --------------------------------------------------------------------------- systemd


def test_systemd_unit_invariants() -> None:
    """Restart on failure, SIGTERM drain outlasted by TimeoutStopSec, SIGHUP reload, own user."""
    unit = parse_unit(UNIT.read_text())
    svc = "Service"
    assert unit_value(unit, svc, "Restart") == "on-failure"
    assert unit_value(unit, svc, "KillSignal") == "SIGTERM"
    assert unit_value(unit, svc, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert unit_value(unit, svc, "User") not in ("root", "0")
    start = unit_value(unit, svc, "ExecStart")
    assert re.search(r"/gatekeeper run --config /etc/gatekeeper/rules\.yaml\b", start)
    # The unit installs the repository's rules.yaml as /etc/gatekeeper/rules.yaml.
    cfg = load_config_file(ROOT / "rules.yaml")
    assert unit_seconds(unit_value(unit, svc, "TimeoutStopSec")) > stop_budget(cfg)
    for key, value in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
    ]:
        assert unit_value(unit, svc, key) == value, key
    sysusers = (DEPLOY / "systemd" / "gatekeeper.sysusers").read_text()
    assert re.search(rf"^u {unit_value(unit, svc, 'User')}\s", sysusers, re.M)


def test_systemd_gives_gatekeeper_a_lower_cpu_weight_than_the_engine() -> None:
    """Issue #18 §8: under a flood of refused retries the CPU-bound engine keeps its share.
    CPUWeight= below systemd's default of 100 (the engine's unit), and Nice= above 0."""
    unit = parse_unit(UNIT.read_text())
    assert 1 <= int(unit_value(unit, "Service", "CPUWeight")) < 100
    assert int(unit_value(unit, "Service", "Nice")) > 0


@pytest.mark.slow  # runs systemd-analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the unit (with ExecStart pointed at this install)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    exe = Path(sys.executable).with_name("gatekeeper")
    assert exe.is_file(), exe
    unit = tmp_path / "gatekeeper.service"
    unit.write_text(UNIT.read_text().replace("/opt/gatekeeper/bin/gatekeeper", str(exe)))
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr  # unknown keys are only warnings


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_invariants() -> None:
    """Slim Python base, non-root user, `gatekeeper run` entrypoint, copied paths exist.
    (Building the image needs a Docker daemon, which CI does not have.)"""
    lines = [
        ln.strip()
        for ln in (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if ln.strip() and not ln.strip().startswith("#")
    ]
    instr = [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]
    froms = [arg for op, arg in instr if op == "FROM"]
    assert froms and all(re.match(r"python:3\.1[1-9]-slim\b", f) for f in froms), froms
    users = [arg for op, arg in instr if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert [arg for op, arg in instr if op == "ENTRYPOINT"] == ['["gatekeeper", "run"]']
    assert [arg for op, arg in instr if op == "STOPSIGNAL"] == ["SIGTERM"]
    for op, arg in instr:
        if op == "COPY" and not arg.startswith("--from"):
            for src in arg.split()[:-1]:
                assert (ROOT / src).exists(), src
    cfg = load_config_file(ROOT / "gatekeeper" / "rules.yaml")
    exposed = {int(p) for op, arg in instr if op == "EXPOSE" for p in arg.split()}
    assert exposed == {cfg.listen.port, cfg.admin_listen.port}
