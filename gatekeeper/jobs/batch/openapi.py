"""The batch endpoints in OpenAPI 3.1 (issue #20 §4): a fragment the API document merges.

``openapi_fragment()`` returns ``{"paths": ..., "components": {"schemas": ...}}``
for the batch route's ``POST`` and the endpoints under ``{jobs_path}/batches``;
the document of gatekeeper's public API (``jobs_path/openapi.json``) merges it.
Schema names start with ``Batch`` so they never collide with the document's own.
The shapes are ``view``'s and ``items.BatchProblem``'s; tests check real answers
against them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

JSON = dict[str, Any]
_REF = "#/components/schemas/"


def _ref(name: str) -> JSON:
    return {"$ref": _REF + name}


def _json(schema: str, description: str, **headers: JSON) -> JSON:
    out: JSON = {
        "description": description,
        "content": {"application/json": {"schema": _ref(schema)}},
    }
    if headers:
        out["headers"] = headers
    return out


_RETRY_AFTER = {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}
_ID = {
    "name": "batch_id",
    "in": "path",
    "required": True,
    "description": "The batch id from the 202's Location",
    "schema": {"type": "string", "pattern": "^([a-z0-9][a-z0-9-]{0,31}\\.)?[A-Za-z0-9_-]{24}$"},
}
_NULLABLE_INT = {"type": ["integer", "null"]}
_NULLABLE_NUM = {"type": ["number", "null"]}
_NULLABLE_STR = {"type": ["string", "null"]}
_STATES = ["queued", "running", "done", "failed", "cancelled", "expired"]

SCHEMAS: JSON = {
    "BatchError": {
        "type": "object",
        "description": "gatekeeper's own refusal of a batch request",
        "required": ["detail", "reason"],
        "properties": {
            "detail": {"type": "string"},
            "reason": {"type": "string"},
            "retry_after": {"type": "integer"},
        },
    },
    "BatchProblem": {
        "type": "object",
        "description": "A refused batch body: nothing was queued",
        "required": ["detail", "reason", "pointer"],
        "properties": {
            "detail": {"type": "string"},
            "reason": {"type": "string", "enum": ["bad_batch", "too_many_items", "body_too_large"]},
            "pointer": {
                "type": "string",
                "description": "RFC 6901 JSON pointer into the batch body that failed",
            },
        },
    },
    "BatchLinks": {
        "type": "object",
        "required": ["self", "results", "archive"],
        "properties": {k: {"type": "string"} for k in ("self", "results", "archive")},
    },
    "BatchJob": {
        "type": "object",
        "description": "One item of the batch: its job (GET links.self for the job's own JSON)",
        "required": ["index", "id", "state", "links"],
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "id": {"type": "string"},
            "state": {"type": "string", "enum": _STATES},
            "reason": _NULLABLE_STR,
            "position": _NULLABLE_INT,
            "eta_seconds": _NULLABLE_NUM,
            "progress": _NULLABLE_NUM,
            "links": {
                "type": "object",
                "required": ["self", "events", "result"],
                "properties": {k: {"type": "string"} for k in ("self", "events", "result")},
            },
        },
    },
    "BatchView": {
        "type": "object",
        "description": "A batch: n of N done and each item's job",
        "required": ["id", "route", "state", "total", "done", "ended", "counts", "jobs", "links"],
        "properties": {
            "id": {"type": "string"},
            "route": {"type": "string"},
            "state": {"type": "string", "enum": ["open", "complete"]},
            "total": {"type": "integer", "minimum": 1},
            "done": {"type": "integer", "minimum": 0},
            "ended": {"type": "integer", "minimum": 0},
            "counts": {
                "type": "object",
                "propertyNames": {"enum": _STATES},
                "additionalProperties": {"type": "integer", "minimum": 1},
            },
            "created": {"type": "number", "description": "Unix time"},
            "jobs": {"type": "array", "items": _ref("BatchJob")},
            "links": _ref("BatchLinks"),
        },
    },
    "BatchResults": {
        "type": "object",
        "description": "The batch's results as one index of result links",
        "required": ["id", "total", "ready", "results", "links"],
        "properties": {
            "id": {"type": "string"},
            "total": {"type": "integer"},
            "ready": {"type": "integer"},
            "links": _ref("BatchLinks"),
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "id", "state", "status", "bytes", "result"],
                    "properties": {
                        "index": {"type": "integer"},
                        "id": {"type": "string"},
                        "state": {"type": "string", "enum": _STATES},
                        "status": _NULLABLE_INT,
                        "bytes": _NULLABLE_INT,
                        "result": {**_NULLABLE_STR, "description": "GET it for the answer"},
                    },
                },
            },
        },
    },
}


def openapi_fragment(
    jobs_path: str = "/_gatekeeper/jobs", batch_paths: Sequence[str] = ("/batch-generate",)
) -> JSON:
    """``paths`` and ``components.schemas`` of the batch endpoints (module text);
    ``batch_paths``: the paths of the configured batch routes."""
    not_found = _json("BatchError", "No such batch for this client key")
    me = f"{jobs_path}/batches/{{batch_id}}"
    paths: JSON = {
        me: {
            "parameters": [_ID],
            "get": {
                "operationId": "getBatch",
                "summary": "A batch: n of N done, each item's job and link",
                "responses": {"200": _json("BatchView", "The batch"), "404": not_found},
            },
            "delete": {
                "operationId": "deleteBatch",
                "summary": "Cancel the batch's items still queued or running",
                "responses": {"200": _json("BatchView", "The batch after"), "404": not_found},
            },
        },
        f"{me}/results": {
            "parameters": [_ID],
            "get": {
                "operationId": "getBatchResults",
                "summary": "The results: a JSON index of links, or one tar (?format=tar)",
                "parameters": [
                    {
                        "name": "format",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["json", "tar"]},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The index, or the archive (index.json first)",
                        "content": {
                            "application/json": {"schema": _ref("BatchResults")},
                            "application/x-tar": {
                                "schema": {
                                    "type": "string",
                                    "contentMediaType": "application/x-tar",
                                }
                            },
                        },
                    },
                    "400": _json("BatchError", "An unknown format"),
                    "404": not_found,
                },
            },
        },
    }
    for path in batch_paths:
        paths[path] = {
            "post": {
                "operationId": "submitBatch" if len(batch_paths) == 1 else f"submitBatch{path}",
                "summary": "The engine's batch body, queued as one job per item",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": ["object", "array"]}}},
                },
                "responses": {
                    "202": _json(
                        "BatchView",
                        "Queued whole",
                        Location={"description": "The batch's URL", "schema": {"type": "string"}},
                    ),
                    "400": _json("BatchProblem", "A bad batch body; nothing queued"),
                    "413": _json("BatchProblem", "Too many items, or a body too large"),
                    "415": _json("BatchError", "A content-encoded batch body"),
                    "429": _json(
                        "BatchError",
                        "Past batch.per_client; nothing queued",
                        **{"Retry-After": _RETRY_AFTER},
                    ),
                    "503": _json(
                        "BatchError",
                        "Draining, or the state disk is full",
                        **{"Retry-After": _RETRY_AFTER},
                    ),
                },
            }
        }
    return {"paths": paths, "components": {"schemas": SCHEMAS}}
