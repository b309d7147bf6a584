"""Request and response bodies of the inbox and of webhooks."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

import msgspec

from app.notifications.models import EventType

OrgSlug = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")]
DeliveryStatus = Literal["pending", "succeeded", "failed"]


class NotificationOut(msgspec.Struct):
    id: uuid.UUID
    type: str
    created_at: dt.datetime
    data: dict[str, Any]


class NotificationPage(msgspec.Struct):
    items: list[NotificationOut]
    next_cursor: str | None


class WebhookIn(msgspec.Struct, forbid_unknown_fields=True):
    org: OrgSlug
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
    events: Annotated[list[EventType], msgspec.Meta(min_length=1, max_length=len(EventType))]
    description: Annotated[str, msgspec.Meta(max_length=500)] | None = None


class WebhookOut(msgspec.Struct):
    id: uuid.UUID
    org: str
    url: str
    events: list[str]
    description: str | None
    created_at: dt.datetime
    disabled_at: dt.datetime | None
    failing_since: dt.datetime | None


class WebhookCreated(msgspec.Struct):
    """The endpoint with its signing secret (``whsec_`` + base64), shown in this answer only."""

    id: uuid.UUID
    org: str
    url: str
    events: list[str]
    description: str | None
    created_at: dt.datetime
    secret: str


class WebhookPage(msgspec.Struct):
    items: list[WebhookOut]
    next_cursor: str | None


class AttemptOut(msgspec.Struct):
    attempted_at: dt.datetime
    status_code: int | None
    error: str | None
    duration_ms: int
    manual: bool


class DeliveryOut(msgspec.Struct):
    id: uuid.UUID
    webhook_id: str  # the webhook-id header of every attempt
    notification_id: uuid.UUID
    event_type: str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    created_at: dt.datetime
    last_attempt_at: dt.datetime | None
    next_attempt_at: dt.datetime | None


class DeliveryDetail(DeliveryOut):
    log: list[AttemptOut] = msgspec.field(default_factory=list)


class DeliveryPage(msgspec.Struct):
    items: list[DeliveryOut]
    next_cursor: str | None
