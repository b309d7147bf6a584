"""Offers: the terms on which a provider makes a product available."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Integer,
    Numeric,
    String,
    Text,
    Uuid,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, server_now, sql_in, sql_subset, uuid_pk
from licensing.licences.models import USES

VERSION_SCOPES = ("latest", "all")


APPROVALS = ("automatic", "manual")


class Offer(Base):
    __tablename__ = "offers"
    __table_args__ = (
        CheckConstraint("price_amount >= 0", "price_not_negative"),
        CheckConstraint("price_amount <= 1000000000", "price_at_most_a_billion"),
        CheckConstraint("currency ~ '^[A-Z]{3}$'", "currency_format"),
        CheckConstraint("term_days BETWEEN 1 AND 3660", "term_range"),
        CheckConstraint("quota_downloads IS NULL OR quota_downloads > 0", "downloads_positive"),
        CheckConstraint("quota_bytes IS NULL OR quota_bytes > 0", "bytes_positive"),
        CheckConstraint(sql_in("versions", VERSION_SCOPES), "known_versions"),
        CheckConstraint(sql_in("approval", APPROVALS), "known_approval"),
        CheckConstraint(sql_subset("purposes", USES) + " AND cardinality(purposes) > 0", "known_purposes"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    product_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("products.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    licence_id: Mapped[str] = mapped_column(ForeignKey("licences.id"))
    price_amount: Mapped[decimal.Decimal] = mapped_column(Numeric(18, 2))
    currency: Mapped[str] = mapped_column(String(3))
    term_days: Mapped[int] = mapped_column(Integer)
    quota_downloads: Mapped[int | None] = mapped_column(BigInteger)
    quota_bytes: Mapped[int | None] = mapped_column(BigInteger)
    versions: Mapped[str] = mapped_column(String(10))
    approval: Mapped[str] = mapped_column(String(10))
    purposes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    target_org_ids: Mapped[list[uuid.UUID]] = mapped_column(ARRAY(Uuid))  # a private offer names its buyers
    created_at: Mapped[dt.datetime] = server_now()
    updated_at: Mapped[dt.datetime] = server_now()
    archived_at: Mapped[dt.datetime | None]
