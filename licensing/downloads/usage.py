"""Metered usage added up from the grants: per entitlement, product and day for buyers; aggregated for providers."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import access
from app.accounts.models import Organization
from app.auth.principal import Principal
from catalog.models import Product
from licensing.downloads.models import DownloadGrant
from licensing.entitlements.models import Entitlement


async def buyer_usage(session: AsyncSession, principal: Principal, since: dt.datetime) -> list[dict[str, Any]]:
    """Grants, bytes charged and bytes served per entitlement, product and day, for the caller's orgs."""
    day = func.date_trunc("day", DownloadGrant.granted_at, "UTC")  # days are UTC days, whatever the server zone
    buyer_orgs = access.acting_org_ids(principal)
    rows = await session.execute(
        select(
            Entitlement.id,
            Organization.slug,
            Product.slug,
            day,
            func.count(),
            func.sum(DownloadGrant.bytes_charged),
            func.sum(DownloadGrant.bytes_served),
        )
        .join(Entitlement, Entitlement.id == DownloadGrant.entitlement_id)
        .join(Product, Product.id == Entitlement.product_id)
        .join(Organization, Organization.id == Entitlement.buyer_org_id)
        .where(Entitlement.buyer_org_id.in_(buyer_orgs), DownloadGrant.granted_at >= since)
        .group_by(Entitlement.id, Organization.slug, Product.slug, day)
        .order_by(day, Product.slug)
    )
    return [
        {
            "entitlement_id": str(e),
            "buyer_org": org,
            "product": product,
            "day": d.date().isoformat(),
            "grants": n,
            "bytes_charged": int(charged or 0),
            "bytes_served": int(served or 0),
        }
        for e, org, product, d, n, charged, served in rows
    ]


async def provider_usage(session: AsyncSession, principal: Principal, since: dt.datetime) -> list[dict[str, Any]]:
    """The same, aggregated per product and buyer org, for the caller's products — no buyer members named."""
    day = func.date_trunc("day", DownloadGrant.granted_at, "UTC")  # days are UTC days, whatever the server zone
    provider_orgs = access.acting_org_ids(principal)
    rows = await session.execute(
        select(
            Product.slug,
            Organization.slug,
            day,
            func.count(),
            func.sum(DownloadGrant.bytes_charged),
            func.sum(DownloadGrant.bytes_served),
        )
        .join(Entitlement, Entitlement.id == DownloadGrant.entitlement_id)
        .join(Product, Product.id == Entitlement.product_id)
        .join(Organization, Organization.id == Entitlement.buyer_org_id)
        .where(Product.org_id.in_(provider_orgs), DownloadGrant.granted_at >= since)
        .group_by(Product.slug, Organization.slug, day)
        .order_by(day, Product.slug)
    )
    return [
        {
            "product": product,
            "buyer_org": org,
            "day": d.date().isoformat(),
            "grants": n,
            "bytes_charged": int(charged or 0),
            "bytes_served": int(served or 0),
        }
        for product, org, d, n, charged, served in rows
    ]
