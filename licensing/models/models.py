"""Model manifests: which corpus versions, under which entitlements and for which use, trained a model."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, server_now, sql_in, uuid_pk
from licensing.licences.models import USES


class ModelManifest(Base):
    """A model's training record. Immutable once written: ``document`` is what ``manifest_digest`` digests."""

    __tablename__ = "model_manifests"
    __table_args__ = (
        UniqueConstraint("org_id", "name", "version", name="uq_model_manifests_org_id_name_version"),
        CheckConstraint("manifest_digest ~ '^sha256:[0-9a-f]{64}$'", "digest_format"),
        Index("ix_model_manifests_org_id_created_at", "org_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(100))
    document: Mapped[dict[str, Any]] = mapped_column(JSONB)
    manifest_digest: Mapped[str] = mapped_column(String(71))
    created_by: Mapped[str] = mapped_column(String(100))  # the audit actor
    created_at: Mapped[dt.datetime] = server_now()


class ModelTrainingItem(Base):
    """One item of a manifest, relationally: which version trained which model, under which entitlement (so a
    withdrawn or taken-down version finds the models it trained)."""

    __tablename__ = "model_training_items"
    __table_args__ = (
        CheckConstraint(sql_in("use", USES), "known_use"),
        CheckConstraint("files_downloaded > 0 AND bytes_downloaded >= 0", "something_downloaded"),
        UniqueConstraint("manifest_id", "entitlement_id", "version_id", "use", name="uq_model_training_items_item"),
        Index("ix_model_training_items_version_id", "version_id"),
        Index("ix_model_training_items_entitlement_id", "entitlement_id"),
    )

    manifest_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("model_manifests.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    entitlement_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("entitlements.id"))
    version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("product_versions.id"))
    use: Mapped[str] = mapped_column(String(40))
    licence_id: Mapped[str] = mapped_column(ForeignKey("licences.id"))
    files_downloaded: Mapped[int] = mapped_column(Integer)
    bytes_downloaded: Mapped[int] = mapped_column(BigInteger)


class ModelFlag(Base):
    """A manifest recording content that an upheld takedown withdrew: the manifest itself never changes, the
    flag says which of its recorded digests were taken down and when."""

    __tablename__ = "model_flags"
    __table_args__ = (
        CheckConstraint("cardinality(sha256) > 0", "names_content"),
        Index("ix_model_flags_manifest_id", "manifest_id"),
    )

    takedown_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("takedowns.id"), primary_key=True)
    manifest_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("model_manifests.id"), primary_key=True)
    sha256: Mapped[list[str]] = mapped_column(ARRAY(String(64)))
    flagged_at: Mapped[dt.datetime] = server_now()
