"""Request and response bodies of licences and licence checks."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from app.accounts.schemas import Strict
from catalog.search import Use

# The AI-use vocabulary is the catalogue's (its search filters by use); licensing may import it, not the reverse.
Duty = Literal["attribution", "share_alike", "usage_reporting", "delete_on_termination"]


Territory = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")]


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
