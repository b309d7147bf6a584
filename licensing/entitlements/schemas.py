"""Request and response bodies of entitlements."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

import msgspec

from app.accounts.schemas import Strict


class EntitlementQuota(msgspec.Struct):
    downloads_limit: int | None
    downloads_used: int
    bytes_limit: int | None
    bytes_used: int


class EntitlementOut(msgspec.Struct):
    id: uuid.UUID
    status: str
    status_reason: str | None
    product: str
    buyer_org: str
    offer_id: uuid.UUID
    order_id: uuid.UUID
    purposes: list[str]
    versions: str
    valid_from: dt.datetime
    valid_until: dt.datetime
    licence: dict[str, Any]
    terms_digest: str
    quota: EntitlementQuota
    created_at: dt.datetime


class EntitlementPage(msgspec.Struct):
    items: list[EntitlementOut]
    next_cursor: str | None


class StatusChangeIn(Strict):
    """The body, and the reason in it, may be left out; a reason that is sent must say something."""

    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)] | None = None
