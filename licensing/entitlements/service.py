"""Entitlements: who sees them, their expiry, and revocation, suspension and reinstatement."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.access import ADMIN_ROLES, require_orders_scope
from app.accounts.models import Membership
from app.audit import service as audit
from app.audit.service import AuditContext
from app.auth.principal import Principal
from app.db import utcnow
from app.errors import conflict, forbidden, invalid, not_found
from catalog.models import Product
from catalog.service import member_org_ids
from licensing.entitlements.models import Entitlement


def visible_entitlements(principal: Principal) -> ColumnElement[bool]:
    """Buyers see their orgs' entitlements; providers the entitlements to their products; staff all."""
    if principal.api_key_id is None and principal.has_platform_role("admin", "auditor"):
        return Entitlement.id.is_not(None)
    provider_products = select(Product.id).where(Product.org_id.in_(member_org_ids(principal)))
    return or_(Entitlement.buyer_org_id.in_(member_org_ids(principal)), Entitlement.product_id.in_(provider_products))


async def expire_due(session: AsyncSession, ids: Sequence[uuid.UUID] | None = None) -> int:
    """Mark entitlements past their term as expired (also run by the periodic sweep)."""
    query = (
        update(Entitlement)
        .where(Entitlement.status.in_(("active", "suspended")), Entitlement.valid_until <= utcnow())
        .values(status="expired", status_reason="term ended")
        .returning(Entitlement.id, Entitlement.buyer_org_id)
    )
    if ids is not None:
        query = query.where(Entitlement.id.in_(ids))
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
    await expire_due(session, [entitlement_id])
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
    reason: str,
) -> Entitlement:
    """Revoke, suspend or reinstate: the provider's owners and admins, or a platform admin."""
    require_orders_scope(principal)
    entitlement = await get_entitlement(session, principal, entitlement_id, lock=True)
    product = await session.get(Product, entitlement.product_id)
    assert product is not None
    role = await session.scalar(
        select(Membership.role).where(Membership.org_id == product.org_id, Membership.user_id == principal.user_id)
    )
    platform_admin = principal.api_key_id is None and principal.has_platform_role("admin")
    provider_admin = role in ADMIN_ROLES and principal.api_key_org_id in (None, product.org_id)
    if not provider_admin and not platform_admin:
        raise forbidden("only the provider's owners and admins, or a platform admin, change an entitlement")
    if to != "active" and not reason.strip():
        raise invalid("reason", f"an entitlement is {to} with a reason the buyer can act on")
    allowed_from = {"revoked": ("active", "suspended"), "suspended": ("active",), "active": ("suspended",)}[to]
    if entitlement.status not in allowed_from:
        raise conflict(f"the entitlement is {entitlement.status}; it cannot become {to}", "invalid-transition")
    now = utcnow()
    entitlement.status, entitlement.status_reason = to, reason.strip()
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
        details={"reason": reason.strip(), "product": product.slug},
    )
    return entitlement
