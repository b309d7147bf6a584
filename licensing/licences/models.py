"""Licences with machine-readable AI-use terms: permitted uses, duties, territories."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    String,
    Text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, server_now, sql_subset
from catalog.search import USES as CATALOGUE_USES

USES: tuple[str, ...] = CATALOGUE_USES


DUTIES = ("attribution", "share_alike", "usage_reporting", "delete_on_termination")


class Licence(Base):
    """A licence and its machine-readable AI-use terms. Seeded ones are keyed by their SPDX id; custom ones
    by a ``LicenseRef-`` id owned by a provider organisation."""

    __tablename__ = "licences"
    __table_args__ = (
        CheckConstraint(sql_subset("uses", USES), "known_uses"),
        CheckConstraint(sql_subset("duties", DUTIES), "known_duties"),
        CheckConstraint("id ~ '^[A-Za-z0-9][A-Za-z0-9.+-]{0,199}$'", "id_format"),
        CheckConstraint("owner_org_id IS NOT NULL OR id NOT LIKE 'LicenseRef-%'", "custom_has_owner"),
        CheckConstraint("text_sha256 IS NULL OR text_sha256 ~ '^[0-9a-f]{64}$'", "text_sha256_hex"),
    )

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str] = mapped_column(String(300))
    spdx: Mapped[str | None] = mapped_column(String(300))
    url: Mapped[str | None] = mapped_column(String(2000))
    text_sha256: Mapped[str | None] = mapped_column(String(64))
    uses: Mapped[list[str]] = mapped_column(ARRAY(Text))
    duties: Mapped[list[str]] = mapped_column(ARRAY(Text))
    territories: Mapped[list[str]] = mapped_column(ARRAY(Text))  # ISO 3166-1 alpha-2; empty means worldwide
    note: Mapped[str] = mapped_column(Text, default="")
    owner_org_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("organizations.id"))
    created_at: Mapped[dt.datetime] = server_now()
    updated_at: Mapped[dt.datetime] = server_now()
