"""A ``batch`` route's ``batch:`` section: how the engine's batch body becomes jobs.

``POST /batch-generate`` with the engine's own batch body (issue #20 §3) is cut
into one job per item, each submitted to ``each`` (a ``queue`` route's path) as
if the frontend had sent it there; ``gatekeeper.jobs.batch`` does it. The keys::

    batch:
      items: /items                 # RFC 6901 pointer to the list in the body
      each: /generate               # where each item goes: a queue route's path
      shared: [/description]        # copied into every item that lacks the key
      max_items: 20                 # more -> 413, nothing queued
      per_client: 20                # open batch items per client key -> 429
      max_bytes: 1048576            # the batch body, read whole to cut it -> 413

What one key cannot say about itself (``each`` must be the path of a queue
route, a batch route needs ``jobs_path``) is checked with the routes
(``routes.read_routes``) and the whole file (``root``).
"""

from __future__ import annotations

import re
from typing import Any

from gatekeeper.config.declare import checked, declared, integer

# RFC 6901 §3: a pointer is "" or a sequence of "/" reference-token; "~" only as ~0 / ~1.
POINTER = re.compile(r"^(/([^~]|~[01])*)*$")
POINTER_SCHEMA = {"type": "string", "pattern": POINTER.pattern}
_PLAIN_PATH = re.compile(r"^(/[^/*?#;%]+)+$")


def check_pointer(v: Any) -> str | None:
    if isinstance(v, str) and POINTER.match(v):
        return None
    return "must be a JSON pointer (RFC 6901), e.g. /items or /request/songs; '' is the whole body"


def _check_shared(v: Any) -> str | None:
    if not isinstance(v, list):
        return "must be a list of JSON pointers (RFC 6901), e.g. [/description, /genre]"
    for p in v:
        if not isinstance(p, str) or not POINTER.match(p) or p == "":
            return f"{p!r} is not a JSON pointer to a field (RFC 6901, e.g. /description)"
    return None


def check_each(v: Any) -> str | None:
    # Matched as-is against the routes (no normalisation), so a plain path in normal form.
    if (
        isinstance(v, str)
        and _PLAIN_PATH.match(v)
        and not any(s in (".", "..") for s in v.split("/"))
    ):
        return None
    return "must be a plain path (no glob, query or trailing '/'), e.g. /generate"


@declared
class BatchSpec:
    """The ``batch:`` section of a route with ``action: batch``."""

    items: str = checked(
        "JSON pointer (RFC 6901) to the list of items in the batch body, e.g. /items;"
        " '' when the body itself is the list.",
        check_pointer,
        POINTER_SCHEMA,
        default="/items",
    )
    each: str = checked(
        "Path each item is submitted to (POST, the item as its JSON body): the path of a"
        " queue route, e.g. /generate. Each item is one job of that route.",
        check_each,
        {"type": "string", "pattern": _PLAIN_PATH.pattern},
        default="",
    )
    shared: tuple[str, ...] = checked(
        "JSON pointers to fields of the batch body copied into every item (under the"
        " pointer's last token; an item's own value wins), e.g. [/description].",
        _check_shared,
        {"type": "array", "items": POINTER_SCHEMA},
        convert=tuple,
        default=(),
    )
    max_items: int = integer(
        "Items one batch may have; more -> 413, nothing queued.",
        minimum=1,
        maximum=10000,
        default=20,
    )
    per_client: int = integer(
        "Batch items one client key may have queued or running at once, all its batches"
        " together; a batch that would pass it -> 429 client_limit, nothing queued.",
        minimum=1,
        default=20,
    )
    max_bytes: int = integer(
        "Largest batch body (it is read whole to be cut into items); larger -> 413.",
        minimum=2,
        default=1024 * 1024,
    )
