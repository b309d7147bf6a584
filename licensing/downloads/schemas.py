"""Request and response bodies of download grants, manifests, refreshes and usage."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

import msgspec

from app.accounts.schemas import Strict
from catalog.search import Use

MAX_MANIFEST_PATHS = 1000


class DownloadIn(Strict):
    entitlement_id: uuid.UUID
    product: Annotated[str, msgspec.Meta(min_length=1, max_length=80)]
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    path: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    purpose: Use


class ManifestIn(Strict):
    entitlement_id: uuid.UUID
    product: Annotated[str, msgspec.Meta(min_length=1, max_length=80)]
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    purpose: Use
    include: Annotated[
        list[Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]], msgspec.Meta(max_length=50)
    ] = msgspec.field(default_factory=lambda: ["*"])
    # Exact paths instead of globs (a client granting a long list in batches): looked up, not matched.
    paths: (
        Annotated[
            list[Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]],
            msgspec.Meta(min_length=1, max_length=MAX_MANIFEST_PATHS),
        ]
        | None
    ) = None


class RefreshIn(Strict):
    download_ids: Annotated[list[uuid.UUID], msgspec.Meta(min_length=1, max_length=10_000)]


class DownloadOut(msgspec.Struct):
    download_id: uuid.UUID
    url: str
    expires_at: dt.datetime
    size: int
    sha256: str
    mode: str
    receipt: str
    product: str
    version: str
    path: str
    manifest_digest: str
    window_ends_at: dt.datetime


class ManifestOut(msgspec.Struct):
    product: str
    version: str
    manifest_digest: str
    items: list[DownloadOut]


class DownloadList(msgspec.Struct):
    items: list[DownloadOut]


class UsageOut(msgspec.Struct):
    since: dt.date
    buyer: list[dict[str, Any]]
    provider: list[dict[str, Any]]
