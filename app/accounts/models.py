"""Users, organisations, memberships, platform roles and API keys."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, server_now, uuid_pk

ORG_KINDS = ("provider", "buyer", "both")
ORG_ROLES = ("owner", "admin", "member", "auditor")
PLATFORM_ROLES = ("admin", "reviewer", "auditor")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class User(Base):
    __tablename__ = "users"
    __table_args__ = (CheckConstraint("email = lower(email)", "email_lowercase"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    email: Mapped[str] = mapped_column(String(320), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = server_now()
    disabled_at: Mapped[dt.datetime | None]


class PlatformRoleGrant(Base):
    __tablename__ = "platform_role_grants"
    __table_args__ = (CheckConstraint(_in("role", PLATFORM_ROLES), "known_role"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(20), primary_key=True)
    granted_at: Mapped[dt.datetime] = server_now()


class Organization(Base):
    __tablename__ = "organizations"
    __table_args__ = (
        CheckConstraint(_in("kind", ORG_KINDS), "known_kind"),
        CheckConstraint("slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'", "slug_format"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[dt.datetime] = server_now()


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (
        CheckConstraint(_in("role", ORG_ROLES), "known_role"),
        Index("ix_memberships_user_id", "user_id"),
    )

    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[dt.datetime] = server_now()


class ApiKey(Base):
    """A scoped, expiring key for one org. Only a SHA-256 of its secret is stored."""

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint("expires_at > created_at", "expires_after_creation"),
        CheckConstraint("cardinality(scopes) > 0", "has_scopes"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    secret_hash: Mapped[bytes] = mapped_column(unique=True)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(40)))
    created_at: Mapped[dt.datetime] = server_now()
    expires_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None]
    last_used_at: Mapped[dt.datetime | None]  # kept to the minute (app.auth.middleware)
