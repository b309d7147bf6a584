"""HTTP routes of orders and access requests, and the payment provider's webhook."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import hmac
import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter
from litestar.types import ControllerRouterHandler
from sqlalchemy import literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app import pagination
from app.accounts.models import Organization
from app.auth.guards import authenticated, requires_platform_role
from app.deps import BEARER, Audit, Caller, Limit, Session
from app.errors import PROBLEM_MEDIA_TYPE, Problem, ProblemError, not_found, unauthorized
from app.openapi import problems
from app.pagination import decode_cursor, encode_cursor
from app.validation import decode_json
from catalog.models import Product
from licensing.offers.models import Offer
from licensing.offers.schemas import PriceOut
from licensing.orders import service
from licensing.orders.models import Order, OrderStatus
from licensing.orders.schemas import DecisionIn, OrderIn, OrderOut, OrderPage, PaymentIn

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
                raise pagination.invalid_cursor() from None
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
    responses=problems(
        {
            404: "The payment webhook is not configured (no CORPORA_PAYMENT_WEBHOOK_SECRET), or the order is unknown",
            409: "The payment does not match the order's price, or the order is not awaiting payment",
        }
    ),
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


route_handlers: list[ControllerRouterHandler] = [OrderController, payment_webhook]
