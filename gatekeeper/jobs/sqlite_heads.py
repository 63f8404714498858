"""The SQLite store's answer to "could a kept result match this head?" (``JobStore.kept_like``).

The same over-approximation as ``head.RequestHead.may_match``, over the kept
2xx results that ``find_coalesce`` would replay (done, finished within
``jobs.keep``): one statement, run only for a request the head would refuse.
It scans the done rows within ``keep`` (the ``jobs_finished`` index), so its
cost grows with the kept results, not with the queue.
"""

from __future__ import annotations

import sqlite3

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.head import RequestHead

_KEPT_LIKE = (
    "SELECT 1 FROM jobs WHERE finished > ? AND state = ? AND coalesce_key IS NOT NULL"
    " AND result_status BETWEEN 200 AND 299 AND route = ? AND method = ?"
    " AND (target = ? OR substr(target, 1, ?) = ?) AND (? IS NULL OR body_size = ?) LIMIT 1"
)


class KeptHeads:
    """The SQLite store's ``kept_like`` (a mixin over its connection)."""

    _db: sqlite3.Connection

    def kept_like(self, head: RequestHead, now: float, keep: float) -> bool:
        """True if a kept 2xx result within ``keep`` could match ``head`` (some body)."""
        with_query = head.path + "?"
        row = self._db.execute(
            _KEPT_LIKE,
            (
                now - keep,
                JobState.DONE.value,
                head.route,
                head.method,
                head.path,
                len(with_query),
                with_query,
                head.body_size,
                head.body_size,
            ),
        ).fetchone()
        return row is not None
