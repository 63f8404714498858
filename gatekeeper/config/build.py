"""The one reader: a YAML section -> a config dataclass, driven by its declared keys.

``read_section(shape, sec, ctx)`` reads every key ``shape`` declares (see
``declare``), in declaration order, with the getters of ``reader.Section``: a bad
value is recorded as a problem (YAML path, line, value) and the key keeps its
default, so loading goes on and every problem is reported at once. Then the
section's check (registered with ``@section_check(shape)``) relates its keys,
and ``close`` reports every key nobody declared, with a did-you-mean.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from gatekeeper.config.declare import Spec, keys_of
from gatekeeper.config.reader import Context, Section, join

T = TypeVar("T")
# (the section just read, its Section, the load) -> the section, perhaps amended.
Check = Callable[[Any, Section, Context], Any]
_CHECKS: dict[type, Check] = {}
_ABSENT = object()


def section_check(shape: type) -> Callable[[Check], Check]:
    """Register the check that relates the keys of ``shape`` (one per dataclass)."""

    def register(fn: Check) -> Check:
        _CHECKS[shape] = fn
        return fn

    return register


def read_section(
    shape: type[T], sec: Section, ctx: Context, default: T | None = None, *, close: bool = True
) -> T:
    """Read the keys ``shape`` declares from ``sec``; ``default`` (else ``shape()``) fills
    in what the file leaves out."""
    base: Any = default if default is not None else shape()
    values: dict[str, Any] = {}
    subs: dict[str, Section] = {}
    for f, spec in keys_of(shape):
        where = sec
        if spec.under is not None:
            if spec.under not in subs:
                subs[spec.under] = ctx.sections[join(sec.path, spec.under)] = sec.section(
                    spec.under
                )
            where = subs[spec.under]
        key = spec.key(f.name)
        value = read_key(where, key, spec, getattr(base, f.name), ctx, values)
        if spec.spread:
            if value is not None:  # None: absent or bad, the fields keep their defaults
                values.update(zip(spec.spread, value, strict=True))
        else:
            values[f.name] = value
        ctx.values[join(where.path, key)] = value
    for sub in subs.values():
        sub.close()
    obj: Any = replace(base, **values)
    check = next((_CHECKS[t] for t in type(obj).__mro__ if t in _CHECKS), None)
    if check is not None:
        obj = check(obj, sec, ctx)
    if close:
        sec.close()
    return obj  # type: ignore[no-any-return]


def read_key(
    sec: Section, key: str, spec: Spec, default: Any, ctx: Context, done: dict[str, Any]
) -> Any:
    """One key by its kind; a missing required key is a problem at its section's line."""
    if spec.required is not None and not sec.has(key):
        sec.problem(key, None, spec.required)
    kind = spec.kind
    if kind == "duration":
        return sec.duration(key, default, positive=spec.exclusive_min)
    if kind == "integer":
        maximum = None if spec.maximum is None else int(spec.maximum)
        return sec.integer(key, default, minimum=int(spec.minimum or 0), maximum=maximum)
    if kind == "number":
        assert spec.minimum is not None and spec.maximum is not None
        return sec.number(
            key,
            default,
            minimum=spec.minimum,
            maximum=spec.maximum,
            exclusive_min=spec.exclusive_min,
        )
    if kind == "string":
        return sec.string(key, default, choices=spec.choices)
    if kind == "boolean":
        return sec.boolean(key, default)
    if kind == "check":
        assert spec.check is not None
        value = sec.get(key, _ABSENT, spec.check, allow_none=spec.allow_none)
        if value is _ABSENT:
            return default
        if spec.convert is None or (value is None and spec.allow_none):  # null: None
            return value
        return spec.convert(value)
    if kind == "section":
        assert spec.shape is not None
        sub = sec.section(key)
        ctx.sections[sub.path] = sub
        base = spec.default_from(ctx) if spec.default_from is not None else default
        return read_section(spec.shape, sub, ctx, base)
    assert spec.read is not None
    return spec.read(sec, key, default, ctx, done)
