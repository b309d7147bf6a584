"""Download grants: one authorised download of one file under one entitlement, and the bytes it served."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, sql_in, uuid_pk

DOWNLOAD_MODES = ("presigned", "proxy")


class DownloadGrant(Base):
    """One authorised download of one file under one entitlement.

    Granting charges the entitlement once; refreshing the URL or resuming the transfer within the grant's
    window charges nothing more.
    """

    __tablename__ = "download_grants"
    __table_args__ = (
        CheckConstraint(sql_in("mode", DOWNLOAD_MODES), "known_mode"),
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
    # The receipt's audit_event_hash: the content digest of the grant's audit event (app.audit.service
    # content_digest); for grants made before migration 0021, the event's chain hash.
    audit_hash: Mapped[str] = mapped_column(String(64))
