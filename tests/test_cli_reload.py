"""`gatekeeper reload` (issue #18 §7): the admin API's POST /reload from the command line,
with an exit status and output that say what changed or what is wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support import Proc, free_port, start_gatekeeper

from gatekeeper.cli.reload import reload_report

RULES = """\
admission:
  max_in_flight: 1
routes:
  - name: generate
    match: {methods: [POST], path: /generate/**}
    action: queue
"""


def test_report_of_a_success_names_each_change() -> None:
    code, lines = reload_report(
        {
            "result": "success",
            "source": "/etc/gk/rules.yaml",
            "changed": [{"key": "admission.max_in_flight", "old": 1, "new": 2}],
            "needs_restart": [{"key": "listen", "old": "0.0.0.0:8080", "new": "0.0.0.0:8081"}],
        }
    )
    assert code == 0
    assert lines == [
        "reloaded /etc/gk/rules.yaml: 1 setting(s) changed",
        "  admission.max_in_flight: 1 -> 2",
        "  listen: 0.0.0.0:8080 -> 0.0.0.0:8081 (needs a restart; the running value stays)",
    ]


def test_report_of_no_change_says_so() -> None:
    body = {"result": "success", "source": "r.yaml", "changed": [], "needs_restart": []}
    assert reload_report(body) == (0, ["reloaded r.yaml: no change"])


def test_report_of_a_failure_lists_every_problem_with_its_line() -> None:
    code, lines = reload_report(
        {
            "result": "failure",
            "source": "r.yaml",
            "errors": [
                {"path": "admission.max_in_flight", "line": 2, "message": "must be >= 1"},
                {"path": "", "line": None, "message": "not YAML"},
            ],
        }
    )
    assert code == 2
    assert lines[0].startswith("reload of r.yaml FAILED: 2 problem(s)")
    assert lines[1:] == ["  line 2: admission.max_in_flight: must be >= 1", "  (file): not YAML"]


def test_report_of_something_else_is_exit_1() -> None:
    assert reload_report({"detail": "nope"})[0] == 1


def gk(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatekeeper", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
    )


@pytest.mark.slow  # runs the CLI
def test_unreachable_admin_is_exit_1_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    res = gk("reload", "--admin", url)
    assert res.returncode == 1
    assert f"{url}/reload" in res.stderr and "Traceback" not in res.stderr


def test_reload_a_running_gatekeeper(tmp_path: Path, procs: list[Proc]) -> None:
    """A real `gatekeeper run`; edit its file; `gatekeeper reload` reports the change (exit 0),
    then a broken file (exit 2, the problem and its line; the rules in force stay)."""
    p, _, admin = start_gatekeeper(tmp_path, RULES, f"http://127.0.0.1:{free_port()}")
    procs.append(p)
    config = Path(p.args[p.args.index("--config") + 1])
    config.write_text(config.read_text().replace("max_in_flight: 1", "max_in_flight: 2"))

    # As the README writes it: run from the directory whose ./rules.yaml names admin_listen.
    here = tmp_path / "here"
    here.mkdir()
    (here / "rules.yaml").write_text(f"admin_listen: {admin.removeprefix('http://')}\n")
    res = gk("reload", cwd=here)
    assert res.returncode == 0, res.stderr
    assert "1 setting(s) changed" in res.stdout
    assert "admission.max_in_flight: 1 -> 2" in res.stdout

    res = gk("reload", "--admin", admin)
    assert res.returncode == 0, res.stderr
    assert "no change" in res.stdout

    config.write_text(config.read_text().replace("max_in_flight: 2", "max_in_flight: 0"))
    res = gk("reload", "--admin", admin)
    assert res.returncode == 2
    assert "FAILED: 1 problem(s); the previous rules stay in force" in res.stderr
    assert "admission.max_in_flight" in res.stderr and "line " in res.stderr
    assert res.stdout == ""
