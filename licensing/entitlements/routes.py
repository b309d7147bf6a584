"""HTTP routes of entitlements."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, get, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.types import ControllerRouterHandler
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app import pagination
from app.accounts.models import Organization
from app.auth.guards import authenticated
from app.deps import BEARER, Audit, Caller, Limit, Session
from app.pagination import decode_cursor, encode_cursor
from catalog.models import Product
from licensing.entitlements import service
from licensing.entitlements.models import Entitlement, EntitlementStatus
from licensing.entitlements.schemas import EntitlementOut, EntitlementPage, EntitlementQuota, StatusChangeIn


async def entitlement_out(session: AsyncSession, entitlement: Entitlement) -> EntitlementOut:
    product_slug = await session.scalar(select(Product.slug).where(Product.id == entitlement.product_id))
    buyer = await session.scalar(select(Organization.slug).where(Organization.id == entitlement.buyer_org_id))
    assert product_slug is not None
    assert buyer is not None
    return EntitlementOut(
        id=entitlement.id,
        status=entitlement.status,
        status_reason=entitlement.status_reason,
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


class EntitlementController(Controller):
    path = "/entitlements"
    tags = ["licensing"]
    security = BEARER
    guards = [authenticated]

    @get("/", summary="Entitlements: the buyer's own, and those granted for the caller's products")
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
        await service.expire_due(session)
        query = select(Entitlement).where(service.visible_entitlements(principal))
        if status is not None:
            query = query.where(Entitlement.status == status)
        if product is not None:
            query = query.where(Entitlement.product_id.in_(select(Product.id).where(Product.slug == product)))
        if (after := decode_cursor(cursor)) is not None:
            try:
                query = query.where(Entitlement.id < uuid.UUID(after))
            except ValueError:
                raise pagination.invalid_cursor() from None
        rows = list((await session.scalars(query.order_by(Entitlement.id.desc()).limit(limit + 1))).all())
        more = len(rows) > limit
        rows = rows[:limit]
        return EntitlementPage(
            items=[await entitlement_out(session, e) for e in rows],
            next_cursor=encode_cursor(str(rows[-1].id)) if more else None,
        )

    @get("/{entitlement_id:uuid}", summary="One entitlement with its terms and quota")
    async def read(self, session: Session, principal: Caller, entitlement_id: FromPath[uuid.UUID]) -> EntitlementOut:
        return await entitlement_out(session, await service.get_entitlement(session, principal, entitlement_id))

    @post("/{entitlement_id:uuid}/revoke", summary="Revoke an entitlement with a reason", status_code=200)
    async def revoke(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        entitlement_id: FromPath[uuid.UUID],
        data: JSONBody[StatusChangeIn],
    ) -> EntitlementOut:
        entitlement = await service.change_entitlement_status(
            session, audit_context, principal, entitlement_id, to="revoked", reason=data.reason
        )
        return await entitlement_out(session, entitlement)

    @post("/{entitlement_id:uuid}/suspend", summary="Suspend an entitlement with a reason", status_code=200)
    async def suspend(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        entitlement_id: FromPath[uuid.UUID],
        data: JSONBody[StatusChangeIn],
    ) -> EntitlementOut:
        entitlement = await service.change_entitlement_status(
            session, audit_context, principal, entitlement_id, to="suspended", reason=data.reason
        )
        return await entitlement_out(session, entitlement)

    @post("/{entitlement_id:uuid}/reinstate", summary="Reinstate a suspended entitlement", status_code=200)
    async def reinstate(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        entitlement_id: FromPath[uuid.UUID],
        data: JSONBody[StatusChangeIn],
    ) -> EntitlementOut:
        entitlement = await service.change_entitlement_status(
            session, audit_context, principal, entitlement_id, to="active", reason=data.reason
        )
        return await entitlement_out(session, entitlement)


route_handlers: list[ControllerRouterHandler] = [EntitlementController]
