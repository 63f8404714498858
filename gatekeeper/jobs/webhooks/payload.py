"""The body of a webhook delivery, and its JSON Schema (for the OpenAPI document).

The body follows Standard Webhooks' recommended shape: ``type`` (the event),
``timestamp`` (when it happened, RFC 3339 UTC) and ``data``: the job's JSON
exactly as ``GET {jobs_path}/<id>`` shows it at that moment (``jobs.views``),
plus ``result_url``, the job's result link (the same as ``data.links.result``,
relative to the public listener). PURE.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from gatekeeper.config.webhooks import EVENTS

__all__ = ["body", "openapi_fragment", "rfc3339"]


def rfc3339(wall: float) -> str:
    return (
        datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def body(event: str, wall: float, view: dict[str, Any]) -> bytes:
    """The signed body of ``event`` at ``wall`` for a job whose JSON is ``view``."""
    doc = {
        "type": event,
        "timestamp": rfc3339(wall),
        "data": view,
        "result_url": view["links"]["result"],
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


_NULLABLE_NUMBER: dict[str, Any] = {"type": ["number", "null"]}

JOB_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A job as GET {jobs_path}/<id> shows it.",
    "required": ["id", "state", "route", "links"],
    "properties": {
        "id": {"type": "string"},
        "state": {
            "type": "string",
            "enum": ["queued", "running", "done", "failed", "cancelled", "expired"],
        },
        "route": {"type": "string"},
        "position": {"type": ["integer", "null"]},
        "eta_seconds": _NULLABLE_NUMBER,
        "starts_in_seconds": _NULLABLE_NUMBER,
        "waited_seconds": _NULLABLE_NUMBER,
        "elapsed_seconds": _NULLABLE_NUMBER,
        "engine": {"type": ["string", "null"]},
        "progress": _NULLABLE_NUMBER,
        "coalesced": {"type": "integer"},
        "cancel_requested": {"type": "boolean"},
        "reason": {"type": ["string", "null"]},
        "result": {
            "type": ["object", "null"],
            "properties": {
                "status": {"type": ["integer", "null"]},
                "bytes": {"type": "integer"},
            },
        },
        "links": {
            "type": "object",
            "required": ["self", "events", "result"],
            "properties": {
                "self": {"type": "string"},
                "events": {"type": "string"},
                "result": {"type": "string"},
            },
        },
    },
}

EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": (
        "A webhook delivery's body, signed to Standard Webhooks (headers webhook-id,"
        " webhook-timestamp, webhook-signature: v1,<base64 HMAC-SHA256>). The same"
        " webhook-id on every retry of one delivery."
    ),
    "required": ["type", "timestamp", "data", "result_url"],
    "properties": {
        "type": {"type": "string", "enum": list(EVENTS)},
        "timestamp": {"type": "string", "format": "date-time"},
        "data": {"$ref": "#/components/schemas/WebhookJob"},
        "result_url": {"type": "string"},
    },
}


def openapi_fragment() -> dict[str, Any]:
    """The webhook payload as OpenAPI 3.1 ``components`` and ``webhooks`` (merged by the
    OpenAPI document of ``{jobs_path}/openapi.json``)."""
    headers = {
        name: {"required": True, "schema": {"type": "string"}, "description": text}
        for name, text in (
            ("webhook-id", "The delivery's id: the same on every retry (drop duplicates)."),
            ("webhook-timestamp", "The attempt's time, Unix seconds."),
            ("webhook-signature", "v1,<base64 HMAC-SHA256 of id.timestamp.body>"),
        )
    }
    webhooks = {
        event: {
            "post": {
                "summary": f"{event}: signed to Standard Webhooks",
                "parameters": [
                    {"in": "header", "name": name, **spec} for name, spec in headers.items()
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/WebhookEvent"}
                        }
                    },
                },
                "responses": {
                    "2XX": {"description": "Delivered."},
                    "410": {"description": "Stop sending this job's events here."},
                    "default": {"description": "Retried with backoff until max_age."},
                },
            }
        }
        for event in EVENTS
    }
    return {
        "components": {"schemas": {"WebhookEvent": EVENT_SCHEMA, "WebhookJob": JOB_SCHEMA}},
        "webhooks": webhooks,
    }
