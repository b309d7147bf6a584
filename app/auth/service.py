"""Password and refresh-token grants, refresh-token rotation with reuse detection, login throttling."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import uuid

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.models import User
from app.accounts.passwords import verify_password
from app.accounts.service import normalise_email, platform_roles
from app.audit import service as audit
from app.audit.service import AuditContext
from app.auth.keys import KeyRing
from app.auth.models import LoginThrottle, RefreshToken
from app.auth.tokens import REFRESH_TOKEN_PREFIX, issue_access_token, opaque_secret, secret_digest
from app.db import CommitThenRaise, utcnow
from app.errors import ProblemError, unauthorized
from app.settings import Settings

# A client address may fail more often than one account: several people can share a NAT.
ADDRESS_FAILURE_FACTOR = 4


@dataclasses.dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


async def _issue(
    session: AsyncSession, settings: Settings, keyring: KeyRing, user_id: uuid.UUID, family_id: uuid.UUID
) -> TokenPair:
    roles = await platform_roles(session, user_id)
    access = issue_access_token(
        keyring,
        user_id=user_id,
        platform_roles=roles,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        ttl_seconds=settings.access_token_ttl_seconds,
    )
    refresh = opaque_secret(REFRESH_TOKEN_PREFIX)
    session.add(
        RefreshToken(
            user_id=user_id,
            family_id=family_id,
            token_hash=secret_digest(refresh),
            expires_at=utcnow() + dt.timedelta(seconds=settings.refresh_token_ttl_seconds),
        )
    )
    await session.flush()
    return TokenPair(access, refresh, settings.access_token_ttl_seconds)


def _throttle_keys(email: str, client_addr: str | None) -> list[tuple[str, int]]:
    return [(f"account:{email}", 1), (f"address:{client_addr or 'unknown'}", ADDRESS_FAILURE_FACTOR)]


async def _check_throttle(session: AsyncSession, keys: list[tuple[str, int]]) -> None:
    now = utcnow()
    locked_until = await session.scalar(
        select(func.max(LoginThrottle.locked_until)).where(
            LoginThrottle.key.in_([k for k, _ in keys]), LoginThrottle.locked_until > now
        )
    )
    if locked_until is not None:
        wait = max(1, math.ceil((locked_until - now).total_seconds()))
        raise ProblemError(
            429,
            "login-throttled",
            "Too many failed sign-in attempts",
            f"sign-in is paused for this account or address; try again in {wait} seconds",
            headers={"Retry-After": str(wait)},
        )


async def _count_failure(session: AsyncSession, settings: Settings, keys: list[tuple[str, int]]) -> None:
    """Count a failure atomically in the database, so every service process sees the same counters."""
    now = utcnow()
    window = dt.timedelta(seconds=settings.login_window_seconds)
    for key, factor in keys:
        limit = settings.login_max_failures * factor
        expired = LoginThrottle.window_started_at <= now - window
        statement = (
            insert(LoginThrottle)
            .values(key=key, failures=1, window_started_at=now, locked_until=None)
            .on_conflict_do_update(
                index_elements=[LoginThrottle.key],
                set_={
                    "failures": case((expired, 1), else_=LoginThrottle.failures + 1),
                    "window_started_at": case((expired, now), else_=LoginThrottle.window_started_at),
                },
            )
        )
        await session.execute(statement)
        await session.execute(
            update(LoginThrottle)
            .where(LoginThrottle.key == key, LoginThrottle.failures >= limit)
            .values(locked_until=now + window, failures=0, window_started_at=now)
        )


async def password_grant(
    session: AsyncSession,
    context: AuditContext,
    settings: Settings,
    keyring: KeyRing,
    *,
    username: str,
    password: str,
) -> TokenPair:
    email = normalise_email(username)
    keys = _throttle_keys(email, context.client_addr)
    await _check_throttle(session, keys)
    user = await session.scalar(select(User).where(User.email == email))
    ok = await verify_password(user.password_hash if user else None, password)
    if user is None or not ok or user.disabled_at is not None:
        await _count_failure(session, settings, keys)
        await audit.record(
            session,
            context,
            "auth.login_failed",
            target_type="user",
            target_id=user.id if user else None,
            details={"username": email},
        )
        raise CommitThenRaise(unauthorized("the email or password is wrong"))
    await session.execute(delete(LoginThrottle).where(LoginThrottle.key == keys[0][0]))
    tokens = await _issue(session, settings, keyring, user.id, uuid.uuid4())
    await audit.record(
        session,
        dataclasses.replace(context, actor=f"user:{user.id}"),
        "auth.login",
        target_type="user",
        target_id=user.id,
    )
    return tokens


async def refresh_grant(
    session: AsyncSession, context: AuditContext, settings: Settings, keyring: KeyRing, *, refresh_token: str
) -> TokenPair:
    """Rotate a refresh token. Presenting one already spent revokes its whole family."""
    stored = await session.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == secret_digest(refresh_token)).with_for_update()
    )
    if stored is None or stored.revoked_at is not None:
        raise unauthorized("the refresh token is unknown or revoked; sign in again")
    now = utcnow()
    if stored.used_at is not None:
        await session.execute(
            update(RefreshToken)
            .where(RefreshToken.family_id == stored.family_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        await audit.record(
            session,
            dataclasses.replace(context, actor=f"user:{stored.user_id}"),
            "auth.refresh_reuse_detected",
            target_type="user",
            target_id=stored.user_id,
            details={"family_id": str(stored.family_id)},
        )
        raise CommitThenRaise(
            unauthorized("this refresh token was already used; every session from it is revoked, sign in again")
        )
    if stored.expires_at <= now:
        raise unauthorized("the refresh token has expired; sign in again")
    user = await session.get(User, stored.user_id)
    if user is None or user.disabled_at is not None:
        raise unauthorized("the account is disabled")
    stored.used_at = now
    tokens = await _issue(session, settings, keyring, stored.user_id, stored.family_id)
    await audit.record(
        session,
        dataclasses.replace(context, actor=f"user:{stored.user_id}"),
        "auth.token_refreshed",
        target_type="user",
        target_id=stored.user_id,
        details={"family_id": str(stored.family_id)},
    )
    return tokens
