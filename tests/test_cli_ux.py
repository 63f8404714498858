"""What a new operator meets: the demo's generated rules and live line, pipes, --help."""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from gatekeeper.cli.demo import CLEAR_LINE, LiveLine, demo_rules
from gatekeeper.config import Admission, Config, Resources, load_config
from gatekeeper.resources.monitor import Monitor, Reading


class FakeStream(io.StringIO):
    """A text stream that says whether it is a terminal."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


# --------------------------------------------------------------------------- demo rules


def test_demo_rules_set_expected_seconds_to_the_song_length(repo_root: Path) -> None:
    """The demo's rules are the user's rules with admission.expected_seconds = --seconds."""
    text = (repo_root / "rules.yaml").read_text()
    original = load_config(text)
    cfg = load_config(demo_rules(text, 60.0, "rules.yaml"))
    assert original.admission.expected_seconds == 600
    assert cfg.admission.expected_seconds == 60
    assert cfg.admission.max_in_flight == original.admission.max_in_flight
    assert cfg.routes == original.routes and cfg.messages == original.messages


@pytest.mark.parametrize("text", ["", "admission:\n", "admission:\n  max_in_flight: 2\n"])
def test_demo_rules_from_sparse_files(text: str) -> None:
    """An empty file or an empty admission section still gets the estimate, nothing lost."""
    cfg = load_config(demo_rules(text, 1.5, "x.yaml"))
    assert cfg.admission.expected_seconds == 1.5
    assert cfg.admission.max_in_flight == (2 if "max_in_flight" in text else 1)


# --------------------------------------------------------------------------- live line


def test_log_lines_are_printed_above_the_live_line_on_a_terminal() -> None:
    """On a terminal a log line clears the live line, is written whole, then the line is
    redrawn: no log line starts in the middle of the status (issue: `026-12-02...`)."""
    out, err = FakeStream(tty=True), FakeStream(tty=True)
    live = LiveLine(out, err, width=lambda: 80)
    live.show("generating 10%")
    live.above("2026-12-02T21:04:41 WARNING gatekeeper.monitor cpu\n")
    assert err.getvalue() == "2026-12-02T21:04:41 WARNING gatekeeper.monitor cpu\n"
    assert out.getvalue() == (CLEAR_LINE + "generating 10%") + CLEAR_LINE + (
        CLEAR_LINE + "generating 10%"
    )


def test_live_line_is_cut_to_the_terminal_width() -> None:
    """A line longer than the terminal would wrap and could not be redrawn in place."""
    out = FakeStream(tty=True)
    live = LiveLine(out, FakeStream(tty=True), width=lambda: 10)
    live.show("x" * 50)
    assert out.getvalue() == CLEAR_LINE + "x" * 9


def test_without_a_terminal_lines_pass_through_untouched() -> None:
    """Redirected to files, log lines carry no escape sequences and nothing is redrawn."""
    out, err = FakeStream(tty=False), FakeStream(tty=False)
    live = LiveLine(out, err, width=lambda: 80)
    live.above("a log line")
    live.end()
    assert err.getvalue() == "a log line\n" and out.getvalue() == ""


def test_stderr_redirected_leaves_the_live_line_alone() -> None:
    """Only when both streams reach the terminal is the live line cleared for a log line."""
    out, err = FakeStream(tty=True), FakeStream(tty=False)
    live = LiveLine(out, err, width=lambda: 80)
    live.show("status")
    live.above("log")
    assert out.getvalue() == CLEAR_LINE + "status" and err.getvalue() == "log\n"


def test_end_moves_below_the_live_line() -> None:
    """A final message after the live line starts on a line of its own."""
    out = FakeStream(tty=True)
    live = LiveLine(out, FakeStream(tty=True), width=lambda: 80)
    live.show("status")
    live.end()
    assert out.getvalue().endswith("status\n")


# --------------------------------------------------------------------------- log levels


async def test_overload_is_a_warning_and_recovery_is_info(caplog: pytest.LogCaptureFixture) -> None:
    """`overloaded=True` is logged at WARNING, the way back to `overloaded=False` at INFO:
    an operator scanning for warnings sees the trouble, not the good news."""
    readings = iter([(50.0, 10.0), (95.0, 10.0), (60.0, 10.0)])
    done = asyncio.Event()

    def factory(_: Resources) -> Callable[[], Reading]:
        def sample() -> Reading:
            try:
                return next(readings)
            except StopIteration:
                done.set()
                return (60.0, 10.0)

        return sample

    res = Resources(cpu_smoothing=1.0)
    cfg = replace(Config(), admission=replace(Admission(sample_interval=0.01), resources=res))
    mon = Monitor(lambda: cfg, lambda s: None, clock=lambda: 0.0, sampler_factory=factory)
    caplog.set_level(logging.INFO, logger="gatekeeper.monitor")
    task = asyncio.create_task(mon.run())
    await asyncio.wait_for(done.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    changes = [(r.levelname, r.getMessage()) for r in caplog.records if "changed" in r.msg]
    assert [level for level, _ in changes] == ["WARNING", "INFO"], changes
    assert "cpu 95.0% overloaded=True" in changes[0][1]
    assert "overloaded=False" in changes[1][1]


# --------------------------------------------------------------------------- pipes


def run_into_closed_pipe(*argv: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """``gatekeeper ARGV`` with stdout a pipe whose reader is already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE, deterministically
    try:
        return subprocess.run(
            [sys.executable, "-m", "gatekeeper", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            cwd=cwd,
            timeout=60,
        )
    finally:
        os.close(write_end)


@pytest.mark.slow  # runs the CLI
@pytest.mark.parametrize("argv", [["check"], ["dashboard"], ["alert-rules"]])
def test_closed_pipe_exits_141_without_a_traceback(argv: list[str], tmp_path: Path) -> None:
    """A reader that went away ends the command quietly with 141 (128 + SIGPIPE), like
    a Unix tool: no BrokenPipeError traceback, no "Exception ignored" message."""
    res = run_into_closed_pipe(*argv, cwd=tmp_path)
    assert res.returncode == 141, res.stderr
    assert res.stderr == b""


@pytest.mark.slow  # runs the CLI
def test_head_in_a_shell_pipeline(tmp_path: Path) -> None:
    """`gatekeeper dashboard | head -n 0` under `set -o pipefail`: the pipeline's status
    is 141, as for any Unix tool cut short, and stderr stays empty."""
    script = f"set -o pipefail; {sys.executable} -m gatekeeper dashboard | head -n 0"
    res = subprocess.run(
        ["bash", "-c", script], capture_output=True, cwd=tmp_path, timeout=60, check=False
    )
    assert res.returncode == 141, res.stderr
    assert res.stderr == b""


# --------------------------------------------------------------------------- --help and check


def subcommands() -> dict[str, argparse.ArgumentParser]:
    from gatekeeper.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_subcommand_has_a_description_and_every_option_a_help_with_its_default() -> None:
    """`gatekeeper COMMAND --help` says what the command does, what each option is for and
    what applies when it is not given (flags excepted: off is their default)."""
    for name, parser in subcommands().items():
        assert parser.description, name
        help_text = parser.format_help()
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings}"
            if action.default not in (None, False):
                rendered = parser._get_formatter()._expand_help(action)
                assert f"default: {action.default}" in rendered, (name, rendered)
            if action.default is None:
                assert "default" in action.help, f"{name} {action.option_strings}"
        assert "(default: None)" not in help_text, name


def test_no_internal_references_in_help() -> None:
    """No "(issue #4)" or similar in anything a user reads in --help."""
    from gatekeeper.cli.main import build_parser

    texts = [build_parser().format_help()] + [p.format_help() for p in subcommands().values()]
    for text in texts:
        assert "issue" not in text.lower() and "§" not in text, text


def gk(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatekeeper", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


@pytest.mark.slow  # runs the CLI
def test_check_names_the_packaged_file_outside_a_checkout(tmp_path: Path) -> None:
    """Without --config and without ./rules.yaml, check says on its first line that it
    checked the packaged default, by absolute path."""
    import gatekeeper

    res = gk("check", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    first = res.stdout.splitlines()[0]
    packaged = Path(gatekeeper.__file__).with_name("rules.yaml")
    note = "(the packaged default: no --config and no ./rules.yaml here)"
    assert first == f"checked {packaged} {note}: OK"


@pytest.mark.slow  # runs the CLI
def test_check_names_the_file_it_checked(tmp_path: Path) -> None:
    """./rules.yaml or --config: the first line is "checked <absolute path>: OK" or
    ": INVALID" (the problems follow on stderr, exit 2)."""
    (tmp_path / "rules.yaml").write_text("admission:\n  max_in_flight: 2\n")
    res = gk("check", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == f"checked {tmp_path / 'rules.yaml'}: OK"
    (tmp_path / "bad.yaml").write_text("admission:\n  max_in_flight: two\n")
    res = gk("check", "--config", "bad.yaml", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stdout.splitlines()[0] == f"checked {tmp_path / 'bad.yaml'}: INVALID"
    assert "line 2: admission.max_in_flight" in res.stderr


# --------------------------------------------------------------------------- packaging


def test_packaging_metadata_is_current(repo_root: Path) -> None:
    """pyproject uses the SPDX license string (no deprecated table) and finds
    gatekeeper.static as a package, so `pip install .` prints no setuptools warning."""
    import tomllib

    meta = tomllib.loads((repo_root / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "MIT"
    assert meta["build-system"]["requires"] == ["setuptools>=77"]
    packages = meta["tool"]["setuptools"]["packages"]
    # A plain list ["gatekeeper"] would leave out gatekeeper.static (the status page).
    assert packages == {"find": {"include": ["gatekeeper", "gatekeeper.*"]}}
    assert "static/*" in meta["tool"]["setuptools"]["package-data"]["gatekeeper"]


# --------------------------------------------------------------------------- systemd


def test_systemd_unit_raises_the_descriptor_limit(repo_root: Path) -> None:
    """The unit lifts the 1,024-descriptor default: 1,000 slow clients must not exhaust it."""
    unit = (repo_root / "deploy/systemd/gatekeeper.service").read_text()
    values = [ln.split("=", 1)[1] for ln in unit.splitlines() if ln.startswith("LimitNOFILE=")]
    assert values == ["65536"]
