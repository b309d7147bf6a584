"""The periodic sweep: expire entitlements past their term and orders nobody decided or paid in time."""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession

from app.jobs import JobDeps, job
from licensing.entitlements.service import expire_due
from licensing.orders.service import expire_due_requests

log = logging.getLogger("corpora.licensing")


async def sweep(session: AsyncSession) -> tuple[int, int]:
    """(entitlements expired, orders expired). Checks at grant time do not depend on this having run."""
    entitlements = await expire_due(session)
    requests = await expire_due_requests(session)
    return entitlements, requests


@job("licensing.expiry_sweep", periodic="* * * * *")
async def expiry_sweep(deps: JobDeps, *, timestamp: int) -> None:
    """Once a minute on one worker; a failed sweep is retried, and the next tick catches up anyway."""
    async with deps.sessionmaker() as session, session.begin():
        entitlements, requests = await sweep(session)
    if entitlements or requests:
        log.info("expired %d entitlements and %d orders", entitlements, requests)
