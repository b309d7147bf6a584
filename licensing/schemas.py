"""Request and response bodies of licensing."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Annotated, Any, Literal

import msgspec

from app.accounts.schemas import Strict
from catalog.search import Use

# The AI-use vocabulary is the catalogue's (its search filters by use); licensing may import it, not the reverse.
Duty = Literal["attribution", "share_alike", "usage_reporting", "delete_on_termination"]
Territory = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")]
Reason = Annotated[str, msgspec.Meta(max_length=500)]


class LicenceIn(Strict):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=300)]
    uses: Annotated[list[Use], msgspec.Meta(max_length=10)]
    duties: Annotated[list[Duty], msgspec.Meta(max_length=4)] = msgspec.field(default_factory=list)
    spdx: Annotated[str, msgspec.Meta(min_length=1, max_length=300)] | None = None
    url: Annotated[str, msgspec.Meta(pattern=r"^https?://", max_length=2000)] | None = None
    text: Annotated[str, msgspec.Meta(max_length=500_000)] | None = None
    text_sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")] | None = None
    territories: Annotated[list[Territory], msgspec.Meta(max_length=250)] = msgspec.field(default_factory=list)
    org: Annotated[str, msgspec.Meta(min_length=2, max_length=63)] | None = None
    note: Annotated[str, msgspec.Meta(max_length=5000)] = ""


class LicenceOut(msgspec.Struct):
    id: str
    name: str
    spdx: str | None
    url: str | None
    text_sha256: str | None
    uses: list[str]
    duties: list[str]
    territories: list[str]
    note: str
    custom: bool
    org: str | None = None


class LicencePage(msgspec.Struct):
    items: list[LicenceOut]
    next_cursor: str | None


class Price(Strict):
    amount: Annotated[decimal.Decimal, msgspec.Meta(description="a number or decimal string, 0 for free")]
    currency: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$", description="ISO 4217")]


class Quota(Strict):
    downloads: Annotated[int, msgspec.Meta(ge=1, le=10**12)] | None = None
    bytes: Annotated[int, msgspec.Meta(ge=1, le=10**18)] | None = None


class OfferIn(Strict):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    licence_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    price: Price
    term_days: Annotated[int, msgspec.Meta(ge=1, le=3660, description="at most ten years")]
    quota: Quota
    versions: Literal["latest", "all"]
    approval: Literal["automatic", "manual"]
    purposes: Annotated[list[Use], msgspec.Meta(min_length=1, max_length=10)]
    target_orgs: Annotated[list[str], msgspec.Meta(max_length=100)] = msgspec.field(default_factory=list)


class OfferPatch(Strict):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | msgspec.UnsetType = msgspec.UNSET
    price: Price | msgspec.UnsetType = msgspec.UNSET
    term_days: Annotated[int, msgspec.Meta(ge=1, le=3660)] | msgspec.UnsetType = msgspec.UNSET
    quota: Quota | msgspec.UnsetType = msgspec.UNSET
    approval: Literal["automatic", "manual"] | msgspec.UnsetType = msgspec.UNSET
    purposes: Annotated[list[Use], msgspec.Meta(min_length=1, max_length=10)] | msgspec.UnsetType = msgspec.UNSET
    archived: bool | msgspec.UnsetType = msgspec.UNSET


class PriceOut(msgspec.Struct):
    amount: str
    currency: str


class QuotaOut(msgspec.Struct):
    downloads: int | None
    bytes: int | None


class OfferOut(msgspec.Struct):
    id: uuid.UUID
    product: str
    name: str
    licence_id: str
    price: PriceOut
    term_days: int
    quota: QuotaOut
    versions: str
    approval: str
    purposes: list[str]
    target_orgs: list[str]
    created_at: dt.datetime
    updated_at: dt.datetime
    archived_at: dt.datetime | None


class OfferPage(msgspec.Struct):
    items: list[OfferOut]
    next_cursor: str | None


class OrderIn(Strict):
    offer_id: uuid.UUID
    buyer_org: Annotated[str, msgspec.Meta(min_length=2, max_length=63)]
    purpose: Use
    answers: Annotated[dict[str, Any], msgspec.Meta(max_length=50)] = msgspec.field(default_factory=dict)


class DecisionIn(Strict):
    reason: Reason = ""


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
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


class CheckItemIn(Strict):
    product: Annotated[str, msgspec.Meta(min_length=1, max_length=80)]
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None


class CheckIn(Strict):
    items: Annotated[list[CheckItemIn], msgspec.Meta(min_length=1, max_length=200)]
    use: Use
    territory: Territory | None = None


class ItemVerdictOut(msgspec.Struct):
    product: str
    version: str
    licence_id: str
    allowed: bool
    reason: str
    duties: list[str]


class CheckOut(msgspec.Struct):
    allowed: bool
    use: str
    territory: str | None
    items: list[ItemVerdictOut]
    duties: dict[str, Any]
    conflicts: list[str]


class TransparencyOut(msgspec.Struct):
    product: str
    requests: int
    decided: int
    approved: int
    rejected: int
    pending: int
    approval_rate: float | None
    median_hours_to_decision: float | None
