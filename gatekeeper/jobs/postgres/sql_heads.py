"""The PostgreSQL store's ``kept_like``: could a kept 2xx result match this head?

``sqlite_heads``'s statement in PostgreSQL's words, on the partial index
``jobs_kept_heads`` (``schema``): a few index steps, run only for a request the
head would refuse.
"""

from __future__ import annotations

import asyncpg

from gatekeeper.core.vocab import JobState
from gatekeeper.jobs.head import RequestHead

_KEPT = (
    f"SELECT 1 FROM jobs WHERE state = '{JobState.DONE.value}' AND coalesce_key IS NOT NULL"
    " AND route = $1 AND method = $2 AND finished > $3"
    " AND result_status BETWEEN 200 AND 299"
    " AND (target = $4 OR left(target, length($5)) = $5)"
    " AND ($6::bigint IS NULL OR body_size = $6) LIMIT 1"
)


async def kept_like(con: asyncpg.Connection, head: RequestHead, since: float) -> bool:
    """True if a kept 2xx result finished after ``since`` could match ``head``."""
    row = await con.fetchval(
        _KEPT, head.route, head.method, since, head.path, head.path + "?", head.body_size
    )
    return row is not None
