"""The JSON Schema of rules.yaml: generated from the declared keys, shipped, and true.

The schema is for editors (completion, early marks); ``gatekeeper check`` is the
full check. So the tests pin down that the two agree on every example we ship
or document, and on a table of good and bad snippets.
"""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gatekeeper.cli.main import main
from gatekeeper.config import Config, ConfigError, load_config
from gatekeeper.config.declare import keys_of
from gatekeeper.config.schema import config_schema, schema_text

VALIDATOR = jsonschema.Draft202012Validator(config_schema())


def schema_errors(text: str) -> list[str]:
    data = yaml.safe_load(text)
    return [f"{list(e.absolute_path)}: {e.message}" for e in VALIDATOR.iter_errors(data)]


def loader_accepts(text: str) -> bool:
    try:
        load_config(text)
    except ConfigError:
        return False
    return True


def test_shipped_schema_is_what_gatekeeper_schema_prints(
    repo_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """gatekeeper/rules.schema.json equals `gatekeeper schema`'s output (regenerate it with
    `gatekeeper schema > gatekeeper/rules.schema.json`); the top-level copy is the same file."""
    assert main(["schema"]) == 0
    printed = capsys.readouterr().out
    shipped = (repo_root / "gatekeeper" / "rules.schema.json").read_text(encoding="utf-8")
    assert printed == shipped == schema_text()
    assert (repo_root / "rules.schema.json").read_text(encoding="utf-8") == shipped


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    """The generated document is itself a valid JSON Schema of the declared draft."""
    schema = config_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_every_declared_key_is_documented() -> None:
    """Each key of every section carries a description, so an editor can show it."""

    def walk(shape: type, path: str) -> list[str]:
        missing = []
        for f, spec in keys_of(shape):
            where = f"{path}.{spec.key(f.name)}".lstrip(".")
            if not spec.doc:
                missing.append(where)
            if spec.shape is not None:
                missing += walk(spec.shape, where)
        return missing

    assert walk(Config, "") == []


def test_shipped_rules_yaml_names_and_passes_the_schema(repo_root: Path) -> None:
    """Both rules.yaml files (the top-level one links to the packaged one) start with the
    yaml-language-server line naming the schema next to them, and validate against it."""
    for path in (repo_root / "rules.yaml", repo_root / "gatekeeper" / "rules.yaml"):
        text = path.read_text(encoding="utf-8")
        first = text.splitlines()[0]
        assert first == "# yaml-language-server: $schema=./rules.schema.json", path
        assert (path.parent / "rules.schema.json").is_file()
        assert schema_errors(text) == [], path


def test_the_kubernetes_configmap_rules_pass_the_schema(repo_root: Path) -> None:
    """The rules.yaml embedded in deploy/kubernetes/configmap.yaml validates too."""
    manifest = yaml.safe_load((repo_root / "deploy/kubernetes/configmap.yaml").read_text())
    assert schema_errors(manifest["data"]["rules.yaml"]) == []


def _doc_examples(repo_root: Path) -> list[tuple[str, str]]:
    """Every fenced ```yaml block of README.md and docs/*.md that is a rules file: a
    mapping whose keys are all top-level keys of rules.yaml (not a Compose file, a
    Prometheus config or a fragment of a list)."""
    top = set(config_schema()["properties"])
    found = []
    for doc in [repo_root / "README.md", *sorted((repo_root / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        for m in re.finditer(r"^([ \t]*)```yaml\n(.*?)^\1```", text, re.M | re.S):
            block = textwrap.dedent(m.group(2))
            data = yaml.safe_load(block)
            if isinstance(data, dict) and data and set(data) <= top:
                line = text[: m.start()].count("\n") + 1
                found.append((f"{doc.name}:{line}", block))
    return found


def test_every_rules_example_in_the_docs_passes_the_schema_and_the_loader(
    repo_root: Path,
) -> None:
    """Each rules.yaml example in the README and docs/ is valid for the schema (what an
    editor shows) and for the loader (what gatekeeper check says)."""
    examples = _doc_examples(repo_root)
    assert len(examples) >= 5, examples  # the README's Gradio, engines, HAProxy, PSI, alerts
    for where, block in examples:
        assert schema_errors(block) == [], where
        assert loader_accepts(block), where


# (snippet, valid): the loader and the schema must say the same of each.
AGREE = [
    ("", True),
    ("listen: 0.0.0.0:8080\nadmin_listen: 127.0.0.1:9090\n", True),
    ("listen: nowhere\n", False),
    ("listen: null\n", False),
    ("agent_listen: null\n", True),
    ("agent_listen: :9100\n", True),
    ("box_id: a-1\n", True),
    ("box_id: A.1\n", False),
    ("reject_abve: 95\n", False),
    ("upstream:\n", True),
    ("upstream:\n  url: https://engine:8443/base\n", True),
    ("upstream:\n  url: ftp://engine\n", False),
    ("upstream:\n  timeouts:\n    read: 15m\n", True),
    ("upstream:\n  timeouts:\n    read: soon\n", False),
    ("upstream:\n  timeouts:\n    read: 0s\n", False),
    ("upstream:\n  timeouts:\n    read: 0\n", False),
    ("upstream:\n  limits:\n    keepalive_expiry: 0s\n", True),
    ("upstream:\n  limits:\n    max_connections: 0\n", False),
    ("upstream:\n  limits:\n    max_connections: true\n", False),
    ("upstream:\n  passthrough:\n    limits:\n      max_connections: 20\n", True),
    ("upstream:\n  probe:\n    path: health\n", False),
    ("upstream:\n  engines:\n    - {name: gpu0, url: 'http://127.0.0.1:8000'}\n", True),
    ("upstream:\n  engines:\n    - {name: GPU0, url: 'http://127.0.0.1:8000'}\n", False),
    ("upstream:\n  engines:\n    - {url: 'http://127.0.0.1:8000'}\n", False),
    ("upstream:\n  engines:\n    - {name: gpu0, url: 'http://x', colour: red}\n", False),
    ("upstream:\n  engines: []\n", False),
    ("limits:\n  max_body_bytes: 0\n", True),
    ("limits:\n  max_body_bytes: -1\n", False),
    ("limits:\n  header_timout: 5s\n", False),
    ("admission:\n  max_in_flight: 2\n", True),
    ("admission:\n  max_in_flight: 0\n", False),
    ("admission:\n  max_in_flight: 1.5\n", False),
    ("admission:\n  reject_status: 429\n", True),
    ("admission:\n  reject_status: 200\n", False),
    ("admission:\n  on_client_disconnect: cancel\n", True),
    ("admission:\n  on_client_disconnect: abort\n", False),
    ("admission:\n  resources:\n    cpu_smoothing: 1\n", True),
    ("admission:\n  resources:\n    cpu_smoothing: 0\n", False),
    ("admission:\n  resources:\n    cpu_percent: {reject_above: 95, recover_below: 80}\n", True),
    ("admission:\n  resources:\n    cpu_percent: {reject_above: 101}\n", False),
    ("admission:\n  resources:\n    cgroup: none\n", True),
    ("admission:\n  resources:\n    cgroup: false\n", True),
    ("admission:\n  resources:\n    cgroup: /system.slice/songgen.service\n", True),
    ("admission:\n  resources:\n    cgroup: songgen\n", False),
    ("admission:\n  resources:\n    cgroup: /system.slice/../etc\n", False),
    ("admission:\n  resources:\n    memory_pressure: {reject_above: 10}\n", True),
    ("admission:\n  resources:\n    memory_pressure: {recover_below: 2}\n", False),
    ("admission:\n  resources:\n    io_pressure: {reject_above: 40, line: full}\n", True),
    ("admission:\n  resources:\n    io_pressure: {reject_above: 40, line: half}\n", False),
    ("admission:\n  resources:\n    gpu:\n      devices: [0, 1]\n", True),
    ("admission:\n  resources:\n    gpu:\n      devices: [-1]\n", False),
    (
        "admission:\n  resources:\n    gpu:\n      memory_percent: {reject_above: 95, line: x}\n",
        False,
    ),
    ("admission:\n  queue:\n    max_waiting: 0\n    client_key: header:X-User-Id\n", True),
    ("admission:\n  queue:\n    client_key: cookie:session\n", False),
    ("admission:\n  queue:\n    per_client: 0\n", False),
    ("admission:\n  queue:\n    trusted_proxies: [127.0.0.1, 10.0.0.0/8]\n", True),
    ("admission:\n  queue:\n    trusted_proxies: 10.0.0.0/8\n", False),
    ("routes: []\n", True),
    ("routes:\n  - {name: gen, match: {path: /generate/**}, action: admit}\n", True),
    ("routes:\n  - {name: gen, match: {path: /generate/**}}\n", False),
    ("routes:\n  - {name: gen, match: {methods: [POST]}, action: admit}\n", False),
    ("routes:\n  - {name: gen, action: admit}\n", False),
    ("routes:\n  - {name: gen, match: {path: /g, methods: [FETCH]}, action: admit}\n", False),
    ("routes:\n  - {name: shut, match: {path: /x}, action: block, status: 410}\n", True),
    ("routes:\n  - {name: shut, match: {path: /x}, action: block, status: 100}\n", False),
    ("routes:\n  - {name: app, match: {path: /**, api_name: [gen]}, action: gradio}\n", True),
    ("routes:\n  - {name: app, match: {path: /**, fn_index: []}, action: gradio}\n", False),
    ("routes:\n  - {name: g, match: {path: /g}, action: gradio, direct_calls: admit}\n", True),
    ("routes:\n  - {name: g, match: {path: /g}, action: gradio, direct_calls: allow}\n", False),
    ("routes: {name: gen}\n", False),
    ("messages:\n  busy: 'busy, retry in {retry_after} s'\n", True),
    ("messages:\n  bussy: 'busy'\n", False),
    ("messages:\n  busy: ''\n", False),
    ("status_path: null\njobs_path: /jobs\n", True),
    ("status_path: status\n", False),
    ("jobs_path: /_gatekeeper/jobs/*\n", False),
    ("jobs:\n  dir: /var/lib/gatekeeper\n  keep: 1h\n  coalesce: false\n", True),
    ("jobs:\n  max_bytes: 0\n", False),
    ("jobs:\n  coalesce: maybe\n", False),
    ("shutdown:\n  drain_timeout: 0\n  linger: 0s\n", True),
    ("shutdown:\n  drain_log_interval: 0\n", False),
    ("reload:\n  watch: true\n  watch_interval: 500ms\n", True),
    ("reload:\n  watch: yes please\n", False),
    ("alerts:\n  receivers: []\n  rules: []\n", True),
    ("alerts:\n  receivers:\n    - {name: am, type: alertmanager, url: 'http://am:9093'}\n", True),
    ("alerts:\n  receivers:\n    - {name: am, type: pager, url: 'http://am:9093'}\n", False),
    ("alerts:\n  receivers:\n    - {name: am}\n", False),
    ("alerts:\n  instance: box-1\n  external_url: https://box-1.example\n", True),
    ("alerts:\n  external_url: box-1\n", False),
    (
        "alerts:\n  rules:\n    - alert: Hot\n      expr: cpu_percent > 95\n      for: 1m\n"
        "      severity: critical\n      summary: hot\n      runbook: cool it\n"
        "      labels: {team: music}\n",
        True,
    ),
    (
        "alerts:\n  rules:\n    - alert: Hot\n      expr: cpu_temp > 95\n"
        "      severity: critical\n      summary: hot\n      runbook: cool it\n",
        False,
    ),
    (
        "alerts:\n  rules:\n    - alert: Hot\n      expr: cpu_percent > 95\n"
        "      severity: page\n      summary: hot\n      runbook: cool it\n",
        False,
    ),
    ("alerts:\n  rules:\n    - alert: Hot\n      expr: cpu_percent > 95\n", False),
    (
        "alerts:\n  rules:\n    - alert: Hot\n      expr: cpu_percent > 95\n"
        "      severity: info\n      summary: hot\n      runbook: cool it\n"
        "      labels: {severity: page}\n",
        False,
    ),
    (
        "alerts:\n  rules:\n    - alert: Hot\n      expr: cpu_percent > 95\n"
        "      severity: info\n      summary: hot\n      runbook: cool it\n"
        "      labels: {__team: music}\n",
        False,
    ),
    (
        "alerts:\n  rules:\n    - alert: Hot\n      expr: cpu_percent > 95\n"
        "      severity: info\n      summary: hot\n      runbook: cool it\n"
        "      labels: {team: true}\n",
        False,
    ),
]


@pytest.mark.parametrize(("text", "valid"), AGREE)
def test_the_loader_and_the_schema_agree(text: str, valid: bool) -> None:
    """A snippet the loader accepts passes the schema, and one it rejects fails it."""
    assert loader_accepts(text) is valid, "loader"
    errors = schema_errors(text)
    assert (errors == []) is valid, errors


def test_schema_defaults_are_the_code_defaults() -> None:
    """The default shown by an editor for a scalar key is the value Config() has."""
    schema = config_schema()

    def walk(node: dict[str, Any], obj: Any, path: str) -> None:
        for key, sub in node.get("properties", {}).items():
            field = next(
                (f for f, s in keys_of(type(obj)) if s.key(f.name) == key and not s.under),
                None,
            )
            if field is None:
                continue
            value = getattr(obj, field.name)
            if "default" in sub:
                shown = sub["default"]
                actual = json.loads(json.dumps(value, default=str))
                if isinstance(value, tuple):
                    actual = list(value)
                elif not isinstance(value, bool | int | float | str | type(None)):
                    actual = str(value) if not hasattr(value, "describe") else value.describe()
                assert shown == actual, f"{path}{key}"
            if dataclasses.is_dataclass(value):
                walk(sub, value, f"{path}{key}.")

    walk(schema, Config(), "")
