"""Request and response bodies of the catalogue."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

import msgspec

from app.accounts.schemas import Strict
from app.errors import Problem

ProductSlug = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{1,79}$", description="lower-case, digits, -")]
Industry = Literal[
    "finance",
    "healthcare",
    "transport",
    "retail",
    "education",
    "media",
    "legal",
    "manufacturing",
    "energy",
    "government",
    "science",
    "general",
]
Modality = Literal["text", "image", "audio", "video", "tabular", "multimodal"]
Access = Literal["open", "gated", "paid"]
Title = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Summary = Annotated[str, msgspec.Meta(max_length=1000)]
Description = Annotated[str, msgspec.Meta(max_length=50_000)]
Languages = Annotated[list[Annotated[str, msgspec.Meta(min_length=2, max_length=35)]], msgspec.Meta(max_length=50)]
Tags = Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=50)]], msgspec.Meta(max_length=30)]
Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$", description="lower-case hex SHA-256")]


class ProductIn(Strict):
    org: Annotated[str, msgspec.Meta(min_length=2, max_length=63)]
    slug: ProductSlug
    title: Title
    industry: Industry
    modality: Modality
    access: Access
    summary: Summary = ""
    description: Description = ""
    languages: Languages = msgspec.field(default_factory=list)
    tags: Tags = msgspec.field(default_factory=list)
    # Any signed-in user may see a masked preview of the files (GET …/preview).
    preview: bool = False


class ProductPatch(Strict):
    """Only the fields present change."""

    title: Title | msgspec.UnsetType = msgspec.UNSET
    summary: Summary | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET
    industry: Industry | msgspec.UnsetType = msgspec.UNSET
    modality: Modality | msgspec.UnsetType = msgspec.UNSET
    access: Access | msgspec.UnsetType = msgspec.UNSET
    languages: Languages | msgspec.UnsetType = msgspec.UNSET
    tags: Tags | msgspec.UnsetType = msgspec.UNSET
    preview: bool | msgspec.UnsetType = msgspec.UNSET
    status: Literal["archived", "published", "draft"] | msgspec.UnsetType = msgspec.UNSET


class VersionSummary(msgspec.Struct):
    version: str
    state: str
    published_at: dt.datetime | None
    manifest_digest: str | None


class ProductOut(msgspec.Struct):
    id: uuid.UUID
    slug: str
    org: str
    title: str
    summary: str
    description: str
    industry: str
    modality: str
    languages: list[str]
    tags: list[str]
    access: str
    status: str
    created_at: dt.datetime
    updated_at: dt.datetime
    preview: bool = False
    latest_version: str | None = None
    versions: list[VersionSummary] | None = None


class FacetCount(msgspec.Struct):
    value: str
    count: int


class ProductPage(msgspec.Struct):
    items: list[ProductOut]
    next_cursor: str | None
    facets: dict[str, list[FacetCount]]


class SourceIn(Strict):
    kind: Literal[
        "licensed",
        "public_web_crawl",
        "public_domain",
        "open_government_data",
        "user_contributed_consent",
        "synthetic",
        "derived",
    ]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=300)]
    url: Annotated[str, msgspec.Meta(max_length=2000)] | None = None
    rights_holder: Annotated[str, msgspec.Meta(max_length=300)] | None = None
    legal_basis: Annotated[str, msgspec.Meta(max_length=500)] | None = None
    collected_from: dt.date | None = None
    collected_to: dt.date | None = None
    # synthetic sources name their generator
    generator: Annotated[str, msgspec.Meta(max_length=300)] | None = None
    # crawled sources record what opt-out signals were seen at collection time
    opt_out_evidence: dict[str, Any] | None = None
    # derived sources name the version they come from: {"product": slug, "version": "1.0.0"}
    derived_from: dict[str, str] | None = None


class ActivityIn(Strict):
    stage: Literal["collect", "clean", "label", "test"]
    description: Annotated[str, msgspec.Meta(min_length=1, max_length=5000)]
    tool: Annotated[str, msgspec.Meta(max_length=300)] | None = None
    parameters: dict[str, Any] | None = None
    operator: Annotated[str, msgspec.Meta(max_length=300)] | None = None
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    metrics: dict[str, float] | None = None


class ProvenanceIn(Strict):
    sources: Annotated[list[SourceIn], msgspec.Meta(min_length=1, max_length=200)]
    activities: Annotated[list[ActivityIn], msgspec.Meta(max_length=200)] = msgspec.field(default_factory=list)
    synthetic_fraction: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None


class VersionIn(Strict):
    version: Annotated[str, msgspec.Meta(min_length=5, max_length=100, description="semantic version, e.g. 1.0.0")]
    changelog: Annotated[str, msgspec.Meta(max_length=20_000)] = ""
    licence_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    licence: Annotated[str, msgspec.Meta(min_length=1, max_length=200, description="alias of licence_id")] | None = None
    provenance: ProvenanceIn | None = None


class VersionPatch(Strict):
    changelog: Annotated[str, msgspec.Meta(max_length=20_000)] | msgspec.UnsetType = msgspec.UNSET
    licence_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | msgspec.UnsetType = msgspec.UNSET
    provenance: ProvenanceIn | msgspec.UnsetType = msgspec.UNSET


class ManifestEntry(msgspec.Struct):
    path: str
    size: int
    sha256: str
    media_type: str


class PendingFile(msgspec.Struct):
    file_id: uuid.UUID
    path: str
    size: int
    sha256: str


class VersionOut(msgspec.Struct):
    product: str
    version: str
    state: str
    licence_id: str | None
    changelog: str
    provenance: dict[str, Any] | None
    files: list[ManifestEntry]
    manifest_digest: str | None
    total_size: int
    created_at: dt.datetime
    submitted_at: dt.datetime | None
    published_at: dt.datetime | None
    review_reason: str | None
    deprecated_at: dt.datetime | None
    withdrawn_at: dt.datetime | None
    pending_files: list[PendingFile] | None = None


class ReviewIn(Strict):
    decision: Literal["approve", "reject"]
    reason: Annotated[str, msgspec.Meta(max_length=1000)] = ""


class LifecycleIn(Strict):
    reason: Annotated[str, msgspec.Meta(max_length=1000)] = ""


class WithdrawIn(Strict):
    reason: Annotated[
        str,
        msgspec.Meta(
            min_length=1, max_length=1000, description="why; buyers asking for the version's files are told it"
        ),
    ]


class FileIn(Strict):
    path: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    size: Annotated[int, msgspec.Meta(ge=0, le=5 * 1024**4)]
    sha256: Sha256
    media_type: Annotated[str, msgspec.Meta(min_length=3, max_length=200)] = "application/octet-stream"


class PartUrl(msgspec.Struct):
    part_number: int
    url: str


class SingleUpload(msgspec.Struct, tag_field="kind", tag="single"):
    method: str
    url: str
    headers: dict[str, str]
    expires_at: dt.datetime


class UploadedPart(msgspec.Struct):
    """A part the object store already holds: a resumed upload sends only the others."""

    part_number: int
    etag: str
    size: int


class MultipartUpload(msgspec.Struct, tag_field="kind", tag="multipart"):
    upload_id: str
    part_size: int
    parts: list[PartUrl]
    expires_at: dt.datetime
    uploaded_parts: list[UploadedPart] = msgspec.field(default_factory=list)


class FilePlanOut(msgspec.Struct):
    file_id: uuid.UUID
    path: str
    upload: SingleUpload | MultipartUpload
    # True when the org already stores this content in a verified file: completing without uploading
    # verifies the file, so clients need not send the bytes again.
    stored: bool = False


class CompletedPart(Strict):
    part_number: Annotated[int, msgspec.Meta(ge=1, le=10_000)]
    etag: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class CompleteIn(Strict):
    parts: Annotated[list[CompletedPart], msgspec.Meta(max_length=10_000)] | None = None


class FileOut(msgspec.Struct):
    file_id: uuid.UUID
    path: str
    size: int
    sha256: str
    media_type: str
    status: str


# --- batches of uploads (catalog.batch_uploads) --------------------------------------------------------------

MAX_BATCH = 1000


class BatchPlanIn(Strict):
    files: Annotated[list[FileIn], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


class DirectUpload(msgspec.Struct, tag_field="kind", tag="direct"):
    """PUT the bytes to ``url`` (the object store refuses any other bytes than the declared SHA-256), then complete
    the file naming the ``x-amz-version-id`` header the object store answered the PUT with."""

    method: str
    url: str
    headers: dict[str, str]
    expires_at: dt.datetime


class BatchPlanItem(msgspec.Struct, omit_defaults=True):
    """``status``: ``upload`` (send the bytes as ``upload`` says, then complete), ``stored`` (the organisation
    already stores this content: complete without sending it), ``verified`` (already in the version with this
    content: nothing to do) or ``refused`` (``problem`` says why; nothing changed for this file)."""

    path: str
    status: Literal["upload", "stored", "verified", "refused"]
    file_id: uuid.UUID | None = None
    upload: SingleUpload | DirectUpload | None = None
    problem: Problem | None = None


class BatchPlanOut(msgspec.Struct):
    items: list[BatchPlanItem]


class BatchCompleteFile(Strict):
    file_id: uuid.UUID
    # For a ``direct`` upload: the ``x-amz-version-id`` the object store answered the PUT with.
    version_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


class BatchCompleteIn(Strict):
    files: Annotated[list[BatchCompleteFile], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


class BatchCompleteItem(msgspec.Struct, omit_defaults=True):
    """``verified``, or ``refused`` with its ``problem`` (``upload-missing``: nothing changed, upload and complete
    again; ``checksum-mismatch`` / ``size-mismatch``: the upload and the pending file were discarded)."""

    file_id: uuid.UUID
    status: Literal["verified", "refused"]
    path: str | None = None
    size: int | None = None
    sha256: str | None = None
    problem: Problem | None = None


class BatchCompleteOut(msgspec.Struct):
    items: list[BatchCompleteItem]
