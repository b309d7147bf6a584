"""Reads that scale: read-only endpoints read from a replica while it is fresh enough, else from the primary.

Staleness is measured, not assumed: every second the primary's WAL position is sampled, then the replica's
replay position. The replica holds every transaction the primary had committed at the time of the newest sample
it has replayed, so it is at most ``now - that time`` behind. While that (plus one sampling interval) is within
the bound, read-only endpoints use the replica; otherwise, or when the replica does not answer, the primary.
A product committed on the primary is therefore listed by catalogue search within the bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from litestar.datastructures import State
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

log = logging.getLogger("corpora.replica")

SAMPLE_EVERY_SECONDS = 1.0
PRIMARY_LSN = text("SELECT (pg_current_wal_lsn() - '0/0')::bigint")
# On a node that is not in recovery (a primary given as the read URL) everything is visible: freshest.
REPLICA_LSN = text("SELECT pg_is_in_recovery(), (pg_last_wal_replay_lsn() - '0/0')::bigint")


class ReadRouting:
    """Which sessionmaker read-only endpoints use, kept up to date by ``run()``."""

    def __init__(
        self, primary: async_sessionmaker[AsyncSession], replica: AsyncEngine | None, max_lag_seconds: float
    ) -> None:
        self.primary = primary
        self.replica_engine = replica
        self.replica = async_sessionmaker(replica, expire_on_commit=False) if replica is not None else None
        self.max_lag_seconds = max_lag_seconds
        self.replica_fresh = False
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        if self.replica is not None and self.replica_fresh:
            return self.replica
        return self.primary

    def staleness(self, replica_lsn: int | None, now: float) -> float | None:
        """Seconds the replica may be behind: since the newest primary sample it has replayed (None: unknown)."""
        if replica_lsn is None:
            return 0.0
        replayed = [at for at, lsn in self._samples if lsn <= replica_lsn]
        return now - max(replayed) if replayed else None

    async def check(self) -> None:
        assert self.replica_engine is not None
        async with self.primary() as session:
            primary_lsn = (await session.execute(PRIMARY_LSN)).scalar_one()
        now = time.monotonic()
        self._samples.append((now, primary_lsn))
        while self._samples and self._samples[0][0] < now - 2 * self.max_lag_seconds:
            self._samples.popleft()
        async with self.replica_engine.connect() as connection:
            in_recovery, replica_lsn = (await connection.execute(REPLICA_LSN)).one()
        behind = self.staleness(replica_lsn if in_recovery else None, time.monotonic())
        fresh = behind is not None and behind + SAMPLE_EVERY_SECONDS <= self.max_lag_seconds
        if fresh != self.replica_fresh:
            log.info(
                "read replica %s", "fresh: catalogue reads go to it" if fresh else "behind: reads go to the primary"
            )
        self.replica_fresh = fresh

    async def run(self) -> None:
        """Sample until cancelled; a failing primary or replica sends reads to the primary until it answers."""
        if self.replica_engine is None:
            return
        while True:
            try:
                await asyncio.wait_for(self.check(), timeout=self.max_lag_seconds)
            except Exception as exc:
                if self.replica_fresh:
                    log.warning("read replica unavailable (%s): reads go to the primary", type(exc).__name__)
                self.replica_fresh = False
            await asyncio.sleep(SAMPLE_EVERY_SECONDS)


async def provide_read_session(state: State) -> AsyncIterator[AsyncSession]:
    """A session for an endpoint that only reads: on the replica while it is fresh, rolled back at the end."""
    routing: ReadRouting = state.read_routing
    async with routing.sessionmaker()() as session:
        try:
            yield session
        finally:
            with contextlib.suppress(Exception):
                await session.rollback()
