"""Takedowns: a rights holder's complaint, its decision, the content it withdrew, the orgs that had downloaded
that content and their deletion attestations."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import CheckConstraint, ColumnElement, ForeignKey, Index, String, Text, exists, or_
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import InstrumentedAttribute, Mapped, mapped_column

from app.db import Base, server_now, sql_in, uuid_pk

DECISIONS = ("uphold", "dismiss")
# Where upheld content is withdrawn: the provider's products (its own decision) or every product (a platform
# admin's).
REACHES = ("provider", "platform")


class Takedown(Base):
    """A complaint against content of one product, named by the digests it concerns; decided once."""

    __tablename__ = "takedowns"
    __table_args__ = (
        CheckConstraint(sql_in("decision", DECISIONS), "known_decision"),
        CheckConstraint(sql_in("reach", REACHES), "known_reach"),
        CheckConstraint("cardinality(sha256) > 0", "names_content"),
        CheckConstraint(
            "(decision IS NULL) = (decided_at IS NULL) AND (decision IS NULL) = (decided_by IS NULL)",
            "decided_once_with_decider",
        ),
        CheckConstraint("(reach IS NOT NULL) = (decision IS NOT DISTINCT FROM 'uphold')", "upheld_has_reach"),
        Index("ix_takedowns_provider_org_id_received_at", "provider_org_id", "received_at"),
        Index("ix_takedowns_claimant_user_id", "claimant_user_id"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    product_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("products.id"))
    version_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("product_versions.id"))
    provider_org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    claimant_user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    claimant_name: Mapped[str] = mapped_column(String(200))
    claimant_email: Mapped[str] = mapped_column(String(320))
    rights_holder: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    paths: Mapped[list[str]] = mapped_column(ARRAY(Text))
    sha256: Mapped[list[str]] = mapped_column(ARRAY(String(64)))
    received_at: Mapped[dt.datetime] = server_now()
    decision: Mapped[str | None] = mapped_column(String(10))
    decision_reason: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[dt.datetime | None]
    decided_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    reach: Mapped[str | None] = mapped_column(String(10))


def status_of(decision: str | None) -> str:
    return {"uphold": "upheld", "dismiss": "dismissed"}.get(decision or "", "received")


class WithdrawnContent(Base):
    """A digest an upheld takedown withdrew: never granted nor served again from the products in its reach,
    whichever version holds it (now or later)."""

    __tablename__ = "withdrawn_content"
    __table_args__ = (Index("ix_withdrawn_content_sha256", "sha256"),)

    takedown_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("takedowns.id"), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The provider whose products it is withdrawn from; None: from every product.
    provider_org_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("organizations.id"))
    withdrawn_at: Mapped[dt.datetime] = server_now()


class AffectedDownload(Base):
    """An entitlement under which withdrawn content had been downloaded when the takedown was upheld."""

    __tablename__ = "takedown_affected"
    __table_args__ = (
        CheckConstraint("cardinality(sha256) > 0", "names_content"),
        Index("ix_takedown_affected_org_id", "org_id"),
    )

    takedown_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("takedowns.id"), primary_key=True)
    entitlement_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("entitlements.id"), primary_key=True)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    sha256: Mapped[list[str]] = mapped_column(ARRAY(String(64)))
    last_downloaded_at: Mapped[dt.datetime]


class Attestation(Base):
    """An affected org's statement that it deleted the withdrawn content; one per org and takedown."""

    __tablename__ = "takedown_attestations"

    takedown_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("takedowns.id"), primary_key=True)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    statement: Mapped[str] = mapped_column(Text)
    attested_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    attested_at: Mapped[dt.datetime] = server_now()


def withdrawn(
    sha256: ColumnElement[str] | InstrumentedAttribute[str] | str,
    product_org_id: ColumnElement[uuid.UUID] | InstrumentedAttribute[uuid.UUID],
) -> ColumnElement[bool]:
    """Whether the content ``sha256`` is withdrawn from the products of ``product_org_id``."""
    return exists().where(
        WithdrawnContent.sha256 == sha256,
        or_(WithdrawnContent.provider_org_id.is_(None), WithdrawnContent.provider_org_id == product_org_id),
    )
