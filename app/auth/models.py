"""Refresh tokens (stored hashed, rotated in families) and login throttling state."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, server_now, uuid_pk


class RefreshToken(Base):
    """One link of a rotation family. Presenting a spent link revokes the whole family."""

    __tablename__ = "refresh_tokens"

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    family_id: Mapped[uuid.UUID] = mapped_column(index=True)
    token_hash: Mapped[bytes] = mapped_column(unique=True)
    issued_at: Mapped[dt.datetime] = server_now()
    expires_at: Mapped[dt.datetime]
    used_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]


class LoginThrottle(Base):
    """Attempts counted in the current window per key (sign-ins, sign-ups), shared by every service process;
    see ``app.auth.throttle``."""

    __tablename__ = "login_throttles"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    failures: Mapped[int]
    window_started_at: Mapped[dt.datetime]
