"""Inspection: file profiles, sample reviews with their verdicts, opt-out evidence fetched by the platform."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import BigInteger, Boolean, CheckConstraint, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, server_now, uuid_pk

SAMPLE_KINDS = ("manual", "technical")
THRESHOLDS = {"manual": 0.96, "technical": 0.98}


class FileProfileRow(Base):
    """The profile of one verified file: queued when every file of its version is verified, then computed."""

    __tablename__ = "file_profiles"
    __table_args__ = (
        UniqueConstraint("file_id"),
        CheckConstraint("(profile IS NOT NULL) = (finished_at IS NOT NULL)", "profile_when_finished"),
        CheckConstraint("finished_at IS NULL OR failed_at IS NULL", "finished_or_failed"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("product_versions.id"), index=True)
    file_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("version_files.id", ondelete="CASCADE"))
    queued_at: Mapped[dt.datetime] = server_now()
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    failed_at: Mapped[dt.datetime | None]
    error: Mapped[str | None] = mapped_column(String(1000))
    profile: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class SampleReview(Base):
    """A reproducible random sample of a version's records drawn by a platform reviewer, and its result."""

    __tablename__ = "sample_reviews"
    __table_args__ = (
        CheckConstraint("kind IN ('manual', 'technical')", "known_kind"),
        CheckConstraint("size BETWEEN 1 AND 10000", "size_range"),
        CheckConstraint("threshold > 0 AND threshold <= 1", "threshold_range"),
        CheckConstraint(
            "(finished_at IS NULL) = (jws IS NULL) AND (finished_at IS NULL) = (pass_rate IS NULL)",
            "signed_when_finished",
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("product_versions.id"), index=True)
    kind: Mapped[str] = mapped_column(String(10))
    size: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)
    threshold: Mapped[float] = mapped_column(Float)
    drawn_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = server_now()
    finished_at: Mapped[dt.datetime | None]
    pass_rate: Mapped[float | None]
    passed: Mapped[bool | None] = mapped_column(Boolean)
    jws: Mapped[str | None] = mapped_column(Text)


class SampleItem(Base):
    """One sampled record (named by file and position, with the digest of what the reviewer was shown)."""

    __tablename__ = "sample_items"
    __table_args__ = (
        CheckConstraint("(ok IS NULL) = (judged_at IS NULL)", "judged_when_ok"),
        CheckConstraint("ok IS NULL OR ok OR category IS NOT NULL", "failure_has_category"),
    )

    sample_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sample_reviews.id"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))  # the file's content
    record_index: Mapped[int] = mapped_column(BigInteger)
    record_sha256: Mapped[str] = mapped_column(String(64))
    ok: Mapped[bool | None] = mapped_column(Boolean)
    category: Mapped[str | None] = mapped_column(String(100))
    judged_at: Mapped[dt.datetime | None]


class OptOutEvidence(Base):
    """What a crawled source's site answered the platform: robots.txt, TDMRep and the tdm-reservation header."""

    __tablename__ = "opt_out_evidence"
    __table_args__ = (UniqueConstraint("version_id", "source_index"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("product_versions.id"), index=True)
    source_index: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(500))
    url: Mapped[str] = mapped_column(String(2048))
    queued_at: Mapped[dt.datetime] = server_now()
    fetched_at: Mapped[dt.datetime | None]
    robots_status: Mapped[int | None] = mapped_column(Integer)  # HTTP status; null when the fetch failed
    robots_sha256: Mapped[str | None] = mapped_column(String(64))
    robots_disallows: Mapped[list[str]] = mapped_column(ARRAY(String(50)), server_default="{}")
    tdmrep_status: Mapped[int | None] = mapped_column(Integer)
    tdmrep_sha256: Mapped[str | None] = mapped_column(String(64))
    tdm_header: Mapped[str | None] = mapped_column(String(200))
    tdm_reserved: Mapped[bool | None] = mapped_column(Boolean)
    reserved_for_ai: Mapped[bool | None] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(String(1000))
