"""Stopping background tasks without swallowing anybody's cancellation.

The tempting ``t.cancel(); with suppress(CancelledError): await t`` also swallows
a cancellation aimed at the *caller* while it waits (e.g. shutdown's own time
bound), which is exactly what must never happen (STYLE habit 7). ``asyncio.wait``
neither raises the task's outcome nor hides the caller's cancellation; a task
that had died of a real error is logged instead of vanishing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("gatekeeper")


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    pending = [t for t in tasks]
    for t in pending:
        t.cancel()
    if not pending:
        return
    await asyncio.wait(pending)
    for t in pending:
        if not t.cancelled() and t.exception() is not None:
            log.error("background task %s had failed", t.get_name(), exc_info=t.exception())
