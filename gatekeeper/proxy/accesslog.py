"""The access log: one line per proxied request, built from its ``RequestRecord``.

Each finished record is handed to the ``AccessLog`` once (``record.RecordLog``,
the app's ``on_record``; a Gradio event's line when the event ends);
``observability.logs`` formats the fields as text or JSON.

A refused request's line (decision ``rejected`` or ``blocked``) goes through the
refusal aggregator first (``observability.lograte``, issue #18 §8): under a flood
only the first few per reason and client each second are written, and one
``refusals`` summary line per second counts the rest. A timer writes the last
second's summary when the flood stops; ``close`` writes what is left at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from gatekeeper.config import RefusalLog
from gatekeeper.core.vocab import Outcome
from gatekeeper.observability.lograte import RefusalLines, Summary
from gatekeeper.observability.logs import ACCESS
from gatekeeper.proxy.record import RequestRecord

REFUSED = frozenset({Outcome.REJECTED, Outcome.BLOCKED})


class AccessLog:
    """The app's ``on_record``: a line per request, refusals aggregated under a flood.

    ``clock`` is the loop clock (seconds) the aggregator's seconds are counted on;
    ``settings`` gives the ``log.refusals`` in force (read per refusal: a reload applies)."""

    def __init__(self, clock: Callable[[], float], settings: Callable[[], RefusalLog]):
        self._clock = clock
        self._settings = settings
        self._lines = RefusalLines(clock)
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self, rec: RequestRecord) -> None:
        if not ACCESS.isEnabledFor(logging.INFO):
            return  # --log-level WARNING: do not even build the fields
        if rec.decision in REFUSED:
            lines = self._lines
            self._write(lines.flush())
            s = self._settings()
            if not lines.refusal(rec.reason or "-", rec.client, s.per_client, s.max_per_second):
                self._arm()
                return
        log_request(rec)

    def flush(self) -> None:
        """Write the summaries of the seconds that are over (the timer, and tests)."""
        self._timer = None
        self._write(self._lines.flush())
        self._arm()

    def close(self) -> None:
        """At shutdown: no timer left behind; the current second's summary is written now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._write(self._lines.close())

    def _arm(self) -> None:
        if self._timer is not None:
            return
        due = self._lines.next_flush()
        if due is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): the next refusal flushes
            return
        # A little after the second is over, so the aggregator's clock sees it over too.
        self._timer = loop.call_later(max(due - self._clock(), 0.0) + 0.01, self.flush)

    @staticmethod
    def _write(summaries: list[Summary]) -> None:
        for s in summaries:
            ACCESS.info("refusals", extra={"fields": s.fields()})


def log_request(rec: RequestRecord) -> None:
    """One request's access line."""
    if not ACCESS.isEnabledFor(logging.INFO):
        return
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
