"""Orders and access requests: a buyer org's request for an offer, for a declared purpose."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal, get_args

from sqlalchemy import (
    CheckConstraint,
    ColumnElement,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
    and_,
    case,
    literal,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, server_now, sql_in, uuid_pk
from licensing.licences.models import USES

OrderStatus = Literal["pending_approval", "awaiting_payment", "fulfilled", "rejected", "cancelled", "expired"]


ORDER_STATUSES: tuple[str, ...] = get_args(OrderStatus)


class Order(Base):
    """An order or access request; created once per ``Idempotency-Key`` of its creator."""

    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("created_by", "idempotency_key"),
        CheckConstraint(sql_in("status", ORDER_STATUSES), "known_status"),
        CheckConstraint(sql_in("purpose", USES), "known_purpose"),
        CheckConstraint("decision_reason IS NULL OR length(decision_reason) <= 500", "reason_length"),
        Index("ix_orders_buyer_org_id_created_at", "buyer_org_id", "created_at"),
        Index("ix_orders_product_id_status", "product_id", "status"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    buyer_org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    offer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("offers.id"))
    product_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("products.id"))
    purpose: Mapped[str] = mapped_column(String(40))
    form_answers: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    status: Mapped[str] = mapped_column(String(20))
    idempotency_key: Mapped[str] = mapped_column(String(200))
    request_sha256: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = server_now()
    expires_at: Mapped[dt.datetime | None]
    decided_at: Mapped[dt.datetime | None]
    decided_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    decision_reason: Mapped[str | None] = mapped_column(String(500))
    paid_at: Mapped[dt.datetime | None]
    payment_reference: Mapped[str | None] = mapped_column(String(200))


OPEN_ORDER_STATUSES = ("pending_approval", "awaiting_payment")


def status_at(order: Order, now: dt.datetime) -> str:
    """The status as of ``now``: an open order past ``expires_at`` is expired, recorded by the sweep or not."""
    if order.status in OPEN_ORDER_STATUSES and order.expires_at is not None and order.expires_at <= now:
        return "expired"
    return order.status


def status_now(now: dt.datetime) -> ColumnElement[str]:
    """``status_at`` in SQL, for filters."""
    due = and_(Order.status.in_(OPEN_ORDER_STATUSES), Order.expires_at <= now)
    return case((due, literal("expired")), else_=Order.status)
