"""What licensing tells the orgs concerned (inbox and webhooks), in the transaction of the change.

Order events go to the buyer and the provider; an entitlement's revocation to both; an entitlement about to
end (``EXPIRING_WITHIN`` before, from a periodic job) and a quota reaching ``QUOTA_THRESHOLD`` to the buyer,
each once.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from sqlalchemy import String, cast, exists, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.models import Organization
from app.db import utcnow
from app.jobs import JobDeps, job
from app.notifications.events import EntitlementEvent, OrderEvent, QuotaEvent
from app.notifications.models import EventType, Notification
from app.notifications.service import publish
from catalog.models import Product
from licensing.entitlements.models import Entitlement
from licensing.orders.models import Order

log = logging.getLogger("corpora.licensing")

EXPIRING_WITHIN = dt.timedelta(days=7)
QUOTA_THRESHOLD = 0.8


async def _slugs(session: AsyncSession, *org_ids: uuid.UUID) -> dict[uuid.UUID, str]:
    rows = await session.execute(select(Organization.id, Organization.slug).where(Organization.id.in_(org_ids)))
    return {org_id: slug for org_id, slug in rows}


async def order_event(
    session: AsyncSession,
    event: EventType,
    order: Order,
    product: Product,
    *,
    entitlement_id: uuid.UUID | None = None,
    reason: str | None = None,
) -> None:
    slugs = await _slugs(session, order.buyer_org_id, product.org_id)
    await publish(
        session,
        [order.buyer_org_id, product.org_id],
        event,
        OrderEvent(
            order_id=str(order.id),
            status=order.status,
            buyer_org=slugs[order.buyer_org_id],
            provider_org=slugs[product.org_id],
            product=product.slug,
            offer_id=str(order.offer_id),
            purpose=order.purpose,
            entitlement_id=str(entitlement_id) if entitlement_id else None,
            reason=reason or None,
        ),
    )


async def entitlement_revoked(session: AsyncSession, entitlement: Entitlement, product: Product) -> None:
    slugs = await _slugs(session, entitlement.buyer_org_id)
    await publish(
        session,
        [entitlement.buyer_org_id, product.org_id],
        EventType.ENTITLEMENT_REVOKED,
        EntitlementEvent(
            entitlement_id=str(entitlement.id),
            status=entitlement.status,
            buyer_org=slugs[entitlement.buyer_org_id],
            product=product.slug,
            valid_until=entitlement.valid_until,
            reason=entitlement.status_reason,
        ),
    )


async def quota_crossed(
    session: AsyncSession,
    *,
    entitlement_id: uuid.UUID,
    buyer_org_id: uuid.UUID,
    product: str,
    quota: str,
    used: int,
    charged: int,
    limit: int | None,
) -> None:
    """Publish ``quota.threshold`` when this charge took usage across the threshold (once per quota)."""
    if not limit or not (used - charged < limit * QUOTA_THRESHOLD <= used):
        return
    await publish(
        session,
        buyer_org_id,
        EventType.QUOTA_THRESHOLD,
        QuotaEvent(
            entitlement_id=str(entitlement_id),
            product=product,
            quota="downloads" if quota == "downloads" else "bytes",
            used=used,
            limit=limit,
            threshold=QUOTA_THRESHOLD,
        ),
        once_key=f"quota.threshold:{entitlement_id}:{quota}",
    )


async def notify_expiring(session: AsyncSession, now: dt.datetime | None = None) -> int:
    """Tell each buyer whose active entitlement ends within ``EXPIRING_WITHIN``, once per entitlement."""
    now = now or utcnow()
    rows = (
        await session.execute(
            select(Entitlement, Product.slug, Organization.slug)
            .join(Product, Product.id == Entitlement.product_id)
            .join(Organization, Organization.id == Entitlement.buyer_org_id)
            .where(
                Entitlement.status == "active",
                Entitlement.valid_until > now,
                Entitlement.valid_until <= now + EXPIRING_WITHIN,
                ~exists().where(
                    Notification.org_id == Entitlement.buyer_org_id,
                    Notification.once_key == literal("entitlement.expiring:") + cast(Entitlement.id, String),
                ),
            )
            .order_by(Entitlement.valid_until)
        )
    ).all()
    told = 0
    for entitlement, product, buyer in rows:
        written = await publish(
            session,
            entitlement.buyer_org_id,
            EventType.ENTITLEMENT_EXPIRING,
            EntitlementEvent(
                entitlement_id=str(entitlement.id),
                status=entitlement.status,
                buyer_org=buyer,
                product=product,
                valid_until=entitlement.valid_until,
            ),
            once_key=f"entitlement.expiring:{entitlement.id}",
        )
        told += len(written)
    return told


@job("licensing.expiring_notices", periodic="*/15 * * * *")
async def expiring_notices(deps: JobDeps, *, timestamp: int) -> None:
    async with deps.sessionmaker() as session, session.begin():
        told = await notify_expiring(session)
    if told:
        log.info("told %d buyers that an entitlement ends within %s", told, EXPIRING_WITHIN)
