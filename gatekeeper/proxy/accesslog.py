"""The access log: one line per proxied request, built from its ``RequestRecord``.

Each finished record is handed to ``log_request`` once (``record.RecordLog``,
the app's ``on_record``; a Gradio event's line when the event ends);
``logs`` formats the fields as text or JSON.
"""

from __future__ import annotations

import logging
from typing import Any

from gatekeeper.observability.logs import ACCESS
from gatekeeper.proxy.record import RequestRecord


def log_request(rec: RequestRecord) -> None:
    if not ACCESS.isEnabledFor(logging.INFO):
        return  # --log-level WARNING: do not even build the fields
    fields: dict[str, Any] = {
        "request_id": rec.request_id,
        "client": rec.client,
        "method": rec.method,
        "path": rec.path,
        "route": rec.route,
        "action": rec.action,
        "decision": rec.decision,
        "reason": rec.reason,
        "status": rec.status,
        "upstream_status": rec.upstream_status,
        "bytes_in": rec.bytes_in,
        "bytes_out": rec.bytes_out,
        "queue_s": rec.queue_seconds,
        "upstream_s": rec.upstream_seconds,
        "total_s": rec.total_seconds,
    }
    if rec.client_gone:
        fields["client_gone"] = True
    if rec.engine is not None:
        fields["engine"] = rec.engine
    ACCESS.info("request", extra={"fields": fields})
