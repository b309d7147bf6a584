"""``POST /auth/token`` and the public key set."""

from __future__ import annotations

from typing import Any

from litestar import Router
from litestar.datastructures import State
from litestar.params import JSONBody

from app.auth import service
from app.auth.guards import OPEN_TO_AUDITORS, requires
from app.auth.keys import KeyRing
from app.auth.schemas import PasswordGrant, RefreshGrant, TokenOut
from app.deps import Audit, Session
from app.handlers import get, post
from app.openapi import problems
from app.validation import FORM_BODY


@post(
    "/auth/token",
    summary="Exchange a password or a refresh token for tokens",
    tags=["auth"],
    status_code=200,
    opt={OPEN_TO_AUDITORS: True, FORM_BODY: True},
    responses=problems(
        {
            429: "Too many failed sign-ins from this address, for this account or from this address, or too many "
            "password checks at once; `Retry-After` says when to try again"
        }
    ),
    guards=[requires("public")],
)
async def token(
    session: Session,
    audit_context: Audit,
    state: State,
    data: JSONBody[PasswordGrant | RefreshGrant],
) -> TokenOut:
    """Access tokens are EdDSA JWTs valid for 15 minutes; refresh tokens rotate on every use, and
    presenting a spent one revokes every token of its family. Repeated failures answer 429 with
    ``Retry-After``. The body is JSON or, as OAuth 2.0 clients send it (RFC 6749 §4.3), a form
    (``application/x-www-form-urlencoded``) with the same fields."""
    if isinstance(data, PasswordGrant):
        pair = await service.password_grant(
            session,
            audit_context,
            state.settings,
            state.keyring,
            username=data.username,
            password=data.password,
            gate=state.password_gate,
        )
    else:
        pair = await service.refresh_grant(
            session, audit_context, state.settings, state.keyring, refresh_token=data.refresh_token
        )
    return TokenOut(access_token=pair.access_token, refresh_token=pair.refresh_token, expires_in=pair.expires_in)


@get(
    "/.well-known/jwks.json",
    summary="Public keys for tokens, receipts and checkpoints",
    tags=["auth"],
    guards=[requires("public")],
)
async def jwks(state: State) -> dict[str, Any]:
    keyring: KeyRing = state.keyring
    return keyring.jwks()


router = Router(path="/", route_handlers=[token])
