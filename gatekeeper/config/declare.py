"""How a rules.yaml key is declared: once, as a dataclass field with a ``Spec``.

Each key of rules.yaml is one field of a frozen dataclass, declared with one of
the helpers below. The helper sets the field's default and attaches a ``Spec``
(its kind, bounds, choices, documentation) as field metadata. Two readers walk
these declarations and nothing else:

    build.read_section   YAML -> config objects, with every problem and its line
    schema.config_schema config class -> the JSON Schema of rules.yaml

so adding a key is one field here, and the loader, the schema and the checks
in ``gatekeeper check`` all follow. A field without a ``Spec`` is not a YAML key
(e.g. ``Config.source``, ``Upstream.listed``).

What one key cannot say about itself (``recover_below <= reject_above``, "only
applies to action gradio") is a check of its section (``read_section(check=...)``),
next to the dataclass that declares the keys it relates.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, dataclass_transform

from gatekeeper.config.reader import Context, Section

Kind = Literal["duration", "integer", "number", "string", "boolean", "check", "section", "custom"]
JSON = dict[str, Any]
# A custom reader: (section, yaml key, default, context, fields read so far) -> value.
Reader = Callable[[Section, str, Any, Context, dict[str, Any]], Any]
SPEC = "gatekeeper.config"  # the metadata key of a field's Spec


@dataclass(frozen=True)
class Spec:
    """One YAML key: its kind, bounds, documentation and, for the odd ones, a reader."""

    kind: Kind
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_min: bool = False
    choices: tuple[str, ...] | None = None
    # kind "check": returns an error text or None, like reader.Section.get.
    check: Callable[[Any], str | None] | None = None
    # A YAML null is accepted (and means None, or what ``convert`` makes of it).
    allow_none: bool = False
    # Applied to a value read from the file (not to the default, nor to an allowed null).
    convert: Callable[[Any], Any] | None = None
    # The YAML key when it differs from the field name (``for`` is a Python keyword).
    yaml: str | None = None
    # The key lives in this sub-mapping of the section (a route's ``match``).
    under: str | None = None
    # The problem text when the key is absent; None: the key is optional.
    required: str | None = None
    # kind "section": the dataclass of the mapping. kind "custom": of a list's items.
    shape: type | None = None
    # kind "custom": reads the key; JSON Schema of the value (``shape`` completes it).
    read: Reader | None = None
    schema: JSON | None = None
    # kind "section": the default instance, when it depends on keys read before.
    default_from: Callable[[Context], Any] | None = None
    # A custom reader returning a tuple fills these fields (``expr`` -> signal, op, threshold).
    spread: tuple[str, ...] = ()

    def key(self, name: str) -> str:
        return self.yaml or name


def _field(spec: Spec, default: Any, factory: Callable[[], Any] | None) -> Any:
    meta: Mapping[str, Spec] = {SPEC: spec}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# A key without ``default=`` has none: the section's default instance gives its value
# (a route's name, an alert's severity), or the key is required.
_NO: Any = dataclasses.MISSING


def duration(doc: str, *, default: Any = _NO, positive: bool = True, **kw: Any) -> Any:
    """Seconds as a number, or a string such as ``500ms``, ``30s``, ``2m``, ``1h``."""
    return _field(Spec("duration", doc, minimum=0.0, exclusive_min=positive, **kw), default, None)


def integer(
    doc: str, *, default: Any = _NO, minimum: int = 0, maximum: int | None = None, **kw: Any
) -> Any:
    return _field(Spec("integer", doc, minimum=minimum, maximum=maximum, **kw), default, None)


def number(
    doc: str,
    *,
    default: Any = _NO,
    minimum: float = 0.0,
    maximum: float = math.inf,
    exclusive_min: bool = False,
    **kw: Any,
) -> Any:
    spec = Spec("number", doc, minimum=minimum, maximum=maximum, exclusive_min=exclusive_min, **kw)
    return _field(spec, default, None)


def string(
    doc: str, *, default: Any = _NO, choices: tuple[str, ...] | None = None, **kw: Any
) -> Any:
    return _field(Spec("string", doc, choices=choices, **kw), default, None)


def boolean(doc: str, *, default: bool) -> Any:
    return _field(Spec("boolean", doc), default, None)


def checked(
    doc: str, check: Callable[[Any], str | None], schema: JSON, *, default: Any = _NO, **kw: Any
) -> Any:
    """A value with its own check (an error text or None) and its JSON Schema."""
    return _field(Spec("check", doc, check=check, schema=schema, **kw), default, None)


def section(
    doc: str,
    *,
    factory: Callable[[], Any],
    shape: type | None = None,
    default_from: Callable[[Context], Any] | None = None,
) -> Any:
    """A nested mapping of ``shape`` (default: ``factory``, a class), read by the same
    rules; ``key:`` alone means all defaults."""
    kind = shape if shape is not None else factory
    assert isinstance(kind, type)
    return _field(Spec("section", doc, shape=kind, default_from=default_from), _NO, factory)


def custom(
    doc: str,
    *,
    read: Reader,
    default: Any = _NO,
    factory: Callable[[], Any] | None = None,
    schema: JSON | None = None,
    shape: type | None = None,
    **kw: Any,
) -> Any:
    """A key whose reading is more than one check (a list of routes, an optional threshold)."""
    spec = Spec("custom", doc, read=read, schema=schema, shape=shape, **kw)
    return _field(spec, default, factory)


T = TypeVar("T")


@dataclass_transform(
    frozen_default=True,
    field_specifiers=(
        dataclasses.field,
        duration,
        integer,
        number,
        string,
        boolean,
        checked,
        section,
        custom,
    ),
)
def declared(cls: type[T]) -> type[T]:
    """A section of rules.yaml: a frozen dataclass whose fields are its keys.

    ``dataclass_transform`` tells mypy that the helpers above make fields, so it
    knows which keys have a default (``default=`` or ``factory=``) and checks every
    construction of a config object."""
    return dataclass(frozen=True)(cls)


def spec_of(f: dataclasses.Field[Any]) -> Spec | None:
    spec = f.metadata.get(SPEC)
    return spec if isinstance(spec, Spec) else None


def keys_of(shape: type) -> list[tuple[dataclasses.Field[Any], Spec]]:
    """The YAML keys a dataclass declares, in declaration order."""
    out = []
    for f in dataclasses.fields(shape):
        spec = spec_of(f)
        if spec is not None:
            out.append((f, spec))
    return out
