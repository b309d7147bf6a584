"""The periodic sweep: expire entitlements past their term and access requests nobody decided in time."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit import service as audit
from app.db import utcnow
from licensing.models import Order
from licensing.service import expire_due

log = logging.getLogger("corpora.licensing")


async def sweep(session: AsyncSession) -> tuple[int, int]:
    """(entitlements expired, requests expired). Checks at grant time do not depend on this having run."""
    entitlements = await expire_due(session)
    expired = (
        await session.execute(
            update(Order)
            .where(Order.status == "pending_approval", Order.expires_at <= utcnow())
            .values(status="expired")
            .returning(Order.id, Order.buyer_org_id)
        )
    ).all()
    for order_id, org_id in expired:
        await audit.record(
            session, audit.SYSTEM, "order.expired", org_id=org_id, target_type="order", target_id=order_id
        )
    return entitlements, len(expired)


async def run_sweeps(sessionmaker: async_sessionmaker[AsyncSession], every_seconds: float = 60) -> None:
    while True:
        await asyncio.sleep(every_seconds)
        try:
            async with sessionmaker() as session, session.begin():
                entitlements, requests = await sweep(session)
            if entitlements or requests:
                log.info("expired %d entitlements and %d access requests", entitlements, requests)
        except Exception as exc:  # the sweep retries next round; an outage must not kill it
            log.warning("licensing sweep failed: %s", exc)
