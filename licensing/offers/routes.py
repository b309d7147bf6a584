"""HTTP routes of a product's offers and its access-request transparency figures."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import msgspec
from litestar import Controller, get, patch, post
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.types import ControllerRouterHandler
from sqlalchemy.ext.asyncio import AsyncSession

from app import pagination
from app.auth.guards import authenticated
from app.deps import BEARER, Audit, Caller, Limit, OptionalCaller, Session
from app.pagination import decode_cursor, encode_cursor
from licensing.offers import service
from licensing.offers.models import Offer
from licensing.offers.schemas import OfferIn, OfferOut, OfferPage, OfferPatch, PriceOut, QuotaOut, TransparencyOut
from licensing.orders import service as orders_service


async def offer_out(session: AsyncSession, offer: Offer, product_slug: str) -> OfferOut:
    return OfferOut(
        id=offer.id,
        product=product_slug,
        name=offer.name,
        licence_id=offer.licence_id,
        price=PriceOut(amount=str(offer.price_amount), currency=offer.currency),
        term_days=offer.term_days,
        quota=QuotaOut(downloads=offer.quota_downloads, bytes=offer.quota_bytes),
        versions=offer.versions,
        approval=offer.approval,
        purposes=list(offer.purposes),
        target_orgs=await service.org_slugs(session, offer.target_org_ids),
        created_at=offer.created_at,
        updated_at=offer.updated_at,
        archived_at=offer.archived_at,
    )


class OfferController(Controller):
    path = "/products/{slug:str}/offers"
    tags = ["licensing"]

    @post(
        "/",
        summary="Offer a product under a licence, price, term and quota",
        status_code=201,
        security=BEARER,
        guards=[authenticated],
    )
    async def create(
        self, session: Session, audit_context: Audit, principal: Caller, slug: FromPath[str], data: JSONBody[OfferIn]
    ) -> OfferOut:
        offer = await service.create_offer(
            session, audit_context, principal, slug, msgspec.to_builtins(data, builtin_types=(decimal.Decimal,))
        )
        return await offer_out(session, offer, slug)

    @get("/", summary="The offers of a product visible to the caller, oldest first")
    async def list(
        self,
        session: Session,
        optional_principal: OptionalCaller,
        slug: FromPath[str],
        cursor: FromQuery[str | None] = None,
        limit: Limit = 50,
    ) -> OfferPage:
        after = None
        if (text := decode_cursor(cursor)) is not None:
            try:
                created, offer_id = text.split("|")
                after = (dt.datetime.fromisoformat(created), uuid.UUID(offer_id))
            except ValueError:
                raise pagination.invalid_cursor() from None
        offers, product_slug = await service.list_offers(
            session, optional_principal, slug, after=after, limit=limit + 1
        )
        more = len(offers) > limit
        offers = offers[:limit]
        return OfferPage(
            items=[await offer_out(session, o, product_slug) for o in offers],
            next_cursor=encode_cursor(f"{offers[-1].created_at.isoformat()}|{offers[-1].id}") if more else None,
        )

    @patch(
        "/{offer_id:uuid}",
        summary="Change an offer for future orders (granted entitlements keep their terms)",
        security=BEARER,
        guards=[authenticated],
    )
    async def update(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        slug: FromPath[str],
        offer_id: FromPath[uuid.UUID],
        data: JSONBody[OfferPatch],
    ) -> OfferOut:
        changes = {
            k: msgspec.to_builtins(v, builtin_types=(decimal.Decimal,))
            for k, v in msgspec.structs.asdict(data).items()
            if v is not msgspec.UNSET
        }
        offer = await service.update_offer(session, audit_context, principal, slug, offer_id, changes)
        return await offer_out(session, offer, slug)

    @get("/transparency", summary="Access requests for this product: count, approval rate, time to decision")
    async def transparency(
        self, session: Session, optional_principal: OptionalCaller, slug: FromPath[str]
    ) -> TransparencyOut:
        return TransparencyOut(**await orders_service.transparency(session, optional_principal, slug))


route_handlers: list[ControllerRouterHandler] = [OfferController]
