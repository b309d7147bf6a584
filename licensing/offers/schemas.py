"""Request and response bodies of offers."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Annotated, Literal

import msgspec

from app.accounts.schemas import Strict
from catalog.search import Use


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


class TransparencyOut(msgspec.Struct):
    product: str
    requests: int
    decided: int
    approved: int
    rejected: int
    pending: int
    approval_rate: float | None
    median_hours_to_decision: float | None
