"""Orders and access requests: placing them once per idempotency key, deciding, paying, cancelling, and the
entitlement a fulfilled order grants. Every change writes its audit event in the same transaction."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import hashlib
import json
import statistics
import uuid
from typing import Any

from sqlalchemy import ColumnElement, Select, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.access import ADMIN_ROLES, BUYER_ROLES, is_member, org_role, require_orders_scope
from app.accounts.models import Membership
from app.audit import service as audit
from app.audit.service import AuditContext
from app.auth.principal import Principal
from app.db import utcnow
from app.errors import ProblemError, conflict, forbidden, invalid, not_found
from catalog.models import Product
from catalog.service import member_org_ids, product_for_reading
from licensing.entitlements.models import Entitlement
from licensing.licences.models import Licence
from licensing.licences.service import licence_dict
from licensing.offers.models import Offer
from licensing.orders.models import OPEN_ORDER_STATUSES, Order

REQUEST_TTL = dt.timedelta(days=45)


# An order left unpaid this long expires: open orders freeze their offer's terms (update_offer).
PAYMENT_TTL = dt.timedelta(days=7)


def digest(document: Any) -> str:
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    return "sha256:" + hashlib.sha256(encoded).hexdigest()


def request_fingerprint(offer_id: uuid.UUID, buyer_org: str, purpose: str, answers: dict[str, Any]) -> str:
    return digest({"offer_id": str(offer_id), "buyer_org": buyer_org, "purpose": purpose, "answers": answers})[7:]


@dataclasses.dataclass(slots=True)
class OrderResult:
    order: Order
    created: bool


async def place_order(
    session: AsyncSession,
    context: AuditContext,
    principal: Principal,
    *,
    idempotency_key: str,
    offer_id: uuid.UUID,
    buyer_org: str,
    purpose: str,
    answers: dict[str, Any],
) -> OrderResult:
    """Create an order once per idempotency key: a retry with the same body returns the same order, one with a
    different body is refused. Free automatic offers are fulfilled at once."""
    require_orders_scope(principal)
    fingerprint = request_fingerprint(offer_id, buyer_org, purpose, answers)
    previous = await _order_for_key(session, principal.user_id, idempotency_key)
    if previous is not None:
        return _replay(previous, fingerprint)
    org = await org_role(session, principal, buyer_org, BUYER_ROLES, "ordering")
    # A share lock: an offer change waits for this order, and sees it when checking for open orders.
    offer = await session.scalar(
        select(Offer).where(Offer.id == offer_id, Offer.archived_at.is_(None)).with_for_update(read=True)
    )
    if offer is None or (offer.target_org_ids and org.id not in offer.target_org_ids):
        raise not_found("offer")
    product = await session.get(Product, offer.product_id)
    assert product is not None
    if product.status != "published" and not await is_member(session, principal, product.org_id):
        raise not_found("offer")
    if product.org_id == org.id:
        raise forbidden("an organisation cannot order its own product")
    if purpose not in offer.purposes:
        raise ProblemError(
            422,
            "purpose-not-permitted",
            "Purpose not permitted",
            f"this offer may be obtained for {', '.join(offer.purposes)}, not {purpose}",
            extra={"permitted_purposes": list(offer.purposes)},
        )
    now = utcnow()
    free = offer.price_amount == 0
    status = "pending_approval" if offer.approval == "manual" else ("fulfilled" if free else "awaiting_payment")
    inserted = await session.scalar(
        insert(Order)
        .values(
            id=uuid.uuid4(),
            buyer_org_id=org.id,
            offer_id=offer.id,
            product_id=product.id,
            purpose=purpose,
            form_answers=answers,
            status=status,
            idempotency_key=idempotency_key,
            request_sha256=fingerprint,
            created_by=principal.user_id,
            created_at=now,
            expires_at=now + REQUEST_TTL
            if status == "pending_approval"
            else (now + PAYMENT_TTL if status == "awaiting_payment" else None),
        )
        .on_conflict_do_nothing(index_elements=[Order.created_by, Order.idempotency_key])
        .returning(Order.id)
    )
    if inserted is None:  # a concurrent retry with the same key won the race
        previous = await _order_for_key(session, principal.user_id, idempotency_key)
        assert previous is not None
        return _replay(previous, fingerprint)
    order = await session.get(Order, inserted)
    assert order is not None
    await audit.record(
        session,
        context,
        "order.created",
        org_id=org.id,
        target_type="order",
        target_id=order.id,
        details={"offer_id": str(offer.id), "product": product.slug, "purpose": purpose, "status": status},
    )
    if status == "fulfilled":
        await fulfil(session, context, order, offer, product)
    return OrderResult(order, created=True)


async def _order_for_key(session: AsyncSession, user_id: uuid.UUID, key: str) -> Order | None:
    return await session.scalar(select(Order).where(Order.created_by == user_id, Order.idempotency_key == key))


def _replay(order: Order, fingerprint: str) -> OrderResult:
    if order.request_sha256 != fingerprint:
        raise ProblemError(
            422,
            "idempotency-key-reused",
            "Idempotency key reused",
            "this Idempotency-Key was used for a different request; use a new key for a new order",
        )
    return OrderResult(order, created=False)


async def fulfil(
    session: AsyncSession, context: AuditContext, order: Order, offer: Offer, product: Product
) -> Entitlement:
    """Grant the entitlement with an immutable snapshot of the licence and offer as accepted."""
    licence = await session.get(Licence, offer.licence_id)
    assert licence is not None
    now = utcnow()
    snapshot = {
        "licence": licence_dict(licence),
        "offer": {
            "id": str(offer.id),
            "name": offer.name,
            "price": {"amount": str(offer.price_amount), "currency": offer.currency},
            "term_days": offer.term_days,
            "quota": {"downloads": offer.quota_downloads, "bytes": offer.quota_bytes},
            "versions": offer.versions,
            "approval": offer.approval,
            "purposes": list(offer.purposes),
        },
        "product": product.slug,
        "purpose": order.purpose,
        "accepted_at": now.isoformat(),
    }
    entitlement = Entitlement(
        order_id=order.id,
        buyer_org_id=order.buyer_org_id,
        product_id=product.id,
        offer_id=offer.id,
        licence_id=licence.id,
        terms=snapshot,
        terms_digest=digest(snapshot),
        purposes=[order.purpose],
        versions=offer.versions,
        valid_from=now,
        valid_until=now + dt.timedelta(days=offer.term_days),
        downloads_limit=offer.quota_downloads,
        bytes_limit=offer.quota_bytes,
        downloads_used=0,
        bytes_used=0,
        status="active",
    )
    session.add(entitlement)
    order.status = "fulfilled"
    await session.flush()
    await audit.record(
        session,
        context,
        "entitlement.granted",
        org_id=order.buyer_org_id,
        target_type="entitlement",
        target_id=entitlement.id,
        details={"order_id": str(order.id), "product": product.slug, "terms_digest": entitlement.terms_digest},
    )
    return entitlement


def visible_orders(principal: Principal) -> ColumnElement[bool]:
    """Buyers see their orgs' orders; providers the orders for their products; platform staff all."""
    if principal.api_key_id is None and principal.has_platform_role("admin", "auditor"):
        return Order.id.is_not(None)
    provider_products = select(Product.id).where(Product.org_id.in_(member_org_ids(principal)))
    return or_(Order.buyer_org_id.in_(member_org_ids(principal)), Order.product_id.in_(provider_products))


async def get_order(session: AsyncSession, principal: Principal, order_id: uuid.UUID, *, lock: bool = False) -> Order:
    query = select(Order).where(Order.id == order_id, visible_orders(principal))
    if lock:
        query = query.with_for_update()
    order = await session.scalar(query)
    if order is None:
        raise not_found("order")
    await _expire_if_due(session, order)
    return order


async def expire_due_requests(session: AsyncSession) -> int:
    """Mark access requests nobody decided within ``REQUEST_TTL``, and orders nobody paid within ``PAYMENT_TTL``,
    as expired (also run by the periodic sweep), so lists and counts never show an overdue order as open."""
    expired = (
        await session.execute(
            update(Order)
            .where(Order.status.in_(OPEN_ORDER_STATUSES), Order.expires_at <= utcnow())
            .values(status="expired")
            .returning(Order.id, Order.buyer_org_id)
        )
    ).all()
    for order_id, org_id in expired:
        await audit.record(
            session, audit.SYSTEM, "order.expired", org_id=org_id, target_type="order", target_id=order_id
        )
    return len(expired)


async def _expire_if_due(session: AsyncSession, order: Order) -> None:
    if order.status in OPEN_ORDER_STATUSES and order.expires_at is not None and order.expires_at <= utcnow():
        order.status = "expired"
        await session.flush()
        await audit.record(
            session, audit.SYSTEM, "order.expired", org_id=order.buyer_org_id, target_type="order", target_id=order.id
        )


def list_orders_query(principal: Principal, status: str | None, product: str | None) -> Select[Any]:
    query = select(Order).where(visible_orders(principal))
    if status is not None:
        query = query.where(Order.status == status)
    if product is not None:
        query = query.where(Order.product_id.in_(select(Product.id).where(Product.slug == product)))
    return query


async def decide_order(
    session: AsyncSession,
    context: AuditContext,
    principal: Principal,
    order_id: uuid.UUID,
    *,
    approve: bool,
    reason: str,
) -> Order:
    """The provider's owners and admins approve or reject a pending access request."""
    require_orders_scope(principal)
    order = await get_order(session, principal, order_id, lock=True)
    product = await session.get(Product, order.product_id)
    assert product is not None
    role = await session.scalar(
        select(Membership.role).where(Membership.org_id == product.org_id, Membership.user_id == principal.user_id)
    )
    if role not in ADMIN_ROLES or (principal.api_key_org_id not in (None, product.org_id)):
        # Buyers can see their own order but never decide it; other providers do not see it at all.
        raise forbidden("only the provider's owners and admins decide access requests")
    if order.status != "pending_approval":
        raise conflict(f"the order is {order.status}, not pending approval", "order-not-pending")
    if not approve and not reason.strip():
        raise invalid("reason", "a rejection needs a reason the buyer can act on")
    now = utcnow()
    order.decided_at, order.decided_by, order.decision_reason = now, principal.user_id, reason.strip() or None
    offer = await session.get(Offer, order.offer_id)
    assert offer is not None
    if not approve:
        order.status = "rejected"
    else:
        order.status = "fulfilled" if offer.price_amount == 0 else "awaiting_payment"
        if order.status == "awaiting_payment":
            order.expires_at = now + PAYMENT_TTL
    await session.flush()
    await audit.record(
        session,
        context,
        "order.approved" if approve else "order.rejected",
        org_id=product.org_id,
        target_type="order",
        target_id=order.id,
        details={"reason": reason.strip(), "status": order.status},
    )
    if order.status == "fulfilled":
        await fulfil(session, context, order, offer, product)
    return order


@dataclasses.dataclass(frozen=True, slots=True)
class Collected:
    """What a payment provider reports it collected (either part may be unreported)."""

    amount: decimal.Decimal | None
    currency: str | None


async def confirm_payment(
    session: AsyncSession,
    context: AuditContext,
    order_id: uuid.UUID,
    *,
    reference: str,
    by: uuid.UUID | None,
    collected: Collected | None = None,
) -> Order:
    order = await session.scalar(select(Order).where(Order.id == order_id).with_for_update())
    if order is None:
        raise not_found("order")
    await _expire_if_due(session, order)
    if order.status == "fulfilled" and order.paid_at is not None:
        return order  # a webhook delivered twice
    if order.status != "awaiting_payment":
        raise conflict(f"the order is {order.status}, not awaiting payment", "order-not-awaiting-payment")
    offer = await session.get(Offer, order.offer_id)
    product = await session.get(Product, order.product_id)
    assert offer is not None
    assert product is not None
    # The offer's price cannot change while the order is open (update_offer), so it is the order's price.
    # Providers may write the currency in lower case.
    if collected is not None and (
        (collected.amount is not None and collected.amount != offer.price_amount)
        or (collected.currency is not None and collected.currency.upper() != offer.currency)
    ):
        raise conflict(
            f"the order costs {offer.price_amount} {offer.currency}, but the payment was "
            f"{collected.amount if collected.amount is not None else '?'} {collected.currency or '?'}; "
            "nothing was recorded",
            "payment-mismatch",
        )
    order.paid_at, order.payment_reference = utcnow(), reference or None
    await session.flush()
    await audit.record(
        session,
        context,
        "order.paid",
        org_id=order.buyer_org_id,
        target_type="order",
        target_id=order.id,
        details={"reference": reference, "confirmed_by": str(by) if by else "payment-webhook"},
    )
    await fulfil(session, context, order, offer, product)
    return order


async def cancel_order(
    session: AsyncSession, context: AuditContext, principal: Principal, order_id: uuid.UUID
) -> Order:
    require_orders_scope(principal)
    order = await get_order(session, principal, order_id, lock=True)
    role = await session.scalar(
        select(Membership.role).where(Membership.org_id == order.buyer_org_id, Membership.user_id == principal.user_id)
    )
    if role not in BUYER_ROLES or principal.api_key_org_id not in (None, order.buyer_org_id):
        # The buyer's auditors see the order but never act on it.
        raise forbidden("only the buyer's owners, admins and members cancel its order")
    if order.status not in ("pending_approval", "awaiting_payment"):
        raise conflict(f"the order is {order.status} and can no longer be cancelled", "order-final")
    order.status = "cancelled"
    await session.flush()
    await audit.record(
        session, context, "order.cancelled", org_id=order.buyer_org_id, target_type="order", target_id=order.id
    )
    return order


async def entitlement_for_order(session: AsyncSession, order_id: uuid.UUID) -> uuid.UUID | None:
    return await session.scalar(select(Entitlement.id).where(Entitlement.order_id == order_id))


async def transparency(session: AsyncSession, principal: Principal | None, slug: str) -> dict[str, Any]:
    """How many access requests a product had, how many were approved, and how fast they were decided."""
    product, _, _ = await product_for_reading(session, principal, slug)
    await expire_due_requests(session)
    rows = (
        await session.execute(
            select(Order.status, Order.created_at, Order.decided_at)
            .join(Offer, Offer.id == Order.offer_id)
            .where(Order.product_id == product.id, Offer.approval == "manual")
        )
    ).all()
    decided = [r for r in rows if r.decided_at is not None]
    approved = [r for r in decided if r.status != "rejected"]
    hours = [(r.decided_at - r.created_at).total_seconds() / 3600 for r in decided]
    return {
        "product": slug,
        "requests": len(rows),
        "decided": len(decided),
        "approved": len(approved),
        "rejected": len(decided) - len(approved),
        "pending": sum(1 for r in rows if r.status == "pending_approval"),
        "approval_rate": round(len(approved) / len(decided), 4) if decided else None,
        "median_hours_to_decision": round(statistics.median(hours), 2) if hours else None,
    }
