"""Password and refresh-token grants, refresh-token rotation with reuse detection, login throttling."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.accounts.models import User
from app.accounts.passwords import HashingGate, turn, verify_password
from app.accounts.service import normalise_email, platform_roles
from app.audit import service as audit
from app.audit.service import AuditContext
from app.auth import throttle
from app.auth.keys import KeyRing
from app.auth.models import RefreshToken
from app.auth.tokens import REFRESH_TOKEN_PREFIX, issue_access_token, opaque_secret, secret_digest
from app.db import CommitThenRaise, utcnow
from app.errors import ProblemError, unauthorized
from app.settings import Settings

# A client address may fail more often than one account from it: several people can share a NAT.
ADDRESS_FAILURE_FACTOR = 4
# Failures against one account from every address together, against guessing spread over many addresses.
ACCOUNT_FAILURE_FACTOR = 20


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


def _sign_in_counters(settings: Settings, email: str, client_addr: str | None) -> list[throttle.Counter]:
    """Failures count per account *and address*, so an attacker elsewhere cannot lock the owner out; per address
    across accounts (password spraying); and per account with a much higher ceiling (distributed guessing)."""
    address = client_addr or "unknown"
    limit = settings.login_max_failures
    return [
        throttle.Counter(f"account-address:{email} {address}", limit),
        throttle.Counter(f"address:{address}", limit * ADDRESS_FAILURE_FACTOR),
        throttle.Counter(f"account:{email}", limit * ACCOUNT_FAILURE_FACTOR),
    ]


async def password_grant(
    session: AsyncSession,
    context: AuditContext,
    settings: Settings,
    keyring: KeyRing,
    *,
    username: str,
    password: str,
    gate: HashingGate | None = None,
) -> TokenPair:
    email = normalise_email(username)
    counters = _sign_in_counters(settings, email, context.client_addr)
    engine = session.bind
    assert isinstance(engine, AsyncEngine)
    # Counted as a failure until it succeeds: concurrent guesses cannot all pass a check made before any fails.
    await throttle.count_attempt(
        engine,
        counters,
        dt.timedelta(seconds=settings.login_window_seconds),
        type_="login-throttled",
        title="Too many failed sign-in attempts",
        detail="sign-in is paused for this account from your address, or for your address",
    )
    try:
        async with turn(gate):
            user = await session.scalar(select(User).where(User.email == email))
            ok = await verify_password(user.password_hash if user else None, password)
    except ProblemError:  # too busy to check: the attempt was not made
        async with engine.begin() as connection:
            await throttle.forgive(connection, counters)
        raise
    if user is None or not ok or user.disabled_at is not None:
        await audit.record(
            session,
            context,
            "auth.login_failed",
            target_type="user",
            target_id=user.id if user else None,
            details={"username": email},
        )
        raise CommitThenRaise(unauthorized("the email or password is wrong"))
    await throttle.forgive(session, counters, reset=[counters[0].key])
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
