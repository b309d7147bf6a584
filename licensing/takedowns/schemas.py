"""Request and response bodies of takedowns."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal

import msgspec

from app.accounts.schemas import Email, Strict

Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
Path = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
OrgSlug = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")]
Decision = Literal["uphold", "dismiss"]
Status = Literal["received", "upheld", "dismissed"]


class Claimant(Strict):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    email: Email
    rights_holder: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


class TakedownIn(Strict):
    """Naming a version without paths or digests means the whole version; paths and digests name only that
    content (in the version if one is named, else in any version of the product)."""

    product: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=5000)]
    claimant: Claimant
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None
    paths: Annotated[list[Path], msgspec.Meta(max_length=1000)] | None = None
    sha256: Annotated[list[Sha256], msgspec.Meta(max_length=1000)] | None = None


class DecisionIn(Strict):
    decision: Decision
    reason: Annotated[str, msgspec.Meta(max_length=5000)] = ""


class AttestationIn(Strict):
    org: OrgSlug
    statement: Annotated[str, msgspec.Meta(min_length=1, max_length=5000)]


class ClaimantOut(msgspec.Struct):
    name: str
    email: str
    rights_holder: str | None


class AffectedOut(msgspec.Struct):
    """An entitlement under which withdrawn content had been downloaded, and its org's attestation."""

    org: str
    entitlement_id: uuid.UUID
    sha256: list[str]
    last_downloaded_at: dt.datetime
    attested_at: dt.datetime | None
    statement: str | None


class AttestationsOut(msgspec.Struct):
    """How many affected orgs there are and how many have attested (shown to everyone who sees the takedown)."""

    required: int
    received: int


class TakedownOut(msgspec.Struct):
    """``affected`` lists every affected entitlement for the provider and the platform's staff, an affected
    org's own to that org, and none to the claimant alone (buyers are not named to third parties); likewise
    ``models_flagged`` only to the provider and the platform's staff."""

    id: uuid.UUID
    status: Status
    product: str
    provider_org: str
    version: str | None
    paths: list[str]
    sha256: list[str]
    reason: str
    claimant: ClaimantOut | None
    received_at: dt.datetime
    decision: Decision | None
    decision_reason: str | None
    decided_at: dt.datetime | None
    reach: Literal["provider", "platform"] | None
    affected: list[AffectedOut]
    attestations: AttestationsOut
    # How many model manifests it flagged: for the provider and the platform's staff only (absent for others).
    models_flagged: int | msgspec.UnsetType = msgspec.UNSET


class TakedownCreated(msgspec.Struct):
    id: uuid.UUID
    status: Status


class TakedownPage(msgspec.Struct):
    items: list[TakedownOut]
    next_cursor: str | None
