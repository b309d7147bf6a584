"""HTTP routes of entitlements."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

from litestar import Controller
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.types import ControllerRouterHandler
from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from app import pagination
from app.accounts.models import Organization
from app.auth.guards import requires
from app.db import utcnow
from app.deps import BEARER, Audit, Caller, Limit, Session
from app.handlers import get, post
from app.openapi import problems
from catalog.models import Product
from licensing.entitlements import service
from licensing.entitlements.models import Entitlement, EntitlementStatus, status_at
from licensing.entitlements.schemas import EntitlementOut, EntitlementPage, EntitlementQuota, StatusChangeIn


def with_details(query: Select[Any]) -> Select[Any]:
    """``query`` (of entitlements) with the product's and the buyer's slugs, in the same statement."""
    return (
        query.join(Product, Product.id == Entitlement.product_id)
        .join(Organization, Organization.id == Entitlement.buyer_org_id)
        .add_columns(Product.slug, Organization.slug)
    )


def entitlement_out(row: Any, now: dt.datetime) -> EntitlementOut:
    """An answer from a row of ``with_details``; expiry as of ``now``."""
    entitlement, product_slug, buyer = row
    status, reason = status_at(entitlement, now)
    return EntitlementOut(
        id=entitlement.id,
        status=status,
        status_reason=reason,
        product=product_slug,
        buyer_org=buyer,
        offer_id=entitlement.offer_id,
        order_id=entitlement.order_id,
        purposes=list(entitlement.purposes),
        versions=entitlement.versions,
        valid_from=entitlement.valid_from,
        valid_until=entitlement.valid_until,
        licence=entitlement.terms["licence"],
        terms_digest=entitlement.terms_digest,
        quota=EntitlementQuota(
            downloads_limit=entitlement.downloads_limit,
            downloads_used=entitlement.downloads_used,
            bytes_limit=entitlement.bytes_limit,
            bytes_used=entitlement.bytes_used,
        ),
        created_at=entitlement.created_at,
    )


async def load_entitlement(session: AsyncSession, entitlement: Entitlement) -> EntitlementOut:
    row = (await session.execute(with_details(select(Entitlement).where(Entitlement.id == entitlement.id)))).one()
    return entitlement_out(row, utcnow())


class EntitlementController(Controller):
    path = "/entitlements"
    tags = ["licensing"]
    security = BEARER

    @get(
        "/",
        summary="Entitlements: the buyer's own, and those granted for the caller's products",
        guards=[requires("entitlements.read")],
    )
    async def list(
        self,
        session: Session,
        principal: Caller,
        status: Annotated[
            EntitlementStatus | None, QueryParameter(description="only entitlements in this status")
        ] = None,
        product: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Limit = 50,
    ) -> EntitlementPage:
        now = utcnow()
        query = select(Entitlement).where(service.visible_entitlements(principal))
        if status is not None:
            query = query.where(service.status_now(now) == status)
        if product is not None:
            query = query.where(Entitlement.product_id.in_(select(Product.id).where(Product.slug == product)))
        rows, next_cursor = await pagination.page(
            session, with_details(query), (Entitlement.id,), cursor, limit, descending=True
        )
        return EntitlementPage(items=[entitlement_out(row, now) for row in rows], next_cursor=next_cursor)

    @get(
        "/{entitlement_id:uuid}",
        summary="One entitlement with its terms and quota",
        guards=[requires("entitlements.read")],
    )
    async def read(self, session: Session, principal: Caller, entitlement_id: FromPath[uuid.UUID]) -> EntitlementOut:
        return await load_entitlement(session, await service.get_entitlement(session, principal, entitlement_id))

    @post(
        "/{entitlement_id:uuid}/revoke",
        summary="Revoke an entitlement with a reason",
        status_code=200,
        guards=[requires("entitlements.change")],
        responses=problems({409: "The entitlement cannot make that transition from its status (`invalid-transition`)"}),
    )
    async def revoke(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        entitlement_id: FromPath[uuid.UUID],
        data: JSONBody[StatusChangeIn | None] = None,
    ) -> EntitlementOut:
        entitlement = await service.change_entitlement_status(
            session, audit_context, principal, entitlement_id, to="revoked", reason=data.reason if data else None
        )
        return await load_entitlement(session, entitlement)

    @post(
        "/{entitlement_id:uuid}/suspend",
        summary="Suspend an entitlement with a reason",
        status_code=200,
        guards=[requires("entitlements.change")],
        responses=problems({409: "The entitlement cannot make that transition from its status (`invalid-transition`)"}),
    )
    async def suspend(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        entitlement_id: FromPath[uuid.UUID],
        data: JSONBody[StatusChangeIn | None] = None,
    ) -> EntitlementOut:
        entitlement = await service.change_entitlement_status(
            session, audit_context, principal, entitlement_id, to="suspended", reason=data.reason if data else None
        )
        return await load_entitlement(session, entitlement)

    @post(
        "/{entitlement_id:uuid}/reinstate",
        summary="Reinstate a suspended entitlement",
        status_code=200,
        guards=[requires("entitlements.change")],
        responses=problems({409: "The entitlement cannot make that transition from its status (`invalid-transition`)"}),
    )
    async def reinstate(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        entitlement_id: FromPath[uuid.UUID],
        data: JSONBody[StatusChangeIn | None] = None,
    ) -> EntitlementOut:
        entitlement = await service.change_entitlement_status(
            session, audit_context, principal, entitlement_id, to="active", reason=data.reason if data else None
        )
        return await load_entitlement(session, entitlement)


route_handlers: list[ControllerRouterHandler] = [EntitlementController]
