"""Request and response bodies of model manifests and their training-content summaries."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

import msgspec

from app.accounts.schemas import Strict
from catalog.search import Use
from licensing.licences.schemas import Territory

ProductSlug = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{1,79}$")]


class TrainingItemIn(Strict):
    entitlement_id: uuid.UUID
    product: ProductSlug
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    use: Use


class ModelIn(Strict):
    org: Annotated[str, msgspec.Meta(min_length=2, max_length=63)]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    training: Annotated[list[TrainingItemIn], msgspec.Meta(min_length=1, max_length=200)]
    description: Annotated[str, msgspec.Meta(max_length=5000)] = ""
    territory: Territory | None = None
    # The EU template asks small and medium-sized enterprises for fewer crawled domains (5 % or 1,000).
    sme: bool = False


class DownloadedFile(msgspec.Struct):
    path: str
    sha256: str
    size: int


class LicenceTerms(msgspec.Struct):
    name: str
    spdx: str | None
    url: str | None
    uses: list[str]
    duties: list[str]
    territories: list[str]


class ModelItemOut(msgspec.Struct):
    product: str
    version: str
    manifest_digest: str  # the version's: the digest of its files
    entitlement_id: uuid.UUID
    use: str
    licence: str  # the licence id of the entitlement's snapshot
    licence_terms: LicenceTerms
    files_downloaded: int
    bytes_downloaded: int
    files: list[DownloadedFile]


class Verdict(msgspec.Struct):
    allowed: bool
    conflicts: list[str]
    duties: dict[str, Any]
    reasons: list[str]


class ModelFlagOut(msgspec.Struct):
    """An upheld takedown withdrew these digests, recorded among the manifest's files."""

    takedown_id: uuid.UUID
    flagged_at: dt.datetime
    sha256: list[str]


class ModelOut(msgspec.Struct):
    id: uuid.UUID
    org: str
    name: str
    version: str
    description: str
    territory: str | None
    sme: bool
    manifest_digest: str
    verdict: Verdict
    items: list[ModelItemOut]
    created_at: dt.datetime
    # Added by takedowns after the manifest was recorded: always [] in the recorded (and digested) manifest.
    flags: list[ModelFlagOut] = msgspec.field(default_factory=list)


class ModelPage(msgspec.Struct):
    items: list[ModelOut]
    next_cursor: str | None


SummaryFormat = Literal["json", "markdown"]
