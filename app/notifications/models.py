"""Notifications (an org's inbox), webhook endpoints, their deliveries and every delivery attempt."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, server_now, uuid_pk


class EventType(enum.StrEnum):
    ORDER_CREATED = "order.created"
    ORDER_APPROVED = "order.approved"
    ORDER_REJECTED = "order.rejected"
    ORDER_FULFILLED = "order.fulfilled"
    ENTITLEMENT_REVOKED = "entitlement.revoked"
    ENTITLEMENT_EXPIRING = "entitlement.expiring"
    VERSION_SUBMITTED = "version.submitted"
    VERSION_PUBLISHED = "version.published"
    VERSION_REJECTED = "version.rejected"
    TAKEDOWN_RECEIVED = "takedown.received"
    TAKEDOWN_UPHELD = "takedown.upheld"
    MODEL_FLAGGED = "model.flagged"
    QUOTA_THRESHOLD = "quota.threshold"
    WEBHOOK_DISABLED = "webhook.disabled"


class Notification(Base):
    """One event as one org sees it: its inbox entry, and the message its webhooks receive."""

    __tablename__ = "notifications"
    __table_args__ = (
        Index("ix_notifications_org_id_created_at", "org_id", "created_at", "id"),
        # An event that must reach an org once (a threshold crossed, an end approaching) names itself here.
        Index("uq_notifications_org_id_once_key", "org_id", "once_key", unique=True),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    type: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)
    once_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = server_now()


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        CheckConstraint("cardinality(events) > 0", "has_events"),
        CheckConstraint("url ~ '^https?://'", "http_url"),
        Index("ix_webhook_endpoints_org_id", "org_id", postgresql_where="deleted_at IS NULL"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(ARRAY(String(64)))
    description: Mapped[str | None] = mapped_column(String(500))
    # The signing key is needed in clear to sign (HMAC); it is shown to its org once and never listed.
    secret: Mapped[str] = mapped_column(String(100))
    created_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = server_now()
    # The first failed attempt since the last success; failing for a day disables the endpoint.
    failing_since: Mapped[dt.datetime | None]
    disabled_at: Mapped[dt.datetime | None]
    deleted_at: Mapped[dt.datetime | None]


class WebhookDelivery(Base):
    """One notification to one endpoint. Pending until ``succeeded_at`` or ``failed_at`` (given up)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint("succeeded_at IS NULL OR failed_at IS NULL", "one_outcome"),
        CheckConstraint("attempts >= 0", "attempts_counted"),
        Index("ix_webhook_deliveries_endpoint_id_created_at", "endpoint_id", "created_at", "id"),
        Index("uq_webhook_deliveries_endpoint_id_notification_id", "endpoint_id", "notification_id", unique=True),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    endpoint_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_endpoints.id"))
    notification_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("notifications.id"), index=True)
    event_type: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = server_now()
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    last_attempt_at: Mapped[dt.datetime | None]
    last_status_code: Mapped[int | None]
    next_attempt_at: Mapped[dt.datetime | None]
    succeeded_at: Mapped[dt.datetime | None]
    failed_at: Mapped[dt.datetime | None]


class WebhookAttempt(Base):
    """The delivery log: every request made for a delivery, and what came of it."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery_id", "delivery_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_deliveries.id"))
    attempted_at: Mapped[dt.datetime]
    duration_ms: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(String(500))
    manual: Mapped[bool]  # a redelivery someone asked for
