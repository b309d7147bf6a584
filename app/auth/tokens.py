"""Access tokens: EdDSA JWTs verified offline, pinned to one algorithm, with ``iss``, ``aud``, ``exp`` checked."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import secrets
import uuid
from typing import Any

import jwt

from app.auth.keys import ALGORITHM, KeyRing

REFRESH_TOKEN_PREFIX = "crt_"  # noqa: S105 - a prefix, not a secret
API_KEY_PREFIX = "crp_"


class InvalidToken(Exception):
    """The token is malformed, forged, expired or for another audience."""


@dataclasses.dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: uuid.UUID
    platform_roles: frozenset[str]
    token_id: str
    expires_at: int  # seconds since the epoch


# RFC 9068: the JOSE type of JWT access tokens.
ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 - a media type, not a secret


def issue_access_token(
    keyring: KeyRing,
    *,
    user_id: uuid.UUID,
    platform_roles: list[str],
    issuer: str,
    audience: str,
    ttl_seconds: int,
    now: dt.datetime | None = None,
) -> str:
    now = now or dt.datetime.now(dt.UTC)
    key = keyring.active
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": str(user_id),
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int((now + dt.timedelta(seconds=ttl_seconds)).timestamp()),
        "jti": secrets.token_urlsafe(12),
        "roles": sorted(platform_roles),
    }
    return jwt.encode(claims, key.private, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": ACCESS_TOKEN_TYPE})


def verify_access_token(keyring: KeyRing, token: str, *, issuer: str, audience: str) -> AccessClaims:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise InvalidToken("the token is not a well-formed JWT") from exc
    if header.get("alg") != ALGORITHM:
        raise InvalidToken(f"tokens must be signed with {ALGORITHM}")
    if header.get("typ") != ACCESS_TOKEN_TYPE:
        # Receipts and checkpoints carry our signature too: only what was issued as an access token is one.
        raise InvalidToken(f"not an access token (typ must be {ACCESS_TOKEN_TYPE})")
    kid = header.get("kid")
    public = keyring.public_key(kid) if isinstance(kid, str) else None
    if public is None:
        raise InvalidToken("the token was signed with an unknown key")
    try:
        claims = jwt.decode(
            token,
            public,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=issuer,
            options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
            leeway=5,
        )
        user_id = uuid.UUID(claims["sub"])
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise InvalidToken("the token's roles claim is malformed")
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("the token has expired; refresh it at /api/v1/auth/token") from exc
    except (jwt.PyJWTError, ValueError) as exc:
        raise InvalidToken(f"the token is invalid: {exc}") from exc
    return AccessClaims(
        user_id=user_id, platform_roles=frozenset(roles), token_id=str(claims["jti"]), expires_at=int(claims["exp"])
    )


def opaque_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def secret_digest(secret: str) -> bytes:
    """High-entropy secrets (refresh tokens, API keys) are stored as SHA-256: fast to check, useless if leaked."""
    return hashlib.sha256(secret.encode()).digest()
