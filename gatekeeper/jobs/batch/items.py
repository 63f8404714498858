"""A batch body cut into the bodies of its items, or the one problem that refuses it. PURE.

``cut(body, spec, max_item_bytes)`` (``spec``: the route's ``config.batch.BatchSpec``):

1. the body is JSON (UTF-8), else 400 ``bad_batch`` at pointer ``""``;
2. ``spec.items`` resolves (``pointer.resolve``), else 400 at that pointer;
3. to a list of 1 to ``spec.max_items`` items: not a list or empty, 400; longer,
   413 ``too_many_items``;
4. each item is a JSON object, else 400 at ``<items>/<i>``;
5. each field named by ``spec.shared`` is copied into every item that lacks its
   key (the pointer's last token; an item's own value wins; a shared field the
   body leaves out is not copied);
6. each item, as the JSON body its queue route gets, fits ``limits.max_body_bytes``
   (the engine route would refuse it), else 413 ``body_too_large`` at ``<items>/<i>``.

The first problem found is the answer (``BatchProblem``: status, reason, the
pointer that failed, a detail); there is no partial batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gatekeeper.config.batch import BatchSpec
from gatekeeper.jobs.batch import pointer

__all__ = ["BatchProblem", "cut", "item_body"]


@dataclass(frozen=True)
class BatchProblem(Exception):
    """Why a batch body is refused, with the JSON pointer (RFC 6901) that failed."""

    status: int  # 400 or 413
    reason: str  # bad_batch, too_many_items, body_too_large
    pointer: str
    detail: str

    def __str__(self) -> str:
        return f"{self.status} {self.reason} at {self.pointer or '(the body)'}: {self.detail}"


def _bad(at: str, detail: str) -> BatchProblem:
    return BatchProblem(400, "bad_batch", at, detail)


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    return {"str": "string", "dict": "object", "list": "list"}.get(type(v).__name__, "value")


def item_body(item: dict[str, Any]) -> bytes:
    """An item as its job's request body: compact JSON, UTF-8."""
    return json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode()


def cut(body: bytes, spec: BatchSpec, max_item_bytes: int) -> list[bytes]:
    """The bodies of the batch's items, in order; ``BatchProblem`` (module text)."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _bad("", f"the batch body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise _bad("", f"the batch body is not JSON: {exc.msg} ({where})") from None
    try:
        items = pointer.resolve(doc, spec.items)
    except pointer.Missing as exc:
        raise _bad(spec.items, f"no list of items at {spec.items!r}: {exc.why}") from None
    where = spec.items
    if not isinstance(items, list):
        raise _bad(where, f"must be a list of items, got {_kind(items)}")
    if not items:
        raise _bad(where, f"the list is empty: a batch has 1 to {spec.max_items} items")
    if len(items) > spec.max_items:
        raise BatchProblem(
            413,
            "too_many_items",
            where,
            f"{len(items)} items; a batch has at most {spec.max_items} (batch.max_items)",
        )
    shared: list[tuple[str, Any]] = []
    for p in spec.shared:
        try:
            shared.append((pointer.parse(p)[-1], pointer.resolve(doc, p)))
        except pointer.Missing:
            continue  # an optional field this body leaves out: nothing to copy
    bodies = []
    for i, item in enumerate(items):
        at = pointer.join(where, i)
        if not isinstance(item, dict):
            raise _bad(at, f"each item must be a JSON object, got {_kind(item)}")
        merged = {**{k: v for k, v in shared if k not in item}, **item}
        data = item_body(merged)
        if len(data) > max_item_bytes:
            raise BatchProblem(
                413,
                "body_too_large",
                at,
                f"item {i} is {len(data)} bytes as a request body, over"
                f" limits.max_body_bytes ({max_item_bytes})",
            )
        bodies.append(data)
    return bodies
