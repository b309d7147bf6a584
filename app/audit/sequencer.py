"""Sequencing recorded audit events into the log, in batches, shortly after their transactions commit.

A transaction records an event by inserting it into ``audit_pending`` (``app.audit.service.record``) and locks
nothing shared, so transactions that record events commit concurrently. ``audit_sequence`` (migration 0021) then
gives committed pending events their ``seq``, chain hash and Merkle leaf in one transaction per batch, under the
chain head's row lock. Every server process and every job worker runs :func:`run_sequencer`, which polls every
``audit_sequence_every_seconds`` (a statement that reads an empty table when nothing is pending); a PostgreSQL
advisory lock lets one process sequence at a time and the others skip their turn rather than queue on the head.
Polling, not ``NOTIFY``: a notifying transaction takes a database-wide lock while it commits, which would
serialise the very commits this avoids serialising.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

log = logging.getLogger("corpora.audit")

BATCH = 5_000
MAX_BACKOFF_SECONDS = 10.0
# One advisory lock key for "sequencing audit events", derived from a name so it cannot collide by accident.
ADVISORY_LOCK_KEY = int.from_bytes(hashlib.sha256(b"corpora.audit.sequencer").digest()[:8], "big", signed=True)

# One statement in a transaction of its own (autocommit), one round trip: the advisory lock is that transaction's,
# so it ends with it. -1: another process holds the lock (it is sequencing, or about to).
_TRY_BATCH = "SELECT CASE WHEN pg_try_advisory_xact_lock($1) THEN audit_sequence($2) ELSE -1 END"


async def sequence_pending(session: AsyncSession, *, limit: int = BATCH) -> int:
    """Sequence up to ``limit`` committed pending events in the session's transaction, waiting for any other
    sequencer to finish first; how many were sequenced. Events recorded by the session's own transaction are
    sequenced too (they are visible to it)."""
    await session.execute(select(func.pg_advisory_xact_lock(ADVISORY_LOCK_KEY)))
    return int(await session.scalar(select(func.audit_sequence(limit))) or 0)


async def _driver(connection: AsyncConnection) -> Any:
    """The asyncpg connection under ``connection``, used outside any transaction (each statement commits on its
    own): polling is what an idle service does most, and one prepared statement costs a fraction of a Core round
    trip with its BEGIN and COMMIT."""
    return (await connection.get_raw_connection()).driver_connection


async def run_sequencer(engine: AsyncEngine, *, every_seconds: float, limit: int = BATCH) -> None:
    """Sequence committed events until cancelled: a batch every ``every_seconds``, and at once again while batches
    come back full. Database outages are logged and retried with backoff."""
    delay = every_seconds
    while True:
        try:
            async with engine.connect() as connection:
                try:
                    driver = await _driver(connection)
                    while True:
                        sequenced = int(await driver.fetchval(_TRY_BATCH, ADVISORY_LOCK_KEY, limit))
                        delay = every_seconds
                        if sequenced < limit:
                            await asyncio.sleep(every_seconds)
                except Exception:
                    # The pool never saw the driver fail: without this it would hand back the same dead
                    # connection (a failover, a partition) on every retry.
                    with contextlib.suppress(Exception):
                        await connection.invalidate()
                    raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            delay = min(max(delay * 2, every_seconds), MAX_BACKOFF_SECONDS)
            log.warning("audit sequencing failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
