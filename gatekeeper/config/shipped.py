"""The rules packaged with gatekeeper (``gatekeeper/rules.yaml``): the one source of
the defaults that are more than a number.

The messages, the two default routes, the log receiver and the nine alert rules
are read from the packaged file, not repeated in the code: the file an operator
copies and the behaviour without one cannot drift apart. Scalar defaults are
declared with their key (``declare``), and a test loads this file and compares it
with ``Config()``, so the file documents exactly those.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import yaml

from gatekeeper.config.errors import ConfigError
from gatekeeper.config.reader import Context, Section, value_of

SOURCE = "gatekeeper/rules.yaml"


@functools.cache
def _root() -> yaml.Node:
    text = resources.files("gatekeeper").joinpath("rules.yaml").read_text(encoding="utf-8")
    # Read at import (the defaults are module constants): libyaml's loader when built in.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    node = yaml.compose(text, Loader=loader)
    if not isinstance(node, yaml.MappingNode):
        raise RuntimeError(f"{SOURCE}: not a mapping (a broken install?)")
    return node


def shipped_node(path: str) -> yaml.Node:
    """The node at a dotted path of the packaged rules, e.g. ``alerts.rules``."""
    node: yaml.Node = _root()
    for key in path.split("."):
        found = None
        if isinstance(node, yaml.MappingNode):
            found = next((v for k, v in node.value if value_of(k) == key), None)
        if found is None:
            raise RuntimeError(f"{SOURCE}: no {path} (a broken install?)")
        node = found
    return node


def shipped_value(path: str) -> Any:
    return value_of(shipped_node(path))


def read_shipped(path: str, read: Any) -> Any:
    """``read(section, key, None, context, {})`` over the packaged ``path``: the same
    reader as the user's file, so the shipped defaults are checked like any file."""
    parent, _, key = path.rpartition(".")
    ctx = Context([])
    holder = Section(shipped_node(parent) if parent else _root(), parent, ctx.problems)
    value = read(holder, key, None, ctx, {})
    if ctx.problems:
        raise ConfigError(ctx.problems, SOURCE)
    return value
