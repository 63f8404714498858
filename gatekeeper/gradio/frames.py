"""What a gated event's ``queue/data`` frames say about the generation (pure).

Two readings, both of Gradio's own messages (gradio 4.x-6.x,
``gradio/server_messages.py``):

- **Progress.** ``{"msg": "progress", "event_id": ..., "progress_data": [unit, ...]}``
  where a unit is ``{"index", "length", "unit", "progress", "desc"}``: ``progress``
  is a fraction (``progress(0.3, desc=...)``) or null with ``index``/``length``
  (a ``tqdm`` bar, ``gr.Progress(track_tqdm=True)``). Units are listed outermost
  first; the first one that yields a fraction is the generation's progress.

- **The result.** A ``process_completed`` with ``success: true`` is a *generation*
  only if it carries what the user asked for. Which outputs are the result is read
  from the app's ``/config``: the gated function's ``outputs`` (component ids)
  whose component ``type`` is one of ``RESULT_TYPES`` (audio, file, video, image,
  ...). If the function has such outputs, at least one of them must be non-null in
  ``output.data``; a completion where all are null (SongGeneration answers invalid
  lyrics with ``None`` and a JSON error string, as a *successful* completion) is a
  failed generation (``no_result``): counted as failed, and no duration learned.
  A function with no such output (text only), or a config that could not be read,
  keeps the old rule: ``success`` decides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# Component types whose value is the product of a generation (a file the app wrote).
RESULT_TYPES = frozenset({"audio", "file", "files", "video", "image", "gallery", "model3d"})


@dataclass(frozen=True, slots=True)
class Progress:
    """A running generation's progress as the engine reports it."""

    fraction: float | None  # 0..1; None: the engine reports steps with no known length
    description: str | None


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def progress_of(doc: Any) -> Progress | None:
    """The progress in a ``progress`` message (a decoded frame), or None if it is not one.

    >>> progress_of({"msg": "progress", "progress_data": [{"progress": 0.25, "desc": "x"}]})
    Progress(fraction=0.25, description='x')
    """
    if not isinstance(doc, dict) or doc.get("msg") != "progress":
        return None
    units = doc.get("progress_data")
    if not isinstance(units, list) or not units:
        return None
    first: Progress | None = None
    for unit in units:
        if not isinstance(unit, dict):
            continue
        desc = unit.get("desc")
        desc = desc if isinstance(desc, str) and desc else None
        frac = _number(unit.get("progress"))
        if frac is None:
            index, length = _number(unit.get("index")), _number(unit.get("length"))
            if index is not None and length:
                frac = index / length
        if frac is not None:
            return Progress(min(max(frac, 0.0), 1.0), desc)
        if first is None:
            first = Progress(None, desc)
    return first


def result_outputs(config: Any) -> dict[int, tuple[int, ...]]:
    """fn_index -> the positions, in its outputs, of the components that are its result
    (``RESULT_TYPES``), from a Gradio ``/config`` document."""
    out: dict[int, tuple[int, ...]] = {}
    if not isinstance(config, dict):
        return out
    types: dict[int, str] = {}
    for comp in config.get("components") or ():
        if isinstance(comp, dict) and isinstance(comp.get("id"), int):
            types[comp["id"]] = str(comp.get("type", ""))
    deps = config.get("dependencies")
    if not isinstance(deps, list):
        return out
    for i, dep in enumerate(deps):
        if not isinstance(dep, dict):
            continue
        fn = dep.get("id", i)
        outputs = dep.get("outputs")
        if not isinstance(fn, int) or not isinstance(outputs, list):
            continue
        out[fn] = tuple(
            pos for pos, cid in enumerate(outputs) if types.get(cid, "") in RESULT_TYPES
        )
    return out


def carries_result(doc: Any, positions: tuple[int, ...] | None) -> bool:
    """Whether a successful ``process_completed`` (decoded) carries the function's result.

    ``positions`` None or empty: nothing is known to be the result, so it does."""
    if not positions:
        return True
    output = doc.get("output") if isinstance(doc, dict) else None
    data = output.get("data") if isinstance(output, dict) else None
    if not isinstance(data, list):
        return False
    return any(pos < len(data) and data[pos] is not None for pos in positions)


def decode(data: str) -> dict[str, Any] | None:
    """A frame's JSON object, or None (``ALIVE``, junk)."""
    if not data.startswith("{"):
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None
