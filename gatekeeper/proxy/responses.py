"""gatekeeper's own responses: the JSON body ``{"detail", "reason", "retry_after"}``, headers.

A rejection must cost almost nothing: a flood of rejected retries is exactly
what hurts a box that is generating. The body of a refusal depends only on the
reason, the Retry-After, the rules' message and the few numbers it may quote,
so it is rendered (message formatting + JSON) once per distinct set of those
and reused; only the per-request headers are built each time.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gatekeeper.config import Config
from gatekeeper.core.headers import REQUEST_ID

# Distinct bodies kept; cleared when full (they change at most once per sample interval).
CACHE_SIZE = 512


def json_body(detail: str, reason: str, retry_after: int | None) -> bytes:
    body: dict[str, Any] = {"detail": detail, "reason": reason}
    if retry_after is not None:
        body["retry_after"] = retry_after
    return json.dumps(body, ensure_ascii=False).encode()


def json_answer(
    status: int,
    reason: str,
    body: bytes,
    *,
    retry_after: int | None = None,
    request_id: str | None = None,
    close: bool = False,
) -> web.Response:
    headers = {"X-Gatekeeper-Reason": reason}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if request_id is not None:
        headers[REQUEST_ID] = request_id
    resp = web.Response(
        status=status, headers=headers, body=body, content_type="application/json", charset="utf-8"
    )
    if close:
        resp.force_close()
    return resp


def json_error(
    status: int,
    reason: str,
    detail: str,
    *,
    retry_after: int | None = None,
    request_id: str | None = None,
) -> web.Response:
    """An answer with a one-off detail (errors); refusals go through ``RefusalBodies``."""
    body = json_body(detail, reason, retry_after)
    return json_answer(status, reason, body, retry_after=retry_after, request_id=request_id)


class RefusalBodies:
    """Rendered refusal bodies, keyed by everything that can change them."""

    def __init__(self) -> None:
        self._bodies: dict[tuple[Any, ...], bytes] = {}
        self._config: Config | None = None  # the rules the bodies were rendered with

    def body(
        self,
        config: Config,
        reason: str,
        retry_after: int | None,
        detail: str | None,
        /,
        **fields: Any,
    ) -> bytes:
        """The JSON body; ``detail`` None renders ``config.messages[reason]`` with ``fields``."""
        if config is not self._config:  # a reload may change every message
            self._bodies.clear()
            self._config = config
        key = (reason, retry_after, detail, *sorted(fields.items()))
        cached = self._bodies.get(key)
        if cached is not None:
            return cached
        text = detail if detail is not None else config.message(reason, **fields)
        body = json_body(text, reason, retry_after)
        if len(self._bodies) >= CACHE_SIZE:
            self._bodies.clear()
        self._bodies[key] = body
        return body
