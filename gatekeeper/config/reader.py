"""Reading a YAML tree with line numbers: typed getters that record problems, never raise.

``Section`` wraps one YAML mapping node. Every getter names its key, so by the
time ``close()`` runs the section knows every key it understands; anything
else in the file is an "unknown key" problem, with the closest known key as a
suggestion (a typo such as ``reject_abve`` must never silently leave a
threshold at its default).

A bad value is recorded as a ``ConfigProblem`` (YAML path, line, value) and the
getter returns the default, so loading goes on and *every* problem is
reported together.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml

from gatekeeper.config.errors import ConfigProblem
from gatekeeper.config.values import parse_duration

T = TypeVar("T")
_constructor = yaml.constructor.SafeConstructor()


def line_of(node: yaml.Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None else None


def value_of(node: yaml.Node) -> Any:
    return _constructor.construct_object(node, deep=True)


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def line_at(text: str, path: str) -> int | None:
    """The line of the value at a problem's ``path`` (``jobs.webhooks.destinations[0].url``)
    in rules ``text``; None if the text is not YAML or has nothing there (a problem
    found after loading, e.g. a secret file that cannot be read, still names its line)."""
    try:
        node: yaml.Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    for key, index in _STEP.findall(path):
        if isinstance(node, yaml.MappingNode) and key:
            node = next((v for k, v in node.value if value_of(k) == key), None)
        elif isinstance(node, yaml.SequenceNode) and index and int(index) < len(node.value):
            node = node.value[int(index)]
        else:
            return None
    return line_of(node)


def suggestion(key: str, known: set[str]) -> str:
    """``"; did you mean 'reject_above'?"`` for a close match, else ``""``."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class Section:
    """A YAML mapping being read: typed getters record problems; ``close`` flags unknown keys."""

    def __init__(self, node: yaml.Node | None, path: str, problems: list[ConfigProblem]):
        self.path = path
        self.problems = problems
        self.node = node
        self.items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        self.used: set[str] = set()
        if node is None:
            return
        if not isinstance(node, yaml.MappingNode):
            self.problem("", node, "must be a mapping", value_of(node))
            self.node = None
            return
        for key_node, value_node in node.value:
            key = value_of(key_node)
            if not isinstance(key, str):
                self.problem("", key_node, "keys must be strings", key)
                continue
            if key in self.items:
                self.problem(key, key_node, "duplicate key")
            self.items[key] = (key_node, value_node)

    @property
    def line(self) -> int | None:
        return line_of(self.node)

    def problem(self, key: str | int, node: yaml.Node | None, message: str, *value: object) -> None:
        self.problems.append(
            ConfigProblem(
                join(self.path, key) if key != "" else self.path,
                line_of(node) if node is not None else self.line,
                message,
                value[0] if value else None,
                bool(value),
            )
        )

    def has(self, key: str) -> bool:
        return key in self.items

    def node_of(self, key: str) -> yaml.Node | None:
        self.used.add(key)
        item = self.items.get(key)
        return item[1] if item else None

    def section(self, key: str) -> Section:
        node = self.node_of(key)
        if node is not None and isinstance(node, yaml.ScalarNode) and value_of(node) is None:
            node = None  # ``key:`` with nothing after it means "all defaults"
        return Section(node, join(self.path, key), self.problems)

    def get(
        self, key: str, default: T, check: Callable[[Any], str | None], *, allow_none: bool = False
    ) -> T:
        """Read ``key``; ``check(value)`` returns an error text or None. Bad value → default."""
        node = self.node_of(key)
        if node is None:
            return default
        value = value_of(node)
        if value is None and allow_none:
            return None  # type: ignore[return-value]
        error = check(value)
        if error is not None:
            self.problem(key, node, error, value)
            return default
        return value  # type: ignore[no-any-return]

    def number(
        self,
        key: str,
        default: float,
        *,
        minimum: float = 0.0,
        maximum: float = math.inf,
        exclusive_min: bool = False,
    ) -> float:
        def check(v: Any) -> str | None:
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                return "must be a finite number"
            if v < minimum or (exclusive_min and v == minimum):
                return f"must be {'>' if exclusive_min else '>='} {minimum:g}"
            if v > maximum:
                return f"must be <= {maximum:g}"
            return None

        return float(self.get(key, default, check))

    def duration(self, key: str, default: float, *, positive: bool = True) -> float:
        """Seconds as a number, or a string like ``500ms``, ``30s``, ``2m``, ``1h``."""

        def check(v: Any) -> str | None:
            seconds = parse_duration(v)
            if seconds is None:
                return "must be a duration: seconds as a number, or e.g. '30s', '2m', '1h'"
            if seconds < 0 or (positive and seconds == 0):
                return "must be > 0" if positive else "must be >= 0"
            return None

        value = self.get(key, None, check)
        if value is None:
            return default
        seconds = parse_duration(value)
        assert seconds is not None
        return seconds

    def integer(
        self, key: str, default: int, *, minimum: int = 0, maximum: int | None = None
    ) -> int:
        def check(v: Any) -> str | None:
            if isinstance(v, bool) or not isinstance(v, int):
                return "must be an integer"
            if v < minimum:
                return f"must be >= {minimum}"
            if maximum is not None and v > maximum:
                return f"must be <= {maximum}"
            return None

        return int(self.get(key, default, check))

    def string(self, key: str, default: str, *, choices: tuple[str, ...] | None = None) -> str:
        def check(v: Any) -> str | None:
            if not isinstance(v, str):
                return "must be a string"
            if choices is not None and v not in choices:
                return "must be one of " + ", ".join(choices) + suggestion(v, set(choices))
            return None

        return self.get(key, default, check)

    def boolean(self, key: str, default: bool) -> bool:
        return self.get(
            key, default, lambda v: None if isinstance(v, bool) else "must be true or false"
        )

    def close(self) -> None:
        """Report every key no getter asked for, with the closest known key."""
        for key, (key_node, _) in self.items.items():
            if key not in self.used:
                self.problem(key, key_node, "unknown key" + suggestion(key, self.used))


@dataclass
class Context:
    """One load: its problems, and every value read so far by YAML path.

    A default that follows another key (``shutdown.drain_timeout`` follows
    ``upstream.timeouts.read``) looks that key up in ``values``; a check that needs
    a section again (``admission.max_in_flight`` with ``upstream.engines``) finds
    it in ``sections`` instead of reading the mapping twice.
    """

    problems: list[ConfigProblem]
    values: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, Section] = field(default_factory=dict)
