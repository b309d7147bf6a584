"""Licences, offers, orders and entitlements. Every change writes its audit event in the same transaction."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import hashlib
import json
import re
import statistics
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, literal, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.models import Membership, Organization
from app.audit import service as audit
from app.audit.service import AuditContext
from app.auth.principal import Principal
from app.db import utcnow
from app.errors import ProblemError, conflict, forbidden, invalid, not_found
from catalog.models import Product, ProductVersion
from catalog.service import WRITER_ROLES, member_org_ids, product_for_reading, product_for_writing, semver_key
from licensing import terms
from licensing.models import DUTIES, USES, Entitlement, Licence, Offer, Order

ADMIN_ROLES = ("owner", "admin")
BUYER_ROLES = ("owner", "admin", "member")
REQUEST_TTL = dt.timedelta(days=45)
# An order left unpaid this long expires: open orders freeze their offer's terms (update_offer).
PAYMENT_TTL = dt.timedelta(days=7)
OPEN_ORDER_STATUSES = ("pending_approval", "awaiting_payment")
MAX_PRICE = decimal.Decimal(10) ** 12
# Active ISO 4217 currency codes.
CURRENCIES = frozenset(
    """AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN BZD CAD
    CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ
    GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR
    LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN
    PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB
    TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG""".split()  # noqa: SIM905
)


def digest(document: Any) -> str:
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    return "sha256:" + hashlib.sha256(encoded).hexdigest()


async def _org_role(
    session: AsyncSession, principal: Principal, org_slug: str, roles: Sequence[str], what: str
) -> Organization:
    """The org, if the caller holds one of ``roles`` in it: 404 when not a member, 403 for the wrong role."""
    row = (
        await session.execute(
            select(Organization, Membership.role)
            .join(Membership, Membership.org_id == Organization.id)
            .where(Organization.slug == org_slug, Membership.user_id == principal.user_id)
        )
    ).one_or_none()
    if row is None or (principal.api_key_org_id is not None and principal.api_key_org_id != row[0].id):
        raise not_found(f"organisation '{org_slug}'")
    if row[1] not in roles:
        raise forbidden(f"{what} needs the role {' or '.join(roles)} in '{org_slug}'")
    return row[0]


# --- licences --------------------------------------------------------------------------------------------


def licence_dict(licence: Licence) -> dict[str, Any]:
    return {
        "id": licence.id,
        "name": licence.name,
        "spdx": licence.spdx,
        "url": licence.url,
        "text_sha256": licence.text_sha256,
        "uses": list(licence.uses),
        "duties": list(licence.duties),
        "territories": list(licence.territories),
        "note": licence.note,
    }


def invalid_cursor() -> ProblemError:
    return ProblemError(400, "invalid-cursor", "Invalid cursor", "pass next_cursor exactly as returned")


async def list_licences(session: AsyncSession, *, after: str | None, limit: int) -> list[tuple[Licence, str | None]]:
    """The licences after the one with id ``after``, which must exist (licences are never deleted)."""
    query = (
        select(Licence, Organization.slug)
        .outerjoin(Organization, Organization.id == Licence.owner_org_id)
        .order_by(Licence.owner_org_id.is_not(None), Licence.id)
    )
    rows: list[tuple[Licence, str | None]] = [(licence, org) for licence, org in (await session.execute(query)).all()]
    if after is not None:
        keys = [licence.id for licence, _ in rows]
        if after not in keys:
            raise invalid_cursor()
        rows = rows[keys.index(after) + 1 :]
    return rows[:limit]


async def get_licence(session: AsyncSession, licence_id: str) -> tuple[Licence, str | None]:
    row = (
        await session.execute(
            select(Licence, Organization.slug)
            .outerjoin(Organization, Organization.id == Licence.owner_org_id)
            .where(Licence.id == licence_id)
        )
    ).one_or_none()
    if row is None:
        raise not_found(f"licence '{licence_id}'")
    return row[0], row[1]


async def _provider_org_for(session: AsyncSession, principal: Principal, org_slug: str | None) -> Organization:
    if org_slug is not None:
        org = await _org_role(session, principal, org_slug, WRITER_ROLES, "adding a licence")
        if org.kind not in ("provider", "both"):
            raise forbidden(f"'{org_slug}' is not a provider organisation")
        return org
    orgs = (
        await session.scalars(
            select(Organization)
            .join(Membership, Membership.org_id == Organization.id)
            .where(
                Membership.user_id == principal.user_id,
                Membership.role.in_(WRITER_ROLES),
                Organization.kind.in_(("provider", "both")),
            )
        )
    ).all()
    if len(orgs) != 1:
        raise invalid("org", "name the provider organisation that owns this licence")
    return orgs[0]


async def create_licence(
    session: AsyncSession, context: AuditContext, principal: Principal, fields: dict[str, Any]
) -> tuple[Licence, str]:
    """A custom licence, owned by a provider org, with the id ``LicenseRef-<org>-<name>``."""
    org = await _provider_org_for(session, principal, fields.pop("org"))
    if not principal.has_scope("catalog:write"):
        raise forbidden("this API key lacks the 'catalog:write' scope")
    spdx = terms.validate_spdx(fields["spdx"]) if fields.get("spdx") else None
    text = fields.pop("text")
    text_sha256 = fields["text_sha256"]
    if text is not None:
        computed = hashlib.sha256(text.encode()).hexdigest()
        if text_sha256 is not None and text_sha256 != computed:
            raise invalid("text_sha256", "does not match the SHA-256 of the text given")
        text_sha256 = computed
    if not fields["url"] and text_sha256 is None:
        raise invalid("url", "a custom licence needs its text: give url, text or text_sha256")
    name_slug = re.sub(r"[^A-Za-z0-9.]+", "-", fields["name"]).strip("-")[:80] or "licence"
    licence_id = f"LicenseRef-{org.slug}-{name_slug}"
    taken = conflict(f"'{org.slug}' already has a licence named '{fields['name']}'", "licence-exists")
    if await session.get(Licence, licence_id) is not None:
        raise taken
    licence = Licence(
        id=licence_id,
        name=fields["name"],
        spdx=spdx,
        url=fields["url"],
        text_sha256=text_sha256,
        uses=sorted(set(fields["uses"]), key=USES.index),
        duties=sorted(set(fields["duties"]), key=DUTIES.index),
        territories=sorted(set(fields["territories"])),
        note=fields["note"],
        owner_org_id=org.id,
    )
    session.add(licence)
    try:
        await session.flush()
    except IntegrityError:  # the same name, created concurrently (the failed flush expires ``org``)
        raise taken from None
    await audit.record(
        session,
        context,
        "licence.created",
        org_id=org.id,
        target_type="licence",
        target_id=licence.id,
        details={"uses": licence.uses, "duties": licence.duties, "spdx": spdx},
    )
    return licence, org.slug


# --- offers ----------------------------------------------------------------------------------------------


def _price(amount: decimal.Decimal, currency: str) -> decimal.Decimal:
    if not amount.is_finite():
        raise invalid("price.amount", "must be a number")
    if amount < 0:
        raise invalid("price.amount", "must not be negative (0 means free)")
    if amount > MAX_PRICE or amount != amount.quantize(decimal.Decimal("0.01")):
        raise invalid("price.amount", "must have at most two decimals and be below 10^12")
    if currency not in CURRENCIES:
        raise invalid("price.currency", f"'{currency}' is not an ISO 4217 currency code")
    return amount.quantize(decimal.Decimal("0.01"))  # as stored, so the answer matches what is read back


async def _check_offer_terms(session: AsyncSession, licence_id: str, purposes: list[str]) -> Licence:
    licence = await session.get(Licence, licence_id)
    if licence is None:
        raise invalid("licence_id", f"no licence '{licence_id}' in the catalogue; see GET /api/v1/licences")
    beyond = sorted(set(purposes) - set(licence.uses))
    if beyond:
        raise invalid("purposes", f"{licence_id} does not permit {', '.join(beyond)}; offer only what it permits")
    return licence


async def _org_ids(session: AsyncSession, slugs: list[str]) -> list[uuid.UUID]:
    if not slugs:
        return []
    found = dict(
        (await session.execute(select(Organization.slug, Organization.id).where(Organization.slug.in_(slugs)))).all()
    )
    missing = sorted(set(slugs) - set(found))
    if missing:
        raise invalid("target_orgs", f"unknown organisations: {', '.join(missing)}")
    return [found[s] for s in dict.fromkeys(slugs)]


async def create_offer(
    session: AsyncSession, context: AuditContext, principal: Principal, slug: str, fields: dict[str, Any]
) -> Offer:
    product, _ = await product_for_writing(session, principal, slug)
    await _check_offer_terms(session, fields["licence_id"], fields["purposes"])
    offer = Offer(
        product_id=product.id,
        name=fields["name"],
        licence_id=fields["licence_id"],
        price_amount=_price(fields["price"]["amount"], fields["price"]["currency"]),
        currency=fields["price"]["currency"],
        term_days=fields["term_days"],
        quota_downloads=fields["quota"]["downloads"],
        quota_bytes=fields["quota"]["bytes"],
        versions=fields["versions"],
        approval=fields["approval"],
        purposes=sorted(set(fields["purposes"]), key=USES.index),
        target_org_ids=await _org_ids(session, fields["target_orgs"]),
    )
    session.add(offer)
    await session.flush()
    await audit.record(
        session,
        context,
        "offer.created",
        org_id=product.org_id,
        target_type="offer",
        target_id=offer.id,
        details={"product": slug, "licence_id": offer.licence_id, "price": f"{offer.price_amount} {offer.currency}"},
    )
    return offer


async def update_offer(
    session: AsyncSession,
    context: AuditContext,
    principal: Principal,
    slug: str,
    offer_id: uuid.UUID,
    changes: dict[str, Any],
) -> Offer:
    """Change an offer for future orders; entitlements keep the terms they were granted with."""
    product, _ = await product_for_writing(session, principal, slug)
    offer = await session.scalar(
        select(Offer).where(Offer.id == offer_id, Offer.product_id == product.id).with_for_update()
    )
    if offer is None:
        raise not_found("offer")
    # Orders not yet fulfilled were placed on these terms, and their entitlements are cut from the offer when
    # approved or paid; so the terms stay as they are while such orders are open.
    terms_changed = sorted(set(changes) & {"price", "quota", "purposes", "term_days"})
    if terms_changed:
        open_orders = await session.scalar(
            select(func.count())
            .select_from(Order)
            .where(Order.offer_id == offer.id, Order.status.in_(OPEN_ORDER_STATUSES))
        )
        if open_orders:
            raise conflict(
                f"{open_orders} open order(s) were placed on this offer's {', '.join(terms_changed)}; "
                "archive it and make a new offer",
                "offer-has-open-orders",
            )
    if "price" in changes:
        offer.price_amount = _price(changes["price"]["amount"], changes["price"]["currency"])
        offer.currency = changes["price"]["currency"]
    if "quota" in changes:
        offer.quota_downloads, offer.quota_bytes = changes["quota"]["downloads"], changes["quota"]["bytes"]
    if "purposes" in changes:
        await _check_offer_terms(session, offer.licence_id, changes["purposes"])
        offer.purposes = sorted(set(changes["purposes"]), key=USES.index)
    for name in ("name", "term_days", "approval"):
        if name in changes:
            setattr(offer, name, changes[name])
    if "archived" in changes:
        offer.archived_at = utcnow() if changes["archived"] else None
    offer.updated_at = utcnow()
    await session.flush()
    await audit.record(
        session,
        context,
        "offer.updated",
        org_id=product.org_id,
        target_type="offer",
        target_id=offer.id,
        details={"fields": sorted(changes)},
    )
    return offer


def offers_visible_to(principal: Principal | None, product: Product, role: str | None) -> ColumnElement[bool]:
    """Public offers for everyone; private ones for their target orgs and the provider."""
    if role is not None:
        return Offer.product_id == product.id
    public = func.cardinality(Offer.target_org_ids) == 0
    if principal is None:
        return and_(Offer.product_id == product.id, public, Offer.archived_at.is_(None))
    targeted = Offer.target_org_ids.overlap(
        select(func.array_agg(Membership.org_id)).where(Membership.user_id == principal.user_id).scalar_subquery()
    )
    return and_(Offer.product_id == product.id, or_(public, targeted), Offer.archived_at.is_(None))


async def list_offers(
    session: AsyncSession,
    principal: Principal | None,
    slug: str,
    *,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> tuple[list[Offer], str]:
    """Up to ``limit`` offers of the product the caller may see, oldest first, after the (created, id) ``after``."""
    product, _org, role = await product_for_reading(session, principal, slug)
    query = select(Offer).where(offers_visible_to(principal, product, role))
    if after is not None:
        query = query.where(tuple_(Offer.created_at, Offer.id) > tuple_(literal(after[0]), literal(after[1])))
    offers = (await session.scalars(query.order_by(Offer.created_at, Offer.id).limit(limit))).all()
    return list(offers), product.slug


async def org_slugs(session: AsyncSession, ids: Sequence[uuid.UUID]) -> list[str]:
    if not ids:
        return []
    found = dict(
        (await session.execute(select(Organization.id, Organization.slug).where(Organization.id.in_(ids)))).all()
    )
    return [found[i] for i in ids if i in found]


# --- orders ----------------------------------------------------------------------------------------------


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
    _require_orders_scope(principal)
    fingerprint = request_fingerprint(offer_id, buyer_org, purpose, answers)
    previous = await _order_for_key(session, principal.user_id, idempotency_key)
    if previous is not None:
        return _replay(previous, fingerprint)
    org = await _org_role(session, principal, buyer_org, BUYER_ROLES, "ordering")
    # A share lock: an offer change waits for this order, and sees it when checking for open orders.
    offer = await session.scalar(
        select(Offer).where(Offer.id == offer_id, Offer.archived_at.is_(None)).with_for_update(read=True)
    )
    if offer is None or (offer.target_org_ids and org.id not in offer.target_org_ids):
        raise not_found("offer")
    product = await session.get(Product, offer.product_id)
    assert product is not None
    if product.status != "published" and not await _is_member(session, principal, product.org_id):
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
        await _fulfil(session, context, order, offer, product)
    return OrderResult(order, created=True)


def _require_orders_scope(principal: Principal) -> None:
    """Placing, cancelling and deciding orders and changing entitlements: API keys need ``orders:write``."""
    if not principal.has_scope("orders:write"):
        raise forbidden("this API key lacks the 'orders:write' scope")


async def _is_member(session: AsyncSession, principal: Principal, org_id: uuid.UUID) -> bool:
    return (
        await session.scalar(
            select(Membership.role).where(Membership.org_id == org_id, Membership.user_id == principal.user_id)
        )
    ) is not None


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


async def _fulfil(
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
    _require_orders_scope(principal)
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
        await _fulfil(session, context, order, offer, product)
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
    await _fulfil(session, context, order, offer, product)
    return order


async def cancel_order(
    session: AsyncSession, context: AuditContext, principal: Principal, order_id: uuid.UUID
) -> Order:
    _require_orders_scope(principal)
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


# --- entitlements ----------------------------------------------------------------------------------------


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
    _require_orders_scope(principal)
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


# --- licence checks --------------------------------------------------------------------------------------


async def licence_check(
    session: AsyncSession,
    principal: Principal | None,
    items: list[tuple[str, str | None]],
    use: str,
    territory: str | None,
) -> tuple[terms.CheckResult, list[tuple[str, str]]]:
    """Evaluate a combination; an item without a version means the product's latest published version."""
    resolved: list[terms.CheckItem] = []
    for slug, version in items:
        product, org_slug, _ = await product_for_reading(session, principal, slug)
        released = [
            v
            for v in (
                await session.scalars(
                    select(ProductVersion).where(
                        ProductVersion.product_id == product.id,
                        ProductVersion.state.in_(("published", "deprecated")),
                    )
                )
            ).all()
        ]
        if version is not None:
            released = [v for v in released if v.version == version]
        if not released:
            raise not_found(f"published version {version or '(latest)'} of '{slug}'")
        chosen = max(released, key=semver_key)
        if chosen.licence_id is None:
            raise not_found(f"licence of {slug}@{chosen.version}")
        licence = await session.get(Licence, chosen.licence_id)
        assert licence is not None
        resolved.append(
            terms.CheckItem(
                product=slug,
                version=chosen.version,
                title=product.title,
                provider=org_slug,
                licence_id=licence.id,
                uses=frozenset(licence.uses),
                duties=frozenset(licence.duties),
                territories=frozenset(licence.territories),
            )
        )
    return terms.check(resolved, use, territory), [(i.product, i.version) for i in resolved]
