"""Every `gatekeeper COMMAND` the README and docs/ name exists, with every --flag it is
given (issue #18 §7: the README named a `gatekeeper reload` that did not exist)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from gatekeeper.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
# `gatekeeper` at the start of a shell command (a line, or after `&&`, `|`, `;`, `$(`),
# then its subcommand and the rest of that command.
COMMAND = re.compile(
    r"(?:^|&&|\||;|\$\()\s*(?:\.venv/bin/|sudo )?gatekeeper ([a-z][a-z-]*)([^`\n|;&)]*)"
)


def code(text: str) -> list[tuple[int, str]]:
    """(line, text) of every line of a shell block (```sh) and every inline code span
    outside blocks (an output block is not a command)."""
    out: list[tuple[int, str]] = []
    fence: str | None = None  # the open block's language
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fence = None if fence is not None else line.strip()[3:] or "text"
            continue
        if fence in ("sh", "bash", "shell"):
            out.append((number, line))
        elif fence is None:
            out += [(number, span) for span in re.findall(r"`([^`]+)`", line)]
    return out


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_every_named_command_and_flag_exists() -> None:
    commands = _subcommands()
    found = 0
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for number, line in code(doc.read_text(encoding="utf-8")):
            for m in COMMAND.finditer(line):
                name, rest = m.group(1), m.group(2)
                where = f"{doc.name}:{number}: gatekeeper {name}{rest}"
                assert name in commands, where
                flags = set(commands[name]._option_string_actions)
                for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest):
                    assert flag in flags, where
                found += 1
    assert found >= 10, found  # the README's run, check, status, reload, demo, ...
