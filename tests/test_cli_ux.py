"""What a new operator meets: the demo's generated rules and live line, pipes, --help."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from gatekeeper.config import load_config
from gatekeeper.demo import CLEAR_LINE, LiveLine, demo_rules


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
