"""The SQLite store's answer to "could a kept result match this head?" (``JobStore.kept_like``).

The same over-approximation as ``head.RequestHead.may_match``, over the kept
2xx results that ``find_coalesce`` would replay (done, finished within
``jobs.keep``): one statement, run only for a request the head would refuse,
on its own partial index (done rows with a key, by route, method, body size and
end), so it costs a few index steps, not a scan of the kept results.
"""

from __future__ import annotations

import sqlite3

from gatekeeper.jobs.head import RequestHead

# Part of the store's schema (``sqlite._SCHEMA``); the state literal lets the
# partial index serve the statements below.
SCHEMA = """
CREATE INDEX IF NOT EXISTS jobs_kept_heads ON jobs (route, method, body_size, finished)
    WHERE state = 'done' AND coalesce_key IS NOT NULL;"""

_KEPT = (
    "SELECT 1 FROM jobs WHERE state = 'done' AND coalesce_key IS NOT NULL"
    " AND route = ? AND method = ?{size} AND finished > ?"
    " AND result_status BETWEEN 200 AND 299 AND (target = ? OR substr(target, 1, ?) = ?)"
    " LIMIT 1"
)
_KEPT_ANY_SIZE = _KEPT.format(size="")
_KEPT_OF_SIZE = _KEPT.format(size=" AND body_size = ?")


class KeptHeads:
    """The SQLite store's ``kept_like`` (a mixin over its connection)."""

    _db: sqlite3.Connection

    def kept_like(self, head: RequestHead, now: float, keep: float) -> bool:
        """True if a kept 2xx result within ``keep`` could match ``head`` (some body)."""
        with_query = head.path + "?"
        where = (head.path, len(with_query), with_query)
        if head.body_size is None:
            args: tuple[object, ...] = (head.route, head.method, now - keep, *where)
            row = self._db.execute(_KEPT_ANY_SIZE, args).fetchone()
        else:
            args = (head.route, head.method, head.body_size, now - keep, *where)
            row = self._db.execute(_KEPT_OF_SIZE, args).fetchone()
        return row is not None
