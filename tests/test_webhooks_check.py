"""``gatekeeper check`` reads the webhook secrets (issue #20 §1): a secret file that is
missing or unreadable, an environment variable that is unset or a value that is not a
Standard Webhooks secret fails the check (exit 2, "INVALID"), each problem naming its
YAML path and line, all reported together, as for any other bad key."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gatekeeper.config import ConfigError, load_config_file
from gatekeeper.config.reader import line_at
from gatekeeper.jobs.webhooks.secrets import check

SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()

RULES = """\
routes:
  - {name: gen, match: {path: /generate}, action: queue}
jobs:
  webhooks:
    allow: [http://127.0.0.1:9/hooks/]
    request_secret_file: {request}
    destinations:
      - name: fromfile
        url: http://127.0.0.1:9/a
        secret_file: {file}
      - name: fromenv
        url: http://127.0.0.1:9/b
        secret_env: GK_TEST_HOOK_SECRET
"""


def rules(tmp_path: Path, file: str, request: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES.replace("{file}", file).replace("{request}", request))
    return path


def gk_check(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "GK_TEST_HOOK_SECRET"}
    return subprocess.run(
        [sys.executable, "-m", "gatekeeper", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=config.parent,
        env={**clean, **env},
        timeout=60,
    )


@pytest.mark.parametrize(
    ("path", "line"),
    [
        ("jobs", 4),  # a mapping value starts on the line of its first key
        ("jobs.webhooks.request_secret_file", 6),
        ("jobs.webhooks.destinations[0].secret_file", 10),
        ("jobs.webhooks.destinations[1].secret_env", 13),
        ("jobs.webhooks.destinations[2].secret_env", None),
        ("jobs.nothing", None),
        ("routes[0].name", 2),
    ],
)
def test_line_at_finds_the_value_of_a_path(path: str, line: int | None) -> None:
    """line_at walks a problem's YAML path (keys and [i]) to its line; None when absent."""
    assert line_at(RULES, path) == line
    assert line_at("{not yaml", path) is None


def test_check_names_each_unreadable_secret(tmp_path: Path) -> None:
    """check raises one ConfigError with a problem per unreadable secret (path and line),
    and passes once every secret can be read."""
    (tmp_path / "hooks").mkdir()
    cfg = load_config_file(rules(tmp_path, "nope.key", "hooks"))
    with pytest.raises(ConfigError) as e:
        check(cfg, environ={})
    got = {(p.path, p.line) for p in e.value.problems}
    assert got == {
        ("jobs.webhooks.request_secret_file", 6),
        ("jobs.webhooks.destinations[0].secret_file", 10),
        ("jobs.webhooks.destinations[1].secret_env", 13),
    }
    (tmp_path / "good.key").write_text(SECRET)
    check(
        load_config_file(rules(tmp_path, "good.key", "good.key")), {"GK_TEST_HOOK_SECRET": SECRET}
    )


@pytest.mark.slow  # runs the CLI
def test_gatekeeper_check_fails_on_unreadable_webhook_secrets(tmp_path: Path) -> None:
    """A missing secret file, a directory as the request secret and an unset variable:
    check prints INVALID, exits 2 and names all three keys with their lines; a secret
    that is not 'whsec_...' is named too; with all three readable the check passes."""
    (tmp_path / "hooks").mkdir()  # not a file: cannot be read
    config = rules(tmp_path, "missing.key", "hooks")
    res = gk_check(config, {})
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stdout.splitlines()[0] == f"checked {config}: INVALID"
    err = res.stderr
    assert "3 problem(s)" in err, err
    assert "line 6: jobs.webhooks.request_secret_file: cannot read" in err, err
    assert f"line 10: jobs.webhooks.destinations[0].secret_file: cannot read {tmp_path}" in err
    assert "missing.key" in err and "No such file" in err, err
    assert (
        "line 13: jobs.webhooks.destinations[1].secret_env: $GK_TEST_HOOK_SECRET is not set" in err
    )

    (tmp_path / "good.key").write_text(SECRET + "\n")
    (tmp_path / "bad.key").write_text("hunter2\n")
    config = rules(tmp_path, "bad.key", "good.key")
    res = gk_check(config, {"GK_TEST_HOOK_SECRET": SECRET})
    assert res.returncode == 2, res.stdout + res.stderr
    assert "1 problem(s)" in res.stderr, res.stderr
    assert (
        f"line 10: jobs.webhooks.destinations[0].secret_file: the secret in {tmp_path}/bad.key"
        " must start with 'whsec_'" in res.stderr
    ), res.stderr

    config = rules(tmp_path, "good.key", "good.key")
    res = gk_check(config, {"GK_TEST_HOOK_SECRET": SECRET})
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines()[0].startswith(f"checked {config}: OK")
