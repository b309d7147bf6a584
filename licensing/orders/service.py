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

from sqlalchemy import ColumnElement, Select, or_, select, text, true, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import access
from app.audit import service as audit
from app.audit.service import AuditContext
from app.auth.principal import Principal
from app.db import utcnow
from app.errors import ProblemError, conflict, forbidden, invalid, not_found
from app.notifications.models import EventType
from catalog.models import Product
from catalog.service import product_for_reading, visible_products
from licensing import notices
from licensing.entitlements.models import CURRENT_STATUSES, Entitlement
from licensing.licences.models import Licence
from licensing.licences.service import licence_dict
from licensing.offers.models import Offer
from licensing.orders.models import OPEN_ORDER_STATUSES, Order, status_at, status_now

REQUEST_TTL = dt.timedelta(days=45)


# An order left unpaid this long expires: open orders freeze their offer's terms (update_offer).
PAYMENT_TTL = dt.timedelta(days=7)


def digest(document: Any) -> str:
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    return "sha256:" + hashlib.sha256(encoded).hexdigest()


def request_fingerprint(offer_id: uuid.UUID, buyer_org: str, purpose: str, answers: dict[str, Any]) -> str:
    return digest({"offer_id": str(offer_id), "buyer_org": buyer_org, "purpose": purpose, "answers": answers})[7:]


def current_entitlement(buyer_org_id: Any, offer_id: Any, now: dt.datetime) -> Any:
    """The buyer's entitlement under the offer that is still within its term, as a scalar subquery."""
    return (
        select(Entitlement.id)
        .where(
            Entitlement.buyer_org_id == buyer_org_id,
            Entitlement.offer_id == offer_id,
            Entitlement.status.in_(CURRENT_STATUSES),
            Entitlement.valid_until > now,
        )
        .scalar_subquery()
    )


def already_entitled(entitlement_id: uuid.UUID) -> ProblemError:
    return ProblemError(
        409,
        "already-entitled",
        "Already entitled",
        f"the organisation already holds entitlement {entitlement_id} under this offer; order again once it has ended",
        extra={"entitlement_id": str(entitlement_id)},
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Shown:
    """What an answer shows beside a new order, known while placing it (no need to read it back)."""

    product: str
    buyer_org: str
    price_amount: decimal.Decimal
    currency: str
    entitlement_id: uuid.UUID | None


@dataclasses.dataclass(slots=True)
class OrderResult:
    order: Order
    created: bool
    shown: Shown | None = None


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
    different body is refused. Free automatic offers are fulfilled at once. Only published products are
    ordered, and only while the buyer holds no current entitlement under the offer."""
    # Access first, replays too: a key of another org never sees the order its user placed through this one.
    org, _ = await access.org_for(session, principal, buyer_org, "orders.place", "ordering")
    fingerprint = request_fingerprint(offer_id, buyer_org, purpose, answers)
    previous = await _order_for_key(session, principal.user_id, idempotency_key)
    if previous is not None:
        return _replay(previous, fingerprint)
    # The offer with its product, if the caller may see it (an API key sees only its own org's drafts), and the
    # buyer's current entitlement under it. A share lock: an offer change waits for this order, and sees it when
    # checking for open orders.
    row = (
        await session.execute(
            select(Offer, Product, Licence, current_entitlement(org.id, Offer.id, utcnow()))
            .join(Product, Product.id == Offer.product_id)
            .join(Licence, Licence.id == Offer.licence_id)
            .where(Offer.id == offer_id, Offer.archived_at.is_(None), visible_products(principal))
            .with_for_update(of=Offer, read=True)
        )
    ).one_or_none()
    if row is None or (row[0].target_org_ids and org.id not in row[0].target_org_ids):
        raise not_found("offer")
    offer, product, licence, entitled = row
    if product.status != "published":
        raise conflict(f"'{product.slug}' is not published; only published products are ordered", "not-published")
    if entitled is not None:
        # A retry whose first attempt committed after the lookup above sees that attempt's entitlement: the
        # order is there now too, and this is its replay.
        previous = await _order_for_key(session, principal.user_id, idempotency_key)
        if previous is not None:
            return _replay(previous, fingerprint)
        raise already_entitled(entitled)
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
    order = await session.scalar(
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
        .returning(Order)
    )
    if order is None:  # a concurrent retry with the same key won the race
        previous = await _order_for_key(session, principal.user_id, idempotency_key)
        assert previous is not None
        return _replay(previous, fingerprint)
    await audit.record(
        session,
        context,
        "order.created",
        org_id=org.id,
        target_type="order",
        target_id=order.id,
        details={"offer_id": str(offer.id), "product": product.slug, "purpose": purpose, "status": status},
    )
    await notices.order_event(session, EventType.ORDER_CREATED, order, product)
    entitlement_id = await fulfil(session, context, order, offer, product, licence) if status == "fulfilled" else None
    shown = Shown(product.slug, org.slug, offer.price_amount, offer.currency, entitlement_id)
    return OrderResult(order, created=True, shown=shown)


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
    session: AsyncSession,
    context: AuditContext,
    order: Order,
    offer: Offer,
    product: Product,
    licence: Licence | None = None,
) -> uuid.UUID:
    """Grant the entitlement with an immutable snapshot of the licence and offer as accepted; its id."""
    licence = licence or await session.get(Licence, offer.licence_id)
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
    entitlement_id, terms_digest = uuid.uuid4(), digest(snapshot)
    granted = (
        insert(Entitlement)
        .values(
            id=entitlement_id,
            order_id=order.id,
            buyer_org_id=order.buyer_org_id,
            product_id=product.id,
            offer_id=offer.id,
            licence_id=licence.id,
            terms=snapshot,
            terms_digest=terms_digest,
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
        # One current entitlement per buyer org and offer (a partial unique index). A concurrent order that got
        # there first wins (this waits for it to commit), and this one is refused.
        .on_conflict_do_nothing(
            index_elements=[Entitlement.buyer_org_id, Entitlement.offer_id],
            # Literal, as in the index: a predicate with parameters would not infer the index.
            index_where=text("status IN ('active', 'suspended')"),
        )
        .returning(Entitlement.id)
    )
    inserted = await session.scalar(granted)
    # One past its term that the sweep has not recorded yet ends now, making room for the new one.
    if inserted is None and await _end_past_term(session, order.buyer_org_id, offer.id, now):
        inserted = await session.scalar(granted)
    if inserted is None:
        current = await session.scalar(select(current_entitlement(order.buyer_org_id, offer.id, now)))
        raise (
            already_entitled(current)
            if current is not None
            else conflict(
                "the organisation's entitlement under this offer changed meanwhile; try again", "already-entitled"
            )
        )
    order.status = "fulfilled"
    await session.flush()
    await audit.record(
        session,
        context,
        "entitlement.granted",
        org_id=order.buyer_org_id,
        target_type="entitlement",
        target_id=entitlement_id,
        details={"order_id": str(order.id), "product": product.slug, "terms_digest": terms_digest},
    )
    await notices.order_event(session, EventType.ORDER_FULFILLED, order, product, entitlement_id=entitlement_id)
    return entitlement_id


async def _end_past_term(session: AsyncSession, buyer_org_id: uuid.UUID, offer_id: uuid.UUID, now: dt.datetime) -> int:
    """Record as expired the buyer's entitlement under the offer that is past its term; how many."""
    ended = (
        await session.execute(
            update(Entitlement)
            .where(
                Entitlement.buyer_org_id == buyer_org_id,
                Entitlement.offer_id == offer_id,
                Entitlement.status.in_(CURRENT_STATUSES),
                Entitlement.valid_until <= now,
            )
            .values(status="expired", status_reason="term ended")
            .returning(Entitlement.id)
        )
    ).scalars()
    count = 0
    for entitlement_id in ended:
        count += 1
        await audit.record(
            session,
            audit.SYSTEM,
            "entitlement.expired",
            org_id=buyer_org_id,
            target_type="entitlement",
            target_id=entitlement_id,
        )
    return count


def visible_orders(principal: Principal) -> ColumnElement[bool]:
    """Buyers see their orgs' orders; providers the orders for their products; platform staff all."""
    if access.platform_allows(principal, "orders.read"):
        return true()
    acting = access.acting_org_ids(principal)
    provider_products = select(Product.id).where(Product.org_id.in_(acting))
    return or_(Order.buyer_org_id.in_(acting), Order.product_id.in_(provider_products))


async def get_order(session: AsyncSession, principal: Principal, order_id: uuid.UUID, *, lock: bool = False) -> Order:
    query = select(Order).where(Order.id == order_id, visible_orders(principal))
    if lock:
        query = query.with_for_update()
    order = await session.scalar(query)
    if order is None:
        raise not_found("order")
    return order


async def expire_due_requests(session: AsyncSession) -> int:
    """Record access requests nobody decided within ``REQUEST_TTL``, and orders nobody paid within ``PAYMENT_TTL``,
    as expired (the periodic sweep). Reads do not wait for it: they compute expiry (``status_at``)."""
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


def list_orders_query(principal: Principal, status: str | None, product: str | None) -> Select[Any]:
    query = select(Order).where(visible_orders(principal))
    if status is not None:
        query = query.where(status_now(utcnow()) == status)
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
    reason: str | None,
) -> Order:
    """The provider's owners and admins approve or reject a pending access request; a reason, when given, is
    shown to the buyer."""
    order = await get_order(session, principal, order_id, lock=True)
    product = await session.get(Product, order.product_id)
    assert product is not None
    # Buyers can see their own order but never decide it; other providers do not see it at all.
    role = await access.role_in(session, principal, product.org_id)
    access.check_role(principal, role, "orders.decide", "deciding the provider's access requests")
    if (status := status_at(order, utcnow())) != "pending_approval":
        raise conflict(f"the order is {status}, not pending approval", "order-not-pending")
    stated = reason.strip() if reason is not None else None
    if not approve and stated == "":
        raise invalid("reason", "is blank: leave it out, or say what the buyer can act on")
    now = utcnow()
    order.decided_at, order.decided_by, order.decision_reason = now, principal.user_id, stated or None
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
        details={"reason": stated or "", "status": order.status},
    )
    await notices.order_event(
        session, EventType.ORDER_APPROVED if approve else EventType.ORDER_REJECTED, order, product, reason=stated
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
    if order.status == "fulfilled" and order.paid_at is not None:
        return order  # a webhook delivered twice
    if (status := status_at(order, utcnow())) != "awaiting_payment":
        raise conflict(f"the order is {status}, not awaiting payment", "order-not-awaiting-payment")
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
    order = await get_order(session, principal, order_id, lock=True)
    # The buyer's auditors see the order but never act on it.
    role = await access.role_in(session, principal, order.buyer_org_id)
    access.check_role(principal, role, "orders.cancel", "cancelling the buyer's order")
    if (status := status_at(order, utcnow())) not in OPEN_ORDER_STATUSES:
        raise conflict(f"the order is {status} and can no longer be cancelled", "order-final")
    order.status = "cancelled"
    await session.flush()
    await audit.record(
        session, context, "order.cancelled", org_id=order.buyer_org_id, target_type="order", target_id=order.id
    )
    return order


async def transparency(session: AsyncSession, principal: Principal | None, slug: str) -> dict[str, Any]:
    """How many access requests a product had, how many were approved, and how fast they were decided."""
    product, _, _ = await product_for_reading(session, principal, slug)
    rows = (
        await session.execute(
            select(status_now(utcnow()).label("status"), Order.created_at, Order.decided_at)
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
