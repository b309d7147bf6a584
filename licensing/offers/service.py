"""Offers of a product: a licence, a price, a term, quotas and the purposes they may be obtained for."""

from __future__ import annotations

import decimal
import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app import pagination
from app.accounts import access
from app.accounts.models import Organization
from app.audit import service as audit
from app.audit.service import AuditContext
from app.auth.principal import Principal
from app.db import utcnow
from app.errors import conflict, invalid, not_found
from catalog.models import Product
from catalog.service import product_for_reading, product_for_writing
from licensing.licences.models import USES, Licence
from licensing.offers.models import Offer
from licensing.orders.models import OPEN_ORDER_STATUSES, Order, status_now

MAX_PRICE = decimal.Decimal(1_000_000_000)  # also a constraint of the offers table


# Active ISO 4217 currency codes.
CURRENCIES = frozenset(
    """AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN BZD CAD
    CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ
    GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR
    LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN
    PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB
    TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG""".split()  # noqa: SIM905
)


CENT = decimal.Decimal("0.01")


def price_of(amount: decimal.Decimal, currency: str) -> decimal.Decimal:
    if not amount.is_finite():
        raise invalid("price.amount", "must be a number")
    if amount < 0:
        raise invalid("price.amount", "must not be negative (0 means free)")
    if amount > MAX_PRICE or amount != amount.quantize(CENT):
        raise invalid("price.amount", "must be from 0 to 1,000,000,000 with at most two decimals")
    if currency not in CURRENCIES:
        raise invalid("price.currency", f"'{currency}' is not an ISO 4217 currency code")
    # As stored, so the answer matches what is read back: no "-0.00", which the database does not keep.
    return amount.quantize(CENT).copy_abs() if amount.is_zero() else amount.quantize(CENT)


async def check_offer_terms(session: AsyncSession, licence_id: str, purposes: list[str]) -> Licence:
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
    await check_offer_terms(session, fields["licence_id"], fields["purposes"])
    offer = Offer(
        product_id=product.id,
        name=fields["name"],
        licence_id=fields["licence_id"],
        price_amount=price_of(fields["price"]["amount"], fields["price"]["currency"]),
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
            .where(Order.offer_id == offer.id, status_now(utcnow()).in_(OPEN_ORDER_STATUSES))
        )
        if open_orders:
            raise conflict(
                f"{open_orders} open order(s) were placed on this offer's {', '.join(terms_changed)}; "
                "archive it and make a new offer",
                "offer-has-open-orders",
            )
    if "price" in changes:
        offer.price_amount = price_of(changes["price"]["amount"], changes["price"]["currency"])
        offer.currency = changes["price"]["currency"]
    if "quota" in changes:
        offer.quota_downloads, offer.quota_bytes = changes["quota"]["downloads"], changes["quota"]["bytes"]
    if "purposes" in changes:
        await check_offer_terms(session, offer.licence_id, changes["purposes"])
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
    acting = access.acting_org_ids(principal).subquery()
    targeted = Offer.target_org_ids.overlap(select(func.array_agg(acting.c.org_id)).scalar_subquery())
    return and_(Offer.product_id == product.id, or_(public, targeted), Offer.archived_at.is_(None))


async def list_offers(
    session: AsyncSession,
    principal: Principal | None,
    slug: str,
    *,
    cursor: str | None,
    limit: int,
) -> tuple[list[Offer], str | None]:
    """A page of the offers of the product the caller may see, oldest first."""
    product, _org, role = await product_for_reading(session, principal, slug)
    query = select(Offer).where(offers_visible_to(principal, product, role))
    rows, next_cursor = await pagination.page(session, query, (Offer.created_at, Offer.id), cursor, limit)
    return [offer for (offer,) in rows], next_cursor


async def org_slugs(session: AsyncSession, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The slugs of these organisations, in one statement (none for no ids)."""
    wanted = set(ids)
    if not wanted:
        return {}
    rows = await session.execute(select(Organization.id, Organization.slug).where(Organization.id.in_(wanted)))
    return {org_id: slug for org_id, slug in rows}
