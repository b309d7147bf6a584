"""HTTP routes of orders and access requests, and the payment provider's webhook."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import hmac
import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter
from litestar.types import ControllerRouterHandler
from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from app import pagination
from app.accounts.models import Organization
from app.auth.guards import requires
from app.db import utcnow
from app.deps import BEARER, Audit, Caller, Limit, Session
from app.errors import PROBLEM_MEDIA_TYPE, Problem, ProblemError, not_found, unauthorized
from app.handlers import get, post
from app.openapi import problems
from app.validation import decode_json
from catalog.models import Product
from licensing.entitlements.models import Entitlement
from licensing.offers.models import Offer
from licensing.offers.schemas import PriceOut
from licensing.orders import service
from licensing.orders.models import Order, OrderStatus, status_at
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


def with_details(query: Select[Any]) -> Select[Any]:
    """``query`` (of orders) with what an answer shows beside the order, in the same statement."""
    return (
        query.join(Product, Product.id == Order.product_id)
        .join(Organization, Organization.id == Order.buyer_org_id)
        .join(Offer, Offer.id == Order.offer_id)
        .outerjoin(Entitlement, Entitlement.order_id == Order.id)
        .add_columns(Product.slug, Organization.slug, Offer.price_amount, Offer.currency, Entitlement.id)
    )


def order_out(row: Any, now: dt.datetime) -> OrderOut:
    """An answer from a row of ``with_details``; expiry as of ``now``."""
    order, product_slug, buyer, amount, currency, entitlement_id = row
    return OrderOut(
        id=order.id,
        status=status_at(order, now),
        entitlement_id=entitlement_id,
        offer_id=order.offer_id,
        product=product_slug,
        buyer_org=buyer,
        purpose=order.purpose,
        answers=order.form_answers,
        price=PriceOut(amount=str(amount), currency=currency),
        created_at=order.created_at,
        expires_at=order.expires_at,
        decided_at=order.decided_at,
        decision_reason=order.decision_reason,
        paid_at=order.paid_at,
    )


async def load_order(session: AsyncSession, order: Order) -> OrderOut:
    row = (await session.execute(with_details(select(Order).where(Order.id == order.id)))).one()
    return order_out(row, utcnow())


class OrderController(Controller):
    path = "/orders"
    tags = ["licensing"]
    security = BEARER

    @post(
        "/",
        summary="Order an offer or request access (needs an Idempotency-Key header)",
        status_code=201,
        guards=[requires("orders.place")],
        responses={
            200: ResponseSpec(
                OrderOut,
                description="The order this Idempotency-Key placed before with the same body, as it is now",
                generate_examples=False,
            ),
            400: ResponseSpec(
                Problem, description="Idempotency-Key missing or malformed", media_type=PROBLEM_MEDIA_TYPE
            ),
            409: ResponseSpec(
                Problem,
                description="The product is not published, or a current entitlement to the offer exists",
                media_type=PROBLEM_MEDIA_TYPE,
            ),
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
        if (shown := result.shown) is not None:
            row = (
                result.order,
                shown.product,
                shown.buyer_org,
                shown.price_amount,
                shown.currency,
                shown.entitlement_id,
            )
            return Response(order_out(row, utcnow()), status_code=201)
        return Response(await load_order(session, result.order), status_code=200)

    @get(
        "/",
        summary="Orders visible to the caller: their orgs' orders, and orders for their products",
        guards=[requires("orders.read")],
    )
    async def list(
        self,
        session: Session,
        principal: Caller,
        status: Annotated[OrderStatus | None, QueryParameter(description="only orders in this state")] = None,
        product: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Limit = 50,
    ) -> OrderPage:
        query = with_details(service.list_orders_query(principal, status, product))
        rows, next_cursor = await pagination.page(
            session, query, (Order.created_at, Order.id), cursor, limit, descending=True
        )
        now = utcnow()
        return OrderPage(items=[order_out(row, now) for row in rows], next_cursor=next_cursor)

    @get("/{order_id:uuid}", summary="One order", guards=[requires("orders.read")])
    async def read(self, session: Session, principal: Caller, order_id: FromPath[uuid.UUID]) -> OrderOut:
        order = await service.get_order(session, principal, order_id)
        return await load_order(session, order)

    @post(
        "/{order_id:uuid}/approve",
        summary="Approve an access request (the provider's owners and admins)",
        status_code=200,
        guards=[requires("orders.decide")],
        responses=problems({409: "The order is not pending approval (`order-not-pending`)"}),
    )
    async def approve(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        order_id: FromPath[uuid.UUID],
        data: JSONBody[DecisionIn | None] = None,
    ) -> OrderOut:
        order = await service.decide_order(
            session, audit_context, principal, order_id, approve=True, reason=data.reason if data else None
        )
        return await load_order(session, order)

    @post(
        "/{order_id:uuid}/reject",
        summary="Reject an access request with a reason (at most 500 characters)",
        status_code=200,
        guards=[requires("orders.decide")],
        responses=problems({409: "The order is not pending approval (`order-not-pending`)"}),
    )
    async def reject(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        order_id: FromPath[uuid.UUID],
        data: JSONBody[DecisionIn | None] = None,
    ) -> OrderOut:
        order = await service.decide_order(
            session, audit_context, principal, order_id, approve=False, reason=data.reason if data else None
        )
        return await load_order(session, order)

    @post(
        "/{order_id:uuid}/cancel",
        summary="Cancel an order not yet fulfilled (the buyer)",
        status_code=200,
        guards=[requires("orders.cancel")],
        responses=problems({409: "The order is final and can no longer be cancelled (`order-final`)"}),
    )
    async def cancel(
        self, session: Session, audit_context: Audit, principal: Caller, order_id: FromPath[uuid.UUID]
    ) -> OrderOut:
        return await load_order(session, await service.cancel_order(session, audit_context, principal, order_id))

    @post(
        "/{order_id:uuid}/confirm-payment",
        summary="Confirm payment of an order (platform admins)",
        status_code=200,
        guards=[requires("orders.confirm_payment")],
        responses=problems({409: "The order is not awaiting payment (`order-not-awaiting-payment`)"}),
    )
    async def confirm_payment(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        order_id: FromPath[uuid.UUID],
        data: JSONBody[PaymentIn | None] = None,
    ) -> OrderOut:
        order = await service.confirm_payment(
            session, audit_context, order_id, reference=data.reference if data else "", by=principal.user_id
        )
        return await load_order(session, order)


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
    guards=[requires("public")],  # authenticated by the body's HMAC signature
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
