"""Entitlements: the licence grant an order produces, with an immutable snapshot of the terms accepted."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal, get_args

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    Text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, server_now, sql_in, uuid_pk

EntitlementStatus = Literal["active", "suspended", "revoked", "expired"]


ENTITLEMENT_STATUSES: tuple[str, ...] = get_args(EntitlementStatus)
# Statuses of an entitlement still within its term: at most one per buyer org and offer; past valid_until
# it reads as expired, whether or not the sweep has recorded it yet.
CURRENT_STATUSES = ("active", "suspended")


class Entitlement(Base):
    """The licence grant an order produced, with the terms exactly as accepted.

    The quota check constraints make overshooting impossible even for concurrent grants.
    """

    __tablename__ = "entitlements"
    __table_args__ = (
        CheckConstraint(sql_in("status", ENTITLEMENT_STATUSES), "known_status"),
        CheckConstraint("valid_until > valid_from", "valid_period"),
        CheckConstraint("downloads_used >= 0 AND bytes_used >= 0", "usage_not_negative"),
        CheckConstraint("downloads_limit IS NULL OR downloads_used <= downloads_limit", "downloads_within_limit"),
        CheckConstraint("bytes_limit IS NULL OR bytes_used <= bytes_limit", "bytes_within_limit"),
        CheckConstraint("(status = 'revoked') = (revoked_at IS NOT NULL)", "revoked_when_revoked"),
        Index("ix_entitlements_buyer_org_id", "buyer_org_id"),
        Index("ix_entitlements_product_id", "product_id"),
        # One current (active or suspended) entitlement per buyer org and offer.
        Index(
            "uq_entitlements_current_offer",
            "buyer_org_id",
            "offer_id",
            unique=True,
            postgresql_where="status IN ('active', 'suspended')",
        ),
        # The sweep's search for entitlements past their term.
        Index(
            "ix_entitlements_valid_until_current", "valid_until", postgresql_where="status IN ('active', 'suspended')"
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.id"), unique=True)
    buyer_org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    product_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("products.id"))
    offer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("offers.id"))
    licence_id: Mapped[str] = mapped_column(ForeignKey("licences.id"))
    terms: Mapped[dict[str, Any]] = mapped_column(JSONB)  # licence and offer as accepted
    terms_digest: Mapped[str] = mapped_column(String(71))
    purposes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    versions: Mapped[str] = mapped_column(String(10))
    valid_from: Mapped[dt.datetime]
    valid_until: Mapped[dt.datetime]
    downloads_limit: Mapped[int | None] = mapped_column(BigInteger)
    downloads_used: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_limit: Mapped[int | None] = mapped_column(BigInteger)
    bytes_used: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(10), default="active")
    status_reason: Mapped[str | None] = mapped_column(String(500))
    suspended_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = server_now()


def status_at(entitlement: Entitlement, now: dt.datetime) -> tuple[str, str | None]:
    """The status and reason as of ``now``: past its term, a current entitlement is expired."""
    if entitlement.status in CURRENT_STATUSES and entitlement.valid_until <= now:
        return "expired", "term ended"
    return entitlement.status, entitlement.status_reason
