"""Entitlements: who sees them, their expiry, and revocation, suspension and reinstatement."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ColumnElement, and_, case, literal, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import access
from app.audit import service as audit
from app.audit.service import AuditContext
from app.auth.principal import Principal
from app.db import utcnow
from app.errors import conflict, invalid, not_found
from catalog.models import Product
from licensing import notices
from licensing.entitlements.models import CURRENT_STATUSES, Entitlement, status_at


def visible_entitlements(principal: Principal) -> ColumnElement[bool]:
    """Buyers see their orgs' entitlements; providers the entitlements to their products; staff all."""
    if access.platform_allows(principal, "entitlements.read"):
        return true()
    acting = access.acting_org_ids(principal)
    provider_products = select(Product.id).where(Product.org_id.in_(acting))
    return or_(Entitlement.buyer_org_id.in_(acting), Entitlement.product_id.in_(provider_products))


def status_now(now: dt.datetime) -> ColumnElement[str]:
    """``status_at`` in SQL, for filters."""
    due = and_(Entitlement.status.in_(CURRENT_STATUSES), Entitlement.valid_until <= now)
    return case((due, literal("expired")), else_=Entitlement.status)


async def expire_due(session: AsyncSession) -> int:
    """Record entitlements past their term as expired (the periodic sweep). Reads do not wait for it: they compute
    expiry (``status_at``), and grants refuse an entitlement past its term."""
    query = (
        update(Entitlement)
        .where(Entitlement.status.in_(CURRENT_STATUSES), Entitlement.valid_until <= utcnow())
        .values(status="expired", status_reason="term ended")
        .returning(Entitlement.id, Entitlement.buyer_org_id)
    )
    expired = (await session.execute(query)).all()
    for entitlement_id, org_id in expired:
        await audit.record(
            session,
            audit.SYSTEM,
            "entitlement.expired",
            org_id=org_id,
            target_type="entitlement",
            target_id=entitlement_id,
        )
    return len(expired)


async def get_entitlement(
    session: AsyncSession, principal: Principal, entitlement_id: uuid.UUID, *, lock: bool = False
) -> Entitlement:
    query = select(Entitlement).where(Entitlement.id == entitlement_id, visible_entitlements(principal))
    if lock:
        query = query.with_for_update()
    entitlement = await session.scalar(query)
    if entitlement is None:
        raise not_found("entitlement")
    return entitlement


async def change_entitlement_status(
    session: AsyncSession,
    context: AuditContext,
    principal: Principal,
    entitlement_id: uuid.UUID,
    *,
    to: str,
    reason: str | None,
) -> Entitlement:
    """Revoke, suspend or reinstate: the provider's owners and admins, or a platform admin. The reason, when
    given, is shown to the buyer."""
    entitlement = await get_entitlement(session, principal, entitlement_id, lock=True)
    product = await session.get(Product, entitlement.product_id)
    assert product is not None
    role = await access.role_in(session, principal, product.org_id)
    access.check_role(principal, role, "entitlements.change", "changing the provider's entitlements")
    stated = reason.strip() if reason is not None else None
    if to != "active" and stated == "":
        raise invalid("reason", "is blank: leave it out, or say what the buyer can act on")
    allowed_from = {"revoked": ("active", "suspended"), "suspended": ("active",), "active": ("suspended",)}[to]
    status, _ = status_at(entitlement, utcnow())
    if status not in allowed_from:
        raise conflict(f"the entitlement is {status}; it cannot become {to}", "invalid-transition")
    now = utcnow()
    entitlement.status, entitlement.status_reason = to, stated
    if to == "revoked":
        entitlement.revoked_at = now
    elif to == "suspended":
        entitlement.suspended_at = now
    else:
        entitlement.suspended_at, entitlement.status_reason = None, None
    await session.flush()
    action = {
        "revoked": "entitlement.revoked",
        "suspended": "entitlement.suspended",
        "active": "entitlement.reinstated",
    }
    await audit.record(
        session,
        context,
        action[to],
        org_id=entitlement.buyer_org_id,
        target_type="entitlement",
        target_id=entitlement.id,
        details={"reason": stated, "product": product.slug},
    )
    if to == "revoked":
        await notices.entitlement_revoked(session, entitlement, product)
    return entitlement
