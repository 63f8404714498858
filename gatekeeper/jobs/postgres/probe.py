"""``gatekeeper check``'s look at the PostgreSQL store: can it connect, which version.

Read-only: it connects once, reads ``schema_version`` and says whether ``gatekeeper
run`` would use the schema as it is, migrate it, create it, or refuse it.
"""

from __future__ import annotations

import asyncio

import asyncpg

from gatekeeper.jobs.postgres.schema import SCHEMA_VERSION, read_version


async def _version(dsn: str, schema: str) -> int:
    con = await asyncpg.connect(dsn)
    try:
        return await read_version(con, schema)
    finally:
        await con.close()


def check(dsn: str, schema: str, timeout: float) -> tuple[bool, str]:
    """(usable, one line for ``gatekeeper check``); runs its own event loop."""
    try:
        found = asyncio.run(asyncio.wait_for(_version(dsn, schema), timeout))
    except TimeoutError:
        return False, f"PostgreSQL did not answer within {timeout:g}s"
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return False, f"cannot connect to PostgreSQL: {str(exc) or type(exc).__name__}"
    if found == SCHEMA_VERSION:
        return True, f"connected; schema {schema} at version {found} (current)"
    if found == 0:
        return True, f"connected; schema {schema} not created yet (gatekeeper run creates it)"
    if found < SCHEMA_VERSION:
        return True, (
            f"connected; schema {schema} at version {found}, gatekeeper run migrates it"
            f" to {SCHEMA_VERSION}"
        )
    return False, (
        f"schema {schema} is at version {found}, this gatekeeper knows {SCHEMA_VERSION}"
        " (a newer gatekeeper created it)"
    )
