"""The operations of gatekeeper's public API, as OpenAPI 3.1 ``paths``.

Written with the default jobs path (``JOBS``); ``openapi.build`` moves every
path under it to the configured ``jobs_path``. The submit operations are the
rules' ``queue`` routes (``submit_paths``): a route's path glob ``/x/**`` is
documented as ``/x``, and a route whose path has another glob is left out
(OpenAPI paths are templates, not globs).
"""

from __future__ import annotations

from typing import Any

from gatekeeper.config import Config
from gatekeeper.jobs.listing import DEFAULT_LIMIT, MAX_LIMIT
from gatekeeper.jobs.openapi.schemas import ref

JSON = dict[str, Any]
JOBS = "/_gatekeeper/jobs"  # the default jobs_path: providers write their paths under it


def error(description: str, *, retry_after: bool = False) -> JSON:
    """A response whose body is gatekeeper's own ``Error``."""
    out: JSON = {
        "description": description,
        "headers": {"X-Gatekeeper-Reason": {"$ref": "#/components/headers/X-Gatekeeper-Reason"}},
        "content": {"application/json": {"schema": ref("Error")}},
    }
    if retry_after:
        out["headers"]["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
    return out


def _json(description: str, schema: str, **headers: JSON) -> JSON:
    out: JSON = {
        "description": description,
        "content": {"application/json": {"schema": ref(schema)}},
    }
    if headers:
        out["headers"] = headers
    return out


_JOB_HEADER = {"$ref": "#/components/headers/X-Gatekeeper-Job"}
_STORAGE = error("storage_error: the state directory failed a read or a write.", retry_after=True)
_MISDIRECTED = error(
    "misdirected: the id names another box (box says which); never with jobs.store:"
    " postgres, where every box answers for every job."
)
_RESULT_UNAVAILABLE = error(
    "storage_error: the state directory failed a read or a write; box_unreachable: the"
    " result is kept on another box of the shared store (jobs.store: postgres), which"
    " does not answer now.",
    retry_after=True,
)
_NOT_FOUND = error("not_found: no such job (an unknown or malformed id).")
_ID: JSON = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "A job id as a submit answer gave it (this submitter's own).",
    "schema": {"type": "string", "pattern": "^([a-z0-9][a-z0-9-]{0,31}\\.)?[A-Za-z0-9_-]{24}$"},
}


def jobs_paths() -> JSON:
    """The endpoints under the jobs path (``jobs.api``)."""
    return {
        JOBS: {
            "get": {
                "operationId": "listJobs",
                "summary": "The caller's own jobs, newest first",
                "description": (
                    "The jobs of the caller's client key (admission.queue.client_key) and no"
                    " other: each under the caller's own id, as GET {jobs_path}/{id} shows it."
                    " jobs.listing decides who may list (auto: header client keys only)."
                ),
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_LIMIT,
                            "default": DEFAULT_LIMIT,
                        },
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "description": "The next of the previous page (opaque).",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "state",
                        "in": "query",
                        "description": "Only these states: repeated, or a comma list.",
                        "style": "form",
                        "explode": True,
                        "schema": {"type": "array", "items": {"type": "string"}},
                    },
                ],
                "responses": {
                    "200": _json("A page of the caller's jobs.", "JobList"),
                    "400": error(
                        "bad_query (an unknown parameter, state, limit or cursor) or"
                        " no_client_key (jobs.listing auto: the client-key header is missing)."
                    ),
                    "404": error("listing_off: jobs.listing keeps the list off here."),
                    "503": _STORAGE,
                },
            }
        },
        f"{JOBS}/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "The OpenAPI 3.1 document of gatekeeper's public API.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        f"{JOBS}/{{id}}": {
            "parameters": [_ID],
            "get": {
                "operationId": "getJob",
                "summary": "A job: state, position, ETA, progress",
                "responses": {
                    "200": _json("The job.", "Job", **{"X-Gatekeeper-Job": _JOB_HEADER}),
                    "404": _NOT_FOUND,
                    "421": _MISDIRECTED,
                    "503": _STORAGE,
                },
            },
            "delete": {
                "operationId": "cancelJob",
                "summary": "Let go of a job (this id only)",
                "description": (
                    "Detaches this id. The generation is cancelled when no other submitter"
                    " holds it (queued: removed; running: per"
                    " admission.on_client_disconnect); never another submitter's."
                ),
                "responses": {
                    "200": _json("The job after the DELETE.", "Job"),
                    "404": _NOT_FOUND,
                    "409": error("job_finished: the job already ended; nothing to cancel."),
                    "421": _MISDIRECTED,
                    "503": _STORAGE,
                },
            },
        },
        f"{JOBS}/{{id}}/events": {
            "parameters": [_ID],
            "get": {
                "operationId": "watchJob",
                "summary": "The job as server-sent events until it ends",
                "description": (
                    "text/event-stream: one `event: job` per change (at most two a second),"
                    " its `data:` a Job as GET {jobs_path}/{id} shows it; `: keep-alive`"
                    " comments when quiet for 15 s; the stream ends at a final state."
                ),
                "responses": {
                    "200": {
                        "description": "The events.",
                        "content": {
                            "text/event-stream": {
                                "schema": {"type": "string"},
                                "x-gatekeeper-event": {"event": "job", "data": ref("Job")},
                            }
                        },
                    },
                    "404": _NOT_FOUND,
                    "421": _MISDIRECTED,
                    "503": _STORAGE,
                },
            },
        },
        f"{JOBS}/{{id}}/result": {
            "parameters": [_ID],
            "get": {
                "operationId": "getJobResult",
                "summary": "The engine's stored answer, replayed",
                "description": (
                    "The status, end-to-end headers and body the engine answered (Range on a 200)."
                ),
                "responses": {
                    "200": {"description": "The engine's answer.", "content": {"*/*": {}}},
                    "206": {"description": "A range of it.", "content": {"*/*": {}}},
                    "404": _NOT_FOUND,
                    "409": error(
                        "not_done (state says which) or no_result (the job ended without a"
                        " kept answer: job_reason says why)."
                    ),
                    "410": error("expired: the result was kept jobs.keep and is gone."),
                    "421": _MISDIRECTED,
                    "503": _RESULT_UNAVAILABLE,
                    "default": {
                        "description": "The engine's own error answer, as it was.",
                        "content": {"*/*": {}},
                    },
                },
            },
        },
    }


def submit_operation(name: str, method: str) -> JSON:
    """A queue route's request: held until the answer, or 202 with Prefer: respond-async."""
    return {
        "operationId": f"submit_{name}_{method}".replace("-", "_"),
        "summary": f"Submit a generation (route {name})",
        "description": (
            "Queued in the waiting room. Without Prefer the connection is held and the engine's"
            " answer returned when the job is done; with Prefer: respond-async, 202 at once."
            " An identical request of the same identity shares the generation (jobs.coalesce)."
        ),
        "parameters": [
            {
                "name": "Prefer",
                "in": "header",
                "description": "respond-async (RFC 7240): answer 202 with the job at once.",
                "schema": {"type": "string"},
                "example": "respond-async",
            },
            {
                "name": "Idempotency-Key",
                "in": "header",
                "description": "Requests with the same key (and client key) share one job.",
                "schema": {"type": "string"},
            },
        ],
        "requestBody": {"description": "The engine's own request body.", "content": {"*/*": {}}},
        "responses": {
            "200": {
                "description": "Held: the engine's answer (or a kept one, replayed).",
                "headers": {"X-Gatekeeper-Job": _JOB_HEADER},
                "content": {"*/*": {}},
            },
            "202": _json(
                "Prefer: respond-async: the job, queued or started (Location: its view).",
                "Job",
                Location={"schema": {"type": "string"}, "description": "The job's view."},
                **{"X-Gatekeeper-Job": _JOB_HEADER},
            ),
            "400": error("bad_header: a malformed Prefer or Idempotency-Key."),
            "413": error("body_too_large: the body is over limits.max_body_bytes."),
            "429": error("client_limit: this client key has per_client jobs.", retry_after=True),
            "502": error("Held: the engine could not be reached (upstream_unavailable)."),
            "503": error(
                "queue_full, queue_timeout, draining, spool_full, storage_full,"
                " storage_error, or the engine's answer could not be had (upstream_busy).",
                retry_after=True,
            ),
            "504": error("Held: the engine did not answer in time (upstream_timeout)."),
            "default": {"description": "The engine's own answer.", "content": {"*/*": {}}},
        },
    }


def submit_paths(config: Config) -> JSON:
    """One path per ``queue`` route of the rules (module text)."""
    out: JSON = {}
    for route in config.routes:
        if route.action != "queue":
            continue
        path = route.path[:-3] if route.path.endswith("/**") else route.path
        if not path or any(c in path for c in "*?[{"):
            continue
        for method in sorted(route.methods or {"POST"}):
            op = submit_operation(route.name, method.lower())
            out.setdefault(path, {})[method.lower()] = op
    return out
