"""Request and response bodies of orders and access requests."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

import msgspec

from app.accounts.schemas import Reason, Strict
from catalog.search import Use
from licensing.offers.schemas import PriceOut


class OrderIn(Strict):
    offer_id: uuid.UUID
    buyer_org: Annotated[str, msgspec.Meta(min_length=2, max_length=63)]
    purpose: Use
    answers: Annotated[dict[str, Any], msgspec.Meta(max_length=50)] = msgspec.field(default_factory=dict)


class DecisionIn(Strict):
    """The body, and the reason in it, may be left out; a rejection's reason, when sent, must say something."""

    reason: Reason | None = None


class PaymentIn(Strict):
    reference: Annotated[str, msgspec.Meta(max_length=200)] = ""


class OrderOut(msgspec.Struct):
    id: uuid.UUID
    status: str
    entitlement_id: uuid.UUID | None
    offer_id: uuid.UUID
    product: str
    buyer_org: str
    purpose: str
    answers: dict[str, Any]
    price: PriceOut
    created_at: dt.datetime
    expires_at: dt.datetime | None
    decided_at: dt.datetime | None
    decision_reason: str | None
    paid_at: dt.datetime | None


class OrderPage(msgspec.Struct):
    items: list[OrderOut]
    next_cursor: str | None
