"""The periodic sweep: expire entitlements past their term and orders nobody decided or paid in time."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from licensing.entitlements.service import expire_due
from licensing.orders.service import expire_due_requests

log = logging.getLogger("corpora.licensing")


async def sweep(session: AsyncSession) -> tuple[int, int]:
    """(entitlements expired, orders expired). Checks at grant time do not depend on this having run."""
    entitlements = await expire_due(session)
    requests = await expire_due_requests(session)
    return entitlements, requests


async def run_sweeps(sessionmaker: async_sessionmaker[AsyncSession], every_seconds: float = 60) -> None:
    while True:
        await asyncio.sleep(every_seconds)
        try:
            async with sessionmaker() as session, session.begin():
                entitlements, requests = await sweep(session)
            if entitlements or requests:
                log.info("expired %d entitlements and %d orders", entitlements, requests)
        except Exception as exc:  # the sweep retries next round; an outage must not kill it
            log.warning("licensing sweep failed: %s", exc)
