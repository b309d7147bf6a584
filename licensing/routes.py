"""HTTP routes of licensing: licences, offers, orders and access requests, entitlements, licence checks."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import hmac
import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, patch, post
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter
from litestar.types import ControllerRouterHandler
from sqlalchemy import literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.models import Organization
from app.auth.guards import OPEN_TO_AUDITORS, authenticated, requires_platform_role
from app.deps import Audit, Caller, OptionalCaller, Session
from app.errors import PROBLEM_MEDIA_TYPE, Problem, ProblemError, not_found, unauthorized
from app.validation import decode_json
from catalog.models import Product
from licensing import service, terms
from licensing.models import Entitlement, EntitlementStatus, Licence, Offer, Order, OrderStatus
from licensing.schemas import (
    CheckIn,
    CheckOut,
    DecisionIn,
    EntitlementOut,
    EntitlementPage,
    EntitlementQuota,
    ItemVerdictOut,
    LicenceIn,
    LicenceOut,
    LicencePage,
    OfferIn,
    OfferOut,
    OfferPage,
    OfferPatch,
    OrderIn,
    OrderOut,
    OrderPage,
    PaymentIn,
    PriceOut,
    QuotaOut,
    StatusChangeIn,
    TransparencyOut,
)

BEARER: list[dict[str, list[str]]] = [{"BearerToken": []}]
Limit = Annotated[int, QueryParameter(ge=1, le=100)]
# Checked in the handler rather than by the decoder: a missing or malformed key is a 400, not a 422 (the
# IETF Idempotency-Key draft), and 422 stays the answer for a key reused with another body.
IDEMPOTENCY_KEY = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        required=True,
        description="unique per order, 8 to 200 characters; retries reuse it",
    ),
]
PAYMENT_SIGNATURE_HEADER = "X-Corpora-Signature"


def encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        # validate=True: characters outside the alphabet are an error, not silently dropped.
        return base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise service.invalid_cursor() from None


def licence_out(licence: Licence, org: str | None) -> LicenceOut:
    return LicenceOut(
        id=licence.id,
        name=licence.name,
        spdx=licence.spdx,
        url=licence.url,
        text_sha256=licence.text_sha256,
        uses=list(licence.uses),
        duties=list(licence.duties),
        territories=list(licence.territories),
        note=licence.note,
        custom=licence.owner_org_id is not None,
        org=org,
    )


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


async def order_out(session: AsyncSession, order: Order) -> OrderOut:
    product_slug = await session.scalar(select(Product.slug).where(Product.id == order.product_id))
    buyer = await session.scalar(select(Organization.slug).where(Organization.id == order.buyer_org_id))
    offer = await session.get(Offer, order.offer_id)
    assert product_slug is not None
    assert buyer is not None
    assert offer is not None
    return OrderOut(
        id=order.id,
        status=order.status,
        entitlement_id=await service.entitlement_for_order(session, order.id),
        offer_id=order.offer_id,
        product=product_slug,
        buyer_org=buyer,
        purpose=order.purpose,
        answers=order.form_answers,
        price=PriceOut(amount=str(offer.price_amount), currency=offer.currency),
        created_at=order.created_at,
        expires_at=order.expires_at,
        decided_at=order.decided_at,
        decision_reason=order.decision_reason,
        paid_at=order.paid_at,
    )


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


class LicenceController(Controller):
    path = "/licences"
    tags = ["licensing"]

    @get("/", summary="The licence catalogue: seeded SPDX licences and providers' custom licences")
    async def list(self, session: Session, cursor: FromQuery[str | None] = None, limit: Limit = 50) -> LicencePage:
        rows = await service.list_licences(session, after=decode_cursor(cursor), limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return LicencePage(
            items=[licence_out(licence, org) for licence, org in rows],
            next_cursor=encode_cursor(rows[-1][0].id) if more and rows else None,
        )

    @post(
        "/",
        summary="Add a custom licence with its AI-use terms",
        status_code=201,
        security=BEARER,
        guards=[authenticated],
    )
    async def create(
        self, session: Session, audit_context: Audit, principal: Caller, data: JSONBody[LicenceIn]
    ) -> LicenceOut:
        """The licence gets the id ``LicenseRef-<org>-<name>``; an optional ``spdx`` expression is validated."""
        licence, org = await service.create_licence(session, audit_context, principal, msgspec.structs.asdict(data))
        return licence_out(licence, org)

    @get("/{licence_id:str}", summary="One licence and its AI-use terms")
    async def read(self, session: Session, licence_id: FromPath[str]) -> LicenceOut:
        licence, org = await service.get_licence(session, licence_id)
        return licence_out(licence, org)

    @get("/{licence_id:str}/odrl", summary="The licence as an ODRL 2.2 policy", media_type="application/ld+json")
    async def odrl(
        self, request: Request[Any, Any, Any], session: Session, licence_id: FromPath[str]
    ) -> dict[str, Any]:
        """AI uses are actions of the profile ``https://corpora.dev/odrl/ai-use``; uses not granted are
        prohibitions; duties attach to every permission."""
        licence, _ = await service.get_licence(session, licence_id)
        return terms.odrl_policy(service.licence_dict(licence), str(request.base_url).rstrip("/"))


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
                raise service.invalid_cursor() from None
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
        return TransparencyOut(**await service.transparency(session, optional_principal, slug))


class OrderController(Controller):
    path = "/orders"
    tags = ["licensing"]
    security = BEARER
    guards = [authenticated]

    @post(
        "/",
        summary="Order an offer or request access (needs an Idempotency-Key header)",
        status_code=201,
        responses={
            400: ResponseSpec(
                Problem, description="Idempotency-Key missing or malformed", media_type=PROBLEM_MEDIA_TYPE
            )
        },
    )
    async def create(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        data: JSONBody[OrderIn],
        idempotency_key: IDEMPOTENCY_KEY = None,
    ) -> Response[OrderOut]:
        """The same key with the same body returns the same order (200); with another body it is refused (422).
        Free offers with automatic approval are fulfilled at once; paid ones wait for payment; manual ones for
        the provider's decision."""
        if idempotency_key is None or not 8 <= len(idempotency_key) <= 200:
            raise ProblemError(
                400,
                "idempotency-key-required",
                "Idempotency-Key required",
                "send an Idempotency-Key header of 8 to 200 characters, the same for every retry of this order",
            )
        result = await service.place_order(
            session,
            audit_context,
            principal,
            idempotency_key=idempotency_key,
            offer_id=data.offer_id,
            buyer_org=data.buyer_org,
            purpose=data.purpose,
            answers=data.answers,
        )
        return Response(await order_out(session, result.order), status_code=201 if result.created else 200)

    @get("/", summary="Orders visible to the caller: their orgs' orders, and orders for their products")
    async def list(
        self,
        session: Session,
        principal: Caller,
        status: Annotated[OrderStatus | None, QueryParameter(description="only orders in this state")] = None,
        product: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Limit = 50,
    ) -> OrderPage:
        await service.expire_due_requests(session)
        query = service.list_orders_query(principal, status, product).order_by(Order.created_at.desc(), Order.id.desc())
        if (after := decode_cursor(cursor)) is not None:
            try:
                created, order_id = after.split("|")
                query = query.where(
                    tuple_(Order.created_at, Order.id)
                    < tuple_(literal(dt.datetime.fromisoformat(created)), literal(uuid.UUID(order_id)))
                )
            except ValueError:
                raise service.invalid_cursor() from None
        orders = list((await session.scalars(query.limit(limit + 1))).all())
        more = len(orders) > limit
        orders = orders[:limit]
        return OrderPage(
            items=[await order_out(session, o) for o in orders],
            next_cursor=encode_cursor(f"{orders[-1].created_at.isoformat()}|{orders[-1].id}") if more else None,
        )

    @get("/{order_id:uuid}", summary="One order")
    async def read(self, session: Session, principal: Caller, order_id: FromPath[uuid.UUID]) -> OrderOut:
        return await order_out(session, await service.get_order(session, principal, order_id))

    @post(
        "/{order_id:uuid}/approve",
        summary="Approve an access request (the provider's owners and admins)",
        status_code=200,
    )
    async def approve(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        order_id: FromPath[uuid.UUID],
        data: JSONBody[DecisionIn],
    ) -> OrderOut:
        order = await service.decide_order(
            session, audit_context, principal, order_id, approve=True, reason=data.reason
        )
        return await order_out(session, order)

    @post(
        "/{order_id:uuid}/reject",
        summary="Reject an access request with a reason (at most 500 characters)",
        status_code=200,
    )
    async def reject(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        order_id: FromPath[uuid.UUID],
        data: JSONBody[DecisionIn],
    ) -> OrderOut:
        order = await service.decide_order(
            session, audit_context, principal, order_id, approve=False, reason=data.reason
        )
        return await order_out(session, order)

    @post("/{order_id:uuid}/cancel", summary="Cancel an order not yet fulfilled (the buyer)", status_code=200)
    async def cancel(
        self, session: Session, audit_context: Audit, principal: Caller, order_id: FromPath[uuid.UUID]
    ) -> OrderOut:
        return await order_out(session, await service.cancel_order(session, audit_context, principal, order_id))

    @post(
        "/{order_id:uuid}/confirm-payment",
        summary="Confirm payment of an order (platform admins)",
        status_code=200,
        guards=[requires_platform_role("admin")],
    )
    async def confirm_payment(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        order_id: FromPath[uuid.UUID],
        data: JSONBody[PaymentIn],
    ) -> OrderOut:
        order = await service.confirm_payment(
            session, audit_context, order_id, reference=data.reference, by=principal.user_id
        )
        return await order_out(session, order)


class PaymentWebhookIn(msgspec.Struct, forbid_unknown_fields=True):
    order_id: uuid.UUID
    reference: Annotated[str, msgspec.Meta(max_length=200)]
    status: Annotated[str, msgspec.Meta(max_length=50)]
    # What the provider collected; when given, it must be the order's price.
    amount: decimal.Decimal | None = None
    currency: Annotated[str, msgspec.Meta(max_length=3)] | None = None


@post(
    "/payments/webhook",
    summary="Payment provider callback, signed with HMAC-SHA256",
    status_code=200,
    tags=["licensing"],
)
async def payment_webhook(
    request: Request[Any, Any, Any],
    session: Session,
    audit_context: Audit,
    state: State,
    signature: Annotated[
        str, HeaderParameter(name=PAYMENT_SIGNATURE_HEADER, description="hex HMAC-SHA256 of the body")
    ],
) -> dict[str, str]:
    """Marks an order paid when the body's HMAC-SHA256 under ``CORPORA_PAYMENT_WEBHOOK_SECRET`` matches. A
    payment whose ``amount`` or ``currency`` differs from the order's price is refused (409 ``payment-mismatch``)
    and changes nothing."""
    secret: str | None = state.settings.payment_webhook_secret
    body = await request.body()
    if not secret:
        raise not_found("payment webhook")
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature.removeprefix("sha256=")):
        raise unauthorized("the webhook signature does not match")
    event: PaymentWebhookIn = decode_json(body, PaymentWebhookIn)
    if event.status != "paid":
        return {"status": "ignored"}
    order = await service.confirm_payment(
        session,
        audit_context,
        event.order_id,
        reference=event.reference,
        by=None,
        collected=service.Collected(event.amount, event.currency),
    )
    return {"status": order.status}


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
                raise service.invalid_cursor() from None
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


@post(
    "/licensing/check",
    summary="Whether a combination of corpus versions may be used for a purpose",
    status_code=200,
    tags=["licensing"],
    opt={OPEN_TO_AUDITORS: True},
)
async def licence_check(session: Session, optional_principal: OptionalCaller, data: JSONBody[CheckIn]) -> CheckOut:
    """Per item: allowed or not and why; for the whole: accumulated duties (attribution list, share-alike) and
    conflicts between the items' terms. An item without ``version`` means its latest published version."""
    result, _ = await service.licence_check(
        session, optional_principal, [(i.product, i.version) for i in data.items], data.use, data.territory
    )
    return CheckOut(
        allowed=result.allowed,
        use=data.use,
        territory=data.territory,
        items=[ItemVerdictOut(v.product, v.version, v.licence_id, v.allowed, v.reason, v.duties) for v in result.items],
        duties=result.duties,
        conflicts=result.conflicts,
    )


route_handlers: list[ControllerRouterHandler] = [
    LicenceController,
    OfferController,
    OrderController,
    EntitlementController,
    payment_webhook,
    licence_check,
]
