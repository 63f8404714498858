"""What is wrong with a rules file: ``ConfigProblem`` (one) and ``ConfigError`` (all).

They live with the config, the lowest layer, so that loading rules imports nothing
else of gatekeeper; every command catches ``ConfigError`` to print it and exit 2.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a rules file: where, what was there, and why it is wrong."""

    path: str
    line: int | None
    message: str
    value: object = None
    has_value: bool = False

    def __str__(self) -> str:
        # "line 3: upstream.url: must be ..." / "cannot read file: ..." (no line, no key)
        parts = [f"line {self.line}"] if self.line is not None else []
        parts += [self.path] if self.path else []
        text = ": ".join([*parts, self.message])
        if self.has_value:
            text += f" (got {self.value!r})"
        return text


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every problem found, in file order."""

    def __init__(self, problems: list[ConfigProblem], source: str = "rules.yaml") -> None:
        self.problems = sorted(problems, key=lambda p: (p.line or 0, p.path))
        self.source = source
        lines = [f"{source}: {len(self.problems)} problem(s):"]
        lines += [f"  {source}:{p}" if p.line else f"  {source}: {p}" for p in self.problems]
        super().__init__("\n".join(lines))
