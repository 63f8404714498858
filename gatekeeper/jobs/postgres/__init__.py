"""The PostgreSQL job store: one queue shared by several boxes (issue #21).

Only this package imports ``asyncpg``. The modules, one concept each (as the
SQLite store's ``sqlite*`` modules, so a new store method is one ``sql_*``
coroutine and one line in ``store``):

    store        PostgresJobStore: the synchronous JobStore facade; files on this box
    bridge       asyncpg on its own loop and thread; bounded synchronous calls
    breaker      the circuit breaker (pure): when to stop asking a dead database
    schema       DDL, versions and migrations under pg_advisory_xact_lock
    sql_records  jobs: create, read, transitions, coalescing, eviction
    sql_fair     the fairness ring and claim_next (one statement, SKIP LOCKED)
    sql_handles  handles and a client's list;  sql_heads: kept_like;  sql_recover: recover
    sql_outbox   the webhook outbox: per-box leases, one job's events in order
    sql_batches  batches: the batch and its jobs in one transaction

The design decision (docs/postgres.md has the measurements): ``JobStore`` is
synchronous and called on the proxy's event loop, because every decision it
feeds (admit, queue, coalesce, claim a slot) is taken in one synchronous step
with no await between the check and the change. asyncpg is asyncio. Rather than
make every caller async (a rewrite of the service's invariants) or run a
blocking driver on the loop (an unreachable database would freeze the proxy for
the TCP timeout), the store runs asyncpg on its own event loop in a dedicated
thread; each synchronous call waits for its round trip with a short bound
(``jobs.postgres.timeout``) and a circuit breaker: a store that does not answer
costs the proxy's loop at most one ``timeout``, then calls are refused at once
(503 ``store_unavailable`` with Retry-After) while a background probe waits for
the database to come back, and the store reconnects by itself.
"""

from gatekeeper.jobs.postgres.store import PostgresJobStore

__all__ = ["PostgresJobStore"]
