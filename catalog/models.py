"""Products, versions, files and the content-addressed blobs they point to."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Computed,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, server_now, uuid_pk
from catalog import paths

INDUSTRIES = (
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
)
MODALITIES = ("text", "image", "audio", "video", "tabular", "multimodal")
ACCESS_MODES = ("open", "gated", "paid")
PRODUCT_STATUSES = ("draft", "published", "archived")
VERSION_STATES = ("draft", "in_review", "published", "deprecated", "withdrawn")
FILE_STATUSES = ("pending", "verified")
MAX_FILE_SIZE = 5 * 1024**4  # 5 TiB, the S3 object limit


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


# https://semver.org/#is-there-a-suggested-regular-expression-regex-to-check-a-semver-string
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)


class Product(Base):
    __tablename__ = "products"
    __table_args__ = (
        CheckConstraint("slug ~ '^[a-z0-9][a-z0-9-]{1,79}$'", "slug_format"),
        CheckConstraint(_in("industry", INDUSTRIES), "known_industry"),
        CheckConstraint(_in("modality", MODALITIES), "known_modality"),
        CheckConstraint(_in("access", ACCESS_MODES), "known_access"),
        CheckConstraint(_in("status", PRODUCT_STATUSES), "known_status"),
        Index("ix_products_search_terms", "search_terms", postgresql_using="gin"),
        Index("ix_products_listing", "status", "listed_seq"),
        Index("ix_products_org_id_listed_seq", "org_id", "listed_seq"),
        Index("ix_products_languages", "languages", postgresql_using="gin"),
        Index("ix_products_facet_terms", "facet_terms", postgresql_using="gin"),
        Index("ix_products_uses", "uses", postgresql_using="gin"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    # Monotonic order of the catalogue: keyset pagination on it never skips nor repeats a product.
    listed_seq: Mapped[int] = mapped_column(BigInteger, Identity(always=True), unique=True)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    slug: Mapped[str] = mapped_column(String(80), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    summary: Mapped[str] = mapped_column(String(1000))
    description: Mapped[str] = mapped_column(Text)
    industry: Mapped[str] = mapped_column(String(20))
    modality: Mapped[str] = mapped_column(String(20))
    languages: Mapped[list[str]] = mapped_column(ARRAY(String(35)))
    tags: Mapped[list[str]] = mapped_column(ARRAY(String(50)))
    access: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(10), default="draft")
    # Whether any signed-in user may see a masked preview of its files.
    preview: Mapped[bool] = mapped_column(default=False, server_default="false")
    # Words, and CJK characters and character pairs, of the text fields: search without extensions.
    search_terms: Mapped[list[str]] = mapped_column(ARRAY(Text))
    # "industry:finance", "language:zh-Hans", "org:<uuid>", …: filters intersect with search terms in GIN.
    facet_terms: Mapped[list[str]] = mapped_column(
        ARRAY(Text), Computed("catalog_facet_terms(industry, modality, access, languages, org_id)", persisted=True)
    )
    # The AI uses the licences of its published and deprecated versions permit (the search's `use` filter),
    # kept by triggers on product_versions and licences (migration 0007); never written by the application.
    uses: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    created_at: Mapped[dt.datetime] = server_now()
    updated_at: Mapped[dt.datetime] = server_now()


class ProductVersion(Base):
    """A version; frozen once published (triggers in the migration refuse changes to its content)."""

    __tablename__ = "product_versions"
    __table_args__ = (
        UniqueConstraint("product_id", "version"),
        CheckConstraint(_in("state", VERSION_STATES), "known_state"),
        CheckConstraint(
            "state IN ('draft', 'in_review') OR (manifest_digest IS NOT NULL AND published_at IS NOT NULL)",
            "published_has_manifest",
        ),
        CheckConstraint("synthetic_fraction IS NULL OR synthetic_fraction BETWEEN 0 AND 1", "fraction_range"),
        # The search's `use` filter: which licences a product's released versions carry, index-only.
        Index(
            "ix_product_versions_released",
            "product_id",
            "licence_id",
            postgresql_where="state IN ('published', 'deprecated')",
        ),
        # The reviewers' queue, oldest first.
        Index("ix_product_versions_in_review", "submitted_at", "id", postgresql_where="state = 'in_review'"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    product_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("products.id"), index=True)
    version: Mapped[str] = mapped_column(String(100))
    # (major, minor, patch) for ordering; pre-releases sort by their text after these.
    major: Mapped[int] = mapped_column(Integer)
    minor: Mapped[int] = mapped_column(Integer)
    patch: Mapped[int] = mapped_column(Integer)
    prerelease: Mapped[str | None] = mapped_column(String(60))
    changelog: Mapped[str] = mapped_column(Text, default="")
    licence_id: Mapped[str | None] = mapped_column(ForeignKey("licences.id"))
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    state: Mapped[str] = mapped_column(String(12), default="draft")
    manifest_digest: Mapped[str | None] = mapped_column(String(71))
    created_at: Mapped[dt.datetime] = server_now()
    submitted_at: Mapped[dt.datetime | None]
    reviewed_at: Mapped[dt.datetime | None]
    reviewed_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    review_reason: Mapped[str | None] = mapped_column(String(1000))
    published_at: Mapped[dt.datetime | None]
    deprecated_at: Mapped[dt.datetime | None]
    withdrawn_at: Mapped[dt.datetime | None]
    withdrawn_reason: Mapped[str | None] = mapped_column(String(1000))
    synthetic_fraction: Mapped[float | None]


class Blob(Base):
    """Content stored once under its SHA-256 at ``blobs/sha256/<hex>``; never overwritten."""

    __tablename__ = "blobs"
    __table_args__ = (
        CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", "sha256_hex"),
        CheckConstraint(f"size >= 0 AND size <= {MAX_FILE_SIZE}", "size_range"),
    )

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    stored_at: Mapped[dt.datetime] = server_now()


class VersionFile(Base):
    """A file of a version. ``pending`` while its bytes are being uploaded, ``verified`` once they match."""

    __tablename__ = "version_files"
    __table_args__ = (
        UniqueConstraint("version_id", "path"),
        UniqueConstraint("version_id", "path_key"),
        CheckConstraint(_in("status", FILE_STATUSES), "known_status"),
        CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", "sha256_hex"),
        CheckConstraint(f"size >= 0 AND size <= {MAX_FILE_SIZE}", "size_range"),
        CheckConstraint("(status = 'verified') = (verified_at IS NOT NULL)", "verified_when_verified"),
        CheckConstraint(r"path !~ '(^/|\\|(^|/)\.\.?(/|$)|//)' AND length(path) BETWEEN 1 AND 1024", "safe_path"),
        Index("ix_version_files_sha256", "sha256"),
        Index("ix_version_files_pending", "created_at", postgresql_where="status = 'pending'"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("product_versions.id"))
    path: Mapped[str] = mapped_column(String(1024))
    # The path after NFKC and case folding: unique per version, so no two files overwrite each other on disk.
    path_key: Mapped[str] = mapped_column(
        String(4096), default=lambda context: paths.path_key(context.get_current_parameters()["path"])
    )
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    media_type: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(10), default="pending")
    upload_id: Mapped[str | None] = mapped_column(String(500))  # the S3 multipart upload, while pending
    part_size: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = server_now()
    verified_at: Mapped[dt.datetime | None]


class ProductFacetValue(Base):
    """How many products of one status and provider have one facet value (language: each of their languages).

    Maintained by statement-level triggers on ``products`` (migration 0003), so every write path — the
    service, the bulk COPY of ``corpora seed`` — keeps it exact. The unfiltered catalogue (or one provider's)
    reads its facet counts here: a few dozen rows per provider, whatever the number of products.
    """

    __tablename__ = "product_facet_values"
    __table_args__ = (
        CheckConstraint("products >= 0", "not_negative"),
        CheckConstraint(_in("facet", ("industry", "modality", "access", "language")), "known_facet"),
    )

    status: Mapped[str] = mapped_column(String(10), primary_key=True)
    org_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    facet: Mapped[str] = mapped_column(String(10), primary_key=True)
    value: Mapped[str] = mapped_column(String(35), primary_key=True)
    products: Mapped[int] = mapped_column(BigInteger)
