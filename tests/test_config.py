"""Config loading: defaults, the documented rules.yaml, and errors with path + line + value."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from gatekeeper.config import (
    Config,
    ConfigError,
    HostPort,
    load_config,
    load_config_file,
    parse_duration,
)


def problems(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(ConfigError) as info:
        load_config(textwrap.dedent(text))
    return [(p.line, p.path, p.message) for p in info.value.problems]


def test_packaged_rules_yaml_documents_the_defaults(repo_root: Path) -> None:
    """rules.yaml (top level and packaged) loads to exactly the built-in defaults."""
    top = load_config_file(repo_root / "rules.yaml")
    packaged = load_config_file(repo_root / "gatekeeper" / "rules.yaml")
    assert replace(top, source="") == replace(Config(), source="")
    assert replace(packaged, source="") == replace(Config(), source="")


def test_seed_settings_are_the_defaults() -> None:
    """The seed's httpx timeouts and limits are the gated pool's defaults, named as there."""
    up = Config().upstream
    assert (up.timeouts.connect, up.timeouts.read, up.timeouts.write, up.timeouts.pool) == (
        30.0,
        900.0,
        30.0,
        10.0,
    )
    assert (up.limits.max_connections, up.limits.max_keepalive_connections) == (2, 1)
    assert up.limits.keepalive_expiry == 30.0
    assert Config().shutdown.drain_timeout == 900.0


def test_empty_file_is_all_defaults_with_a_warning() -> None:
    """An empty document means every default, and says so as a warning."""
    cfg = load_config("")
    assert replace(cfg, source="", warnings=()) == replace(Config(), source="")
    assert len(cfg.warnings) == 1 and "every key has its default" in cfg.warnings[0]


def test_every_problem_is_reported_with_line_and_value() -> None:
    """All problems are listed together, each with its YAML path, line and bad value."""
    text = """\
        listen: nowhere
        upstream:
          url: ftp://engine
          timeouts:
            read: soon
        admission:
          max_in_flight: two
          resources:
            cpu_percent:
              reject_abve: 95
              recover_below: 200
        routes:
          - name: gen
            match: {path: generate, methods: [FETCH]}
            action: allow
        """
    got = problems(text)
    paths = {(line, path) for line, path, _ in got}
    assert (1, "listen") in paths
    assert (3, "upstream.url") in paths
    assert (5, "upstream.timeouts.read") in paths
    assert (7, "admission.max_in_flight") in paths
    assert (10, "admission.resources.cpu_percent.reject_abve") in paths
    assert (11, "admission.resources.cpu_percent.recover_below") in paths
    assert (14, "routes[0].match.path") in paths
    assert (14, "routes[0].match.methods") in paths
    assert (15, "routes[0].action") in paths
    with pytest.raises(ConfigError) as info:
        load_config(textwrap.dedent(text), source="bad.yaml")
    message = str(info.value)
    assert "bad.yaml:line 7: admission.max_in_flight: must be an integer (got 'two')" in message
    assert "reject_abve: unknown key" in message


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        ("admission: {on_client_disconnect: stop}", "admission.on_client_disconnect", "one of"),
        ("admission: {reject_status: 200}", "admission.reject_status", ">= 400"),
        ("admission: {resources: {source: file}}", "admission.resources.file", "required"),
        (
            "admission: {resources: {memory_percent: {reject_above: 70, recover_below: 80}}}",
            "admission.resources.memory_percent.recover_below",
            "<= reject_above",
        ),
        (
            "upstream: {limits: {max_connections: 1, max_keepalive_connections: 2}}",
            "upstream.limits.max_keepalive_connections",
            "<= max_connections",
        ),
        ("upstream: {timeouts: {pool: -1}}", "upstream.timeouts.pool", "> 0"),
        ("upstream: {timeouts: {pool: soon}}", "upstream.timeouts.pool", "duration"),
        ("limits: {max_body_bytes: 1.5}", "limits.max_body_bytes", "integer"),
        ("messages: {busy: 'wait {minutes}'}", "messages.busy", "unknown placeholder"),
        ("messages: {bsy: hi}", "messages.bsy", "unknown reason code"),
        (
            "routes: [{name: a, match: {path: /a}, action: pass, status: 410}]",
            "routes[0].status",
            "only applies to action 'block'",
        ),
        ("routes: [{match: {path: /a}, action: pass}]", "routes[0].name", "required"),
        (
            "routes: [{name: a, match: {path: /a}, action: pass},"
            " {name: a, match: {path: /b}, action: pass}]",
            "routes[1].name",
            "duplicate route name",
        ),
        ("routes: [{name: a, match: {path: '/a**'}, action: pass}]", "routes[0].match.path", "**"),
        ("routes: {name: a}", "routes", "list"),
        ("reload: {watch: yes please}", "reload.watch", "true or false"),
        ("admin_listen: 0.0.0.0:8080", "admin_listen", "differ"),
        ("agent_listen: 127.0.0.1:9090", "agent_listen", "differ"),
        ("agent_listen: nowhere", "agent_listen", "HOST:PORT"),
        ("box_id: Box-A", "box_id", "[a-z0-9-]"),
        ("box_id: a.b", "box_id", "[a-z0-9-]"),
        ("box_id: -a", "box_id", "starting with"),
        (f"box_id: {'a' * 33}", "box_id", "1-32"),
        ("speling: 1", "speling", "unknown key"),
        (
            "admission: {resources: {cpu_percent: {reject_abve: 80}}}",
            "admission.resources.cpu_percent.reject_abve",
            "unknown key; did you mean 'reject_above'?",
        ),
        (
            "admission: {on_client_disconnect: cancle}",
            "admission.on_client_disconnect",
            "'cancel'?",
        ),
        ("admission: {max_in_flight: 0}", "admission.max_in_flight", "must be >= 1"),
        ("limits: {header_timeout: 0}", "limits.header_timeout", "> 0"),
        ("limits: {max_client_connections: 0}", "limits.max_client_connections", ">= 1"),
        ("limits: {spool_memory_bytes: -1}", "limits.spool_memory_bytes", ">= 0"),
        (
            "limits: {client_body_timeout: 60s, client_body_deadline: 30s}",
            "limits.client_body_deadline",
            ">= client_body_timeout",
        ),
        ("upstream: {url: 'http://127.0.0.1:99999'}", "upstream.url", "URL"),
        (
            "routes: [{name: g, match: {path: /g, api_name: [x]}, action: admit}]",
            "routes[0].match.api_name",
            "only applies to action 'gradio'",
        ),
        (
            "routes: [{name: g, match: {path: /**, fn_index: [0, -1]}, action: gradio}]",
            "routes[0].match.fn_index",
            "integers >= 0",
        ),
        (
            "routes: [{name: g, match: {path: /**, api_name: []}, action: gradio}]",
            "routes[0].match.api_name",
            "non-empty list of Gradio api names",
        ),
        (
            "routes: [{name: g, match: {path: /**}, action: gradio, direct_calls: allow}]",
            "routes[0].direct_calls",
            "block",
        ),
        (
            "routes: [{name: g, match: {path: /g}, action: pass, direct_calls: admit}]",
            "routes[0].direct_calls",
            "only applies to action 'gradio'",
        ),
        ("admission: {expected_seconds: .inf}", "admission.expected_seconds", "duration"),
        (
            "admission: {resources: {cpu_percent: {reject_above: .nan}}}",
            "admission.resources.cpu_percent.reject_above",
            "finite",
        ),
    ],
)
def test_invalid_values_table(text: str, path: str, fragment: str) -> None:
    """Each invalid value is named by its path with a message saying what is expected."""
    got = problems(text)
    assert any(p == path and fragment in msg for _, p, msg in got), got


def test_yaml_syntax_error_has_a_line() -> None:
    """Broken YAML is reported with its line, not a traceback."""
    got = problems("admission:\n  max_in_flight: [1\n")
    assert got[0][0] is not None and "invalid YAML" in got[0][2]


def test_yaml_syntax_error_names_the_file_not_a_unicode_string() -> None:
    """A YAML syntax error is reported against the file, with line and column."""
    with pytest.raises(ConfigError) as info:
        load_config("admission:\n  max_in_flight: [1\n", source="/etc/gatekeeper/rules.yaml")
    text = str(info.value)
    assert "<unicode string>" not in text
    assert "/etc/gatekeeper/rules.yaml:line " in text and "column" in text, text


def test_unreadable_file_says_so_without_a_fake_line(tmp_path: Path) -> None:
    """A missing file reads '<file>: cannot read file: <why>', not 'line ?: <root>'."""
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    text = str(info.value)
    assert f"  {path}: cannot read file: No such file or directory" in text, text
    assert "line ?" not in text and "<root>" not in text


def test_new_limits_keys_have_documented_defaults() -> None:
    """The edge limits of issue #8 default to: 10s head, 4096 connections, 1 MiB spool, 10m body."""
    lim = load_config("limits: {}").limits
    assert (lim.header_timeout, lim.max_client_connections) == (10.0, 4096)
    assert (lim.spool_memory_bytes, lim.client_body_deadline) == (1 << 20, 600.0)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (30, 30.0),
        (2.5, 2.5),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("15 m", 900.0),
        ("soon", None),
        (True, None),
        ([1], None),
    ],
)
def test_durations(value: object, seconds: float | None) -> None:
    """Durations are numbers of seconds or strings with ms/s/m/h units."""
    assert parse_duration(value) == seconds


def test_overrides_are_validated() -> None:
    """CLI overrides apply over the file and are validated like it."""
    cfg = Config().with_overrides(upstream="http://engine:9000/", listen="127.0.0.1:0")
    assert cfg.upstream.url == "http://engine:9000"
    assert cfg.listen == HostPort("127.0.0.1", 0)
    with pytest.raises(ConfigError, match="--upstream"):
        Config().with_overrides(upstream="engine:9000")


def test_agent_listen_and_box_id() -> None:
    """agent_listen and box_id default to off, read from the file, and --agent-listen /
    --box-id override them, validated like the file."""
    assert (Config().agent_listen, Config().box_id) == (None, None)
    cfg = load_config("agent_listen: 127.0.0.1:9100\nbox_id: gpu-7\n")
    assert (cfg.agent_listen, cfg.box_id) == (HostPort("127.0.0.1", 9100), "gpu-7")
    cfg = cfg.with_overrides(agent_listen="127.0.0.1:9101", box_id="b")
    assert (cfg.agent_listen, cfg.box_id) == (HostPort("127.0.0.1", 9101), "b")
    with pytest.raises(ConfigError, match="--box-id"):
        Config().with_overrides(box_id="B.1")
    with pytest.raises(ConfigError, match="--agent-listen"):
        Config().with_overrides(agent_listen="127.0.0.1:9090")


def test_message_formatting() -> None:
    """Messages render their placeholders; the defaults speak Chinese and English."""
    msg = Config().message("busy", retry_after=42)
    assert "42" in msg and "请" in msg and "retry" in msg


@pytest.mark.slow  # runs the CLI
def test_check_command_exit_codes(tmp_path: Path, repo_root: Path) -> None:
    """`gatekeeper check` exits 0 with a summary, or 2 listing every problem with its line."""
    ok = subprocess.run(
        [sys.executable, "-m", "gatekeeper", "check", "--config", str(repo_root / "rules.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout and "generate: POST /generate/** queue" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("admission:\n  max_in_flight: -1\n  sample_intervall: 1\nlisten: x\n")
    res = subprocess.run(
        [sys.executable, "-m", "gatekeeper", "check", "--config", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2
    assert "3 problem(s)" in res.stderr
    assert "line 2: admission.max_in_flight: must be >= 1 (0 would reject" in res.stderr
    assert "line 3: admission.sample_intervall: unknown key" in res.stderr
    assert "line 4: listen: must be HOST:PORT" in res.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "gatekeeper", "check", "--config", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 2 and "cannot read file" in missing.stderr
