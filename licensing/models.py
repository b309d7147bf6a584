"""Licences with AI-use terms, offers, orders (access requests) and the entitlements they grant."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any, Literal, get_args

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, server_now, uuid_pk
from catalog.search import USES as CATALOGUE_USES

USES: tuple[str, ...] = CATALOGUE_USES
DUTIES = ("attribution", "share_alike", "usage_reporting", "delete_on_termination")
VERSION_SCOPES = ("latest", "all")
APPROVALS = ("automatic", "manual")
OrderStatus = Literal["pending_approval", "awaiting_payment", "fulfilled", "rejected", "cancelled", "expired"]
ORDER_STATUSES: tuple[str, ...] = get_args(OrderStatus)
EntitlementStatus = Literal["active", "suspended", "revoked", "expired"]
ENTITLEMENT_STATUSES: tuple[str, ...] = get_args(EntitlementStatus)
DOWNLOAD_MODES = ("presigned", "proxy")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _subset(column: str, values: tuple[str, ...]) -> str:
    return f"{column} <@ ARRAY[{', '.join(repr(v) for v in values)}]::text[]"


class Licence(Base):
    """A licence and its machine-readable AI-use terms. Seeded ones are keyed by their SPDX id; custom ones
    by a ``LicenseRef-`` id owned by a provider organisation."""

    __tablename__ = "licences"
    __table_args__ = (
        CheckConstraint(_subset("uses", USES), "known_uses"),
        CheckConstraint(_subset("duties", DUTIES), "known_duties"),
        CheckConstraint("id ~ '^[A-Za-z0-9][A-Za-z0-9.+-]{0,199}$'", "id_format"),
        CheckConstraint("owner_org_id IS NOT NULL OR id NOT LIKE 'LicenseRef-%'", "custom_has_owner"),
        CheckConstraint("text_sha256 IS NULL OR text_sha256 ~ '^[0-9a-f]{64}$'", "text_sha256_hex"),
    )

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str] = mapped_column(String(300))
    spdx: Mapped[str | None] = mapped_column(String(300))
    url: Mapped[str | None] = mapped_column(String(2000))
    text_sha256: Mapped[str | None] = mapped_column(String(64))
    uses: Mapped[list[str]] = mapped_column(ARRAY(Text))
    duties: Mapped[list[str]] = mapped_column(ARRAY(Text))
    territories: Mapped[list[str]] = mapped_column(ARRAY(Text))  # ISO 3166-1 alpha-2; empty means worldwide
    note: Mapped[str] = mapped_column(Text, default="")
    owner_org_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("organizations.id"))
    created_at: Mapped[dt.datetime] = server_now()
    updated_at: Mapped[dt.datetime] = server_now()


class Offer(Base):
    __tablename__ = "offers"
    __table_args__ = (
        CheckConstraint("price_amount >= 0", "price_not_negative"),
        CheckConstraint("currency ~ '^[A-Z]{3}$'", "currency_format"),
        CheckConstraint("term_days BETWEEN 1 AND 3660", "term_range"),
        CheckConstraint("quota_downloads IS NULL OR quota_downloads > 0", "downloads_positive"),
        CheckConstraint("quota_bytes IS NULL OR quota_bytes > 0", "bytes_positive"),
        CheckConstraint(_in("versions", VERSION_SCOPES), "known_versions"),
        CheckConstraint(_in("approval", APPROVALS), "known_approval"),
        CheckConstraint(_subset("purposes", USES) + " AND cardinality(purposes) > 0", "known_purposes"),
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


class Order(Base):
    """An order or access request; created once per ``Idempotency-Key`` of its creator."""

    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("created_by", "idempotency_key"),
        CheckConstraint(_in("status", ORDER_STATUSES), "known_status"),
        CheckConstraint(_in("purpose", USES), "known_purpose"),
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


class Entitlement(Base):
    """The licence grant an order produced, with the terms exactly as accepted.

    The quota check constraints make overshooting impossible even for concurrent grants.
    """

    __tablename__ = "entitlements"
    __table_args__ = (
        CheckConstraint(_in("status", ENTITLEMENT_STATUSES), "known_status"),
        CheckConstraint("valid_until > valid_from", "valid_period"),
        CheckConstraint("downloads_used >= 0 AND bytes_used >= 0", "usage_not_negative"),
        CheckConstraint("downloads_limit IS NULL OR downloads_used <= downloads_limit", "downloads_within_limit"),
        CheckConstraint("bytes_limit IS NULL OR bytes_used <= bytes_limit", "bytes_within_limit"),
        CheckConstraint("(status = 'revoked') = (revoked_at IS NOT NULL)", "revoked_when_revoked"),
        Index("ix_entitlements_buyer_org_id", "buyer_org_id"),
        Index("ix_entitlements_product_id", "product_id"),
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


class DownloadGrant(Base):
    """One authorised download of one file under one entitlement.

    Granting charges the entitlement once; refreshing the URL or resuming the transfer within the grant's
    window charges nothing more.
    """

    __tablename__ = "download_grants"
    __table_args__ = (
        CheckConstraint(_in("mode", DOWNLOAD_MODES), "known_mode"),
        CheckConstraint("bytes_served >= 0", "served_not_negative"),
        CheckConstraint("window_ends_at > granted_at", "window_after_grant"),
        Index("ix_download_grants_entitlement_id_granted_at", "entitlement_id", "granted_at"),
        Index("ix_download_grants_refresh", "entitlement_id", "file_id", "user_id", "window_ends_at"),
        Index("ix_download_grants_sha256", "sha256"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    entitlement_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("entitlements.id"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("api_keys.id"))
    file_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("version_files.id"))
    version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("product_versions.id"))
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    purpose: Mapped[str] = mapped_column(String(40))
    mode: Mapped[str] = mapped_column(String(10))
    manifest_digest: Mapped[str] = mapped_column(String(71))
    granted_at: Mapped[dt.datetime]
    window_ends_at: Mapped[dt.datetime]
    url_expires_at: Mapped[dt.datetime]
    refreshed: Mapped[int] = mapped_column(Integer, default=0)
    bytes_charged: Mapped[int] = mapped_column(BigInteger)
    bytes_served: Mapped[int] = mapped_column(BigInteger, default=0)
    audit_hash: Mapped[str] = mapped_column(String(64))
