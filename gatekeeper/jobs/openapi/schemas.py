"""The JSON shapes of gatekeeper's own answers, as OpenAPI 3.1 ``components.schemas``.

Each schema is the contract of one body built elsewhere: ``Job`` of
``views.job_view`` (through ``handle_view``), ``JobList`` of ``listing.page``,
``Error`` of ``proxy.responses.json_body`` (every refusal and error gatekeeper
answers itself) and of ``api._answer`` (the same with a few named extras).
OpenAPI 3.1 schemas are JSON Schema 2020-12, so a test validates real answers
against them with ``jsonschema`` (tests/test_openapi_e2e.py).
"""

from __future__ import annotations

from typing import Any

from gatekeeper.core.vocab import JobState

JSON = dict[str, Any]


def ref(name: str) -> JSON:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: JSON, description: str) -> JSON:
    return {"type": [schema["type"], "null"], **_rest(schema), "description": description}


def _rest(schema: JSON) -> JSON:
    return {k: v for k, v in schema.items() if k != "type"}


_SECONDS: JSON = {"type": "number", "minimum": 0}
_LINK: JSON = {"type": "string", "format": "uri-reference"}

JOB_LINKS: JSON = {
    "type": "object",
    "description": "Where this job's view, its events and its result are (this id's own).",
    "required": ["self", "events", "result"],
    "properties": {"self": _LINK, "events": _LINK, "result": _LINK},
    "additionalProperties": False,
}

JOB: JSON = {
    "type": "object",
    "description": (
        "One job as its submitter sees it through its own id (GET {jobs_path}/{id}, each"
        " events frame, the 202 of a submit, each entry of the list). A live job shows its"
        " place and ETA; an ended one what its record says."
    ),
    "required": [
        "id",
        "state",
        "route",
        "position",
        "eta_seconds",
        "starts_in_seconds",
        "waited_seconds",
        "elapsed_seconds",
        "progress",
        "coalesced",
        "cancel_requested",
        "reason",
        "result",
        "created_at",
        "started_at",
        "finished_at",
        "links",
    ],
    "properties": {
        "id": {"type": "string", "description": "This submitter's own job id (a handle)."},
        "state": ref("JobState"),
        "route": {"type": "string", "description": "The rules' route that queued it."},
        "position": _nullable(
            {"type": "integer", "minimum": 0},
            "Place in the queue (1 = next); 0 while running; null once ended.",
        ),
        "eta_seconds": _nullable(_SECONDS, "Seconds until its result should be ready."),
        "starts_in_seconds": _nullable(_SECONDS, "Seconds until it should start."),
        "waited_seconds": _nullable(_SECONDS, "Seconds it waited for a slot."),
        "elapsed_seconds": _nullable(_SECONDS, "Seconds it has run (or ran)."),
        "engine": _nullable({"type": "string"}, "The engine running it (live jobs only)."),
        "progress": _nullable(
            {"type": "number", "minimum": 0, "maximum": 1},
            "0..1 when the engine's answer reports progress.",
        ),
        "coalesced": {
            "type": "integer",
            "minimum": 0,
            "description": "How many other requests share this generation.",
        },
        "cancel_requested": {"type": "boolean"},
        "reason": _nullable({"type": "string"}, "Why it ended (e.g. queue_timeout, deleted)."),
        "result": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["status", "bytes"],
                    "properties": {
                        "status": {"type": "integer", "description": "The engine's status."},
                        "bytes": {"type": "integer", "minimum": 0},
                    },
                    "additionalProperties": False,
                },
            ],
            "description": "The engine's answer once it began: its status and size so far.",
        },
        "created_at": {
            "type": "string",
            "format": "date-time",
            "description": "When this id was given: the submit that got it (RFC 3339, UTC).",
        },
        "started_at": _nullable(
            {"type": "string", "format": "date-time"}, "Given to the engine; null before."
        ),
        "finished_at": _nullable({"type": "string", "format": "date-time"}, "Ended; null before."),
        "links": ref("JobLinks"),
    },
    "additionalProperties": False,
}

JOB_LIST: JSON = {
    "type": "object",
    "description": (
        "A page of the caller's own jobs, newest first. Only next: null says the list is"
        " at its end (a filtered page may be short, even empty, with a next)."
    ),
    "required": ["jobs", "next", "links"],
    "properties": {
        "jobs": {"type": "array", "items": ref("Job")},
        "next": _nullable({"type": "string"}, "The cursor of the next page."),
        "links": {
            "type": "object",
            "required": ["self", "next"],
            "properties": {"self": _LINK, "next": {"type": ["string", "null"]}},
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}

ERROR: JSON = {
    "type": "object",
    "description": (
        "Every answer gatekeeper gives itself instead of the engine's: a refusal (with"
        " Retry-After when waiting helps), a bad request, a missing job."
    ),
    "required": ["detail", "reason"],
    "properties": {
        "detail": {"type": "string", "description": "For a person: what happened, what to do."},
        "reason": {
            "type": "string",
            "description": "For a program: a stable code (busy, queue_full, not_found, ...).",
        },
        "retry_after": {
            "type": "integer",
            "minimum": 0,
            "description": "Seconds to wait before retrying, as the Retry-After header says.",
        },
        "state": ref("JobState"),
        "job_reason": {"type": ["string", "null"], "description": "Why the job ended."},
        "box": {"type": "string", "description": "421: the box that owns the job."},
    },
}


def components() -> JSON:
    """``components`` of the document: the schemas above and the shared headers."""
    return {
        "schemas": {
            "JobState": {
                "type": "string",
                "enum": [s.value for s in JobState],
                "description": "queued -> running -> done | failed | cancelled -> expired.",
            },
            "JobLinks": JOB_LINKS,
            "Job": JOB,
            "JobList": JOB_LIST,
            "Error": ERROR,
        },
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before retrying (RFC 9110 §10.2.3).",
                "schema": {"type": "integer", "minimum": 0},
            },
            "X-Gatekeeper-Reason": {
                "description": "The reason code of an answer gatekeeper gave itself.",
                "schema": {"type": "string"},
            },
            "X-Gatekeeper-Job": {
                "description": "This submitter's own job id.",
                "schema": {"type": "string"},
            },
        },
    }
