"""HTTP routes of a product's offers and its access-request transparency figures."""

from __future__ import annotations

import decimal
import uuid

import msgspec
from litestar import Controller
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.types import ControllerRouterHandler

from app.auth.guards import requires
from app.deps import BEARER, Audit, Caller, Limit, OptionalCaller, Session
from app.handlers import get, patch, post
from app.openapi import problems
from licensing.offers import service
from licensing.offers.models import Offer
from licensing.offers.schemas import OfferIn, OfferOut, OfferPage, OfferPatch, PriceOut, QuotaOut, TransparencyOut
from licensing.orders import service as orders_service


def offer_out(offer: Offer, product_slug: str, slugs: dict[uuid.UUID, str]) -> OfferOut:
    """An answer; ``slugs`` names the target orgs (``service.org_slugs``)."""
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
        target_orgs=[slugs[i] for i in offer.target_org_ids if i in slugs],
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
        guards=[requires("catalog.write")],
        responses=problems({409: "The offer conflicts with the product's state or another offer"}),
    )
    async def create(
        self, session: Session, audit_context: Audit, principal: Caller, slug: FromPath[str], data: JSONBody[OfferIn]
    ) -> OfferOut:
        offer = await service.create_offer(
            session, audit_context, principal, slug, msgspec.to_builtins(data, builtin_types=(decimal.Decimal,))
        )
        return offer_out(offer, slug, await service.org_slugs(session, offer.target_org_ids))

    @get("/", summary="The offers of a product visible to the caller, oldest first", guards=[requires("catalog.read")])
    async def list(
        self,
        session: Session,
        optional_principal: OptionalCaller,
        slug: FromPath[str],
        cursor: FromQuery[str | None] = None,
        limit: Limit = 50,
    ) -> OfferPage:
        offers, next_cursor = await service.list_offers(session, optional_principal, slug, cursor=cursor, limit=limit)
        slugs = await service.org_slugs(session, (i for o in offers for i in o.target_org_ids))
        return OfferPage(items=[offer_out(o, slug, slugs) for o in offers], next_cursor=next_cursor)

    @patch(
        "/{offer_id:uuid}",
        summary="Change an offer for future orders (granted entitlements keep their terms)",
        security=BEARER,
        guards=[requires("catalog.write")],
        responses=problems({409: "The offer conflicts with the product's state or another offer"}),
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
        return offer_out(offer, slug, await service.org_slugs(session, offer.target_org_ids))

    @get(
        "/transparency",
        summary="Access requests for this product: count, approval rate, time to decision",
        guards=[requires("catalog.read")],
    )
    async def transparency(
        self, session: Session, optional_principal: OptionalCaller, slug: FromPath[str]
    ) -> TransparencyOut:
        return TransparencyOut(**await orders_service.transparency(session, optional_principal, slug))


route_handlers: list[ControllerRouterHandler] = [OfferController]
