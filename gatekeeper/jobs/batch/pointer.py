"""JSON pointers (RFC 6901) over a parsed JSON document. PURE.

``parse`` turns a pointer into its reference tokens (``~1`` -> ``/`` then
``~0`` -> ``~``, in that order: RFC 6901 §4), ``resolve`` walks a document
along them, ``join`` builds the pointer of a child (for the errors that name
where a batch body failed: ``/items/3``). Config checks a pointer's syntax at
load (``config.batch.check_pointer``); here a malformed one is a ValueError.

    >>> resolve({"items": [{"a/b": 1}]}, "/items/0/a~1b")
    1
"""

from __future__ import annotations

from typing import Any

__all__ = ["Missing", "escape", "join", "parse", "resolve"]


class Missing(LookupError):
    """The document has nothing at the pointer; ``at`` is the longest prefix that exists
    and ``why`` says what stopped the walk."""

    def __init__(self, pointer: str, at: str, why: str):
        super().__init__(f"{pointer}: {why}")
        self.pointer = pointer
        self.at = at
        self.why = why


def escape(token: str) -> str:
    """One reference token as written in a pointer (``~`` first: RFC 6901 §3)."""
    return token.replace("~", "~0").replace("/", "~1")


def parse(pointer: str) -> list[str]:
    """The reference tokens of ``pointer``; ValueError if it is not RFC 6901."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise ValueError(f"{pointer!r} is not a JSON pointer: it must be '' or start with '/'")
    tokens = []
    for raw in pointer[1:].split("/"):
        bad = raw.replace("~0", "").replace("~1", "")
        if "~" in bad:
            raise ValueError(f"{pointer!r} is not a JSON pointer: '~' only as ~0 or ~1")
        tokens.append(raw.replace("~1", "/").replace("~0", "~"))
    return tokens


def join(pointer: str, token: str | int) -> str:
    """The pointer of ``token`` under ``pointer``."""
    return f"{pointer}/{escape(str(token))}"


def _index(token: str, size: int) -> int | None:
    # RFC 6901 §4: an array index is "0" or digits without a leading zero ("-" names
    # the element after the last, which never exists to be read).
    if not token.isdigit() or (len(token) > 1 and token[0] == "0") or not token.isascii():
        return None
    i = int(token)
    return i if i < size else None


def resolve(doc: Any, pointer: str) -> Any:
    """The value at ``pointer`` in ``doc``; ``Missing`` when there is none."""
    at = ""
    for token in parse(pointer):
        if isinstance(doc, dict):
            if token not in doc:
                raise Missing(pointer, at, f"no member {token!r} at {at or 'the root'}")
            doc = doc[token]
        elif isinstance(doc, list):
            i = _index(token, len(doc))
            if i is None:
                raise Missing(
                    pointer,
                    at,
                    f"{token!r} is not an index of the {len(doc)}-item list at {at or 'the root'}",
                )
            doc = doc[i]
        else:
            kind = "null" if doc is None else type(doc).__name__
            raise Missing(
                pointer, at, f"{at or 'the root'} is a {_json_kind(kind)}, not an object or a list"
            )
        at = join(at, token)
    return doc


def _json_kind(py: str) -> str:
    return {"str": "string", "int": "number", "float": "number", "bool": "boolean"}.get(py, py)
