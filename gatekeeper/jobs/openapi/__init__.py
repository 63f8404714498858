"""The OpenAPI 3.1 document of gatekeeper's own public API (issue #20 §4).

Served at ``<jobs_path>/openapi.json`` (``jobs.api``) and built from code: the
schemas of the bodies gatekeeper writes (``schemas``), the jobs endpoints and
the rules' ``queue`` routes (``paths``), then every fragment of ``PROVIDERS``
merged in. A backend generates its client from it; tests validate it with
``openapi-spec-validator`` and check real answers against its schemas.

**Adding to the document** is one line: a provider is a function of the rules
(``Config``) returning a fragment, a dict with any of ``components`` (e.g.
``{"schemas": {...}}``), ``paths`` and ``webhooks``, appended to ``PROVIDERS``::

    PROVIDERS: tuple[Provider, ...] = (jobs_fragment, batch_fragment, webhooks_fragment)

A fragment writes its jobs paths under the default ``/_gatekeeper/jobs``
(``JOBS``), which the document moves to the configured ``jobs_path``; any
other path is kept as written. Fragments merge key by key; one that defines
a name another already defined differently raises ``ValueError`` (a test
builds the document, so a clash fails CI rather than a client).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from gatekeeper import __version__
from gatekeeper.config import Config
from gatekeeper.jobs.batch.openapi import openapi_fragment as batch_openapi_fragment
from gatekeeper.jobs.openapi.paths import JOBS, jobs_paths, submit_paths
from gatekeeper.jobs.openapi.schemas import components
from gatekeeper.jobs.webhooks.payload import openapi_fragment as webhook_openapi_fragment

__all__ = ["DOCUMENT", "JOBS", "PROVIDERS", "Provider", "build", "document_bytes", "merge"]

JSON = dict[str, Any]
Provider = Callable[[Config], Mapping[str, Any]]  # the rules -> a fragment
DOCUMENT = "openapi.json"  # served at <jobs_path>/openapi.json


def jobs_fragment(config: Config) -> JSON:
    """The jobs API's own part: its schemas and endpoints."""
    return {"components": components(), "paths": jobs_paths()}


def batch_fragment(config: Config) -> JSON:
    """The batch endpoints (issue #20 §3): each configured batch route's submit path and
    the batch view, results and cancel under ``jobs_path``."""
    paths = [
        r.path[:-3] if r.path.endswith("/**") else r.path
        for r in config.routes
        if r.action == "batch" and not any(c in r.path.rstrip("*") for c in "*?[{")
    ]
    return batch_openapi_fragment(batch_paths=paths)


def webhooks_fragment(config: Config) -> JSON:
    """The webhook payloads (issue #20 §1): ``webhooks`` and their schemas."""
    return webhook_openapi_fragment()


# Every part of the document: the jobs API, batches, webhook payloads.
PROVIDERS: tuple[Provider, ...] = (jobs_fragment, batch_fragment, webhooks_fragment)


def merge(into: JSON, fragment: Mapping[str, Any], where: str = "") -> None:
    """``fragment`` merged into ``into`` key by key; a clash is a ValueError naming it."""
    for key, value in fragment.items():
        here = f"{where}/{key}"
        mine = into.get(key)
        if mine is None:
            into[key] = json.loads(json.dumps(value))  # a copy: no provider's dict is shared
        elif isinstance(mine, dict) and isinstance(value, Mapping):
            merge(mine, value, here)
        elif mine != value:
            raise ValueError(f"OpenAPI fragments disagree at {here}")


def _moved(paths: Mapping[str, Any], jobs_path: str | None) -> JSON:
    """Paths under ``JOBS`` moved under ``jobs_path``; without a jobs path, left out."""
    out: JSON = {}
    for path, item in paths.items():
        if path == JOBS or path.startswith(JOBS + "/"):
            if jobs_path is None:
                continue
            path = jobs_path + path[len(JOBS) :]
        out[path] = item
    return out


def build(config: Config, providers: tuple[Provider, ...] = PROVIDERS) -> JSON:
    """The whole document for these rules (module text)."""
    doc: JSON = {
        "openapi": "3.1.0",
        "info": {
            "title": "gatekeeper",
            "version": __version__,
            "summary": "The waiting room in front of a slow generation engine.",
            "description": (
                "gatekeeper's own public API: queued generations (submit, job view, events,"
                " result, cancel, the caller's own list) and the JSON of every answer"
                " gatekeeper gives itself (detail, reason, retry_after). Everything else on"
                " this listener is the engine's own API, passed through."
            ),
        },
        "servers": [{"url": "/"}],
        "paths": submit_paths(config),
    }
    for provide in providers:
        fragment = dict(provide(config))
        if "paths" in fragment:
            fragment["paths"] = _moved(fragment["paths"], config.jobs_path)
        merge(doc, fragment)
    return doc


_cache: dict[int, tuple[Config, bytes]] = {}


def document_bytes(config: Config) -> bytes:
    """The document as JSON, built once per rules object (a reload makes a new one)."""
    hit = _cache.get(id(config))
    if hit is not None and hit[0] is config:
        return hit[1]
    data = json.dumps(build(config), ensure_ascii=False, indent=1).encode()
    _cache.clear()  # one live rules object at a time
    _cache[id(config)] = (config, data)
    return data
