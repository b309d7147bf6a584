"""``POST /auth/token`` and the public key set."""

from __future__ import annotations

from typing import Any

from litestar import Router, get, post
from litestar.datastructures import State
from litestar.params import JSONBody

from app.auth import service
from app.auth.guards import OPEN_TO_AUDITORS, requires
from app.auth.keys import KeyRing
from app.auth.schemas import PasswordGrant, RefreshGrant, TokenOut
from app.deps import Audit, Session


@post(
    "/auth/token",
    summary="Exchange a password or a refresh token for tokens",
    tags=["auth"],
    status_code=200,
    opt={OPEN_TO_AUDITORS: True},
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
    ``Retry-After``."""
    if isinstance(data, PasswordGrant):
        pair = await service.password_grant(
            session,
            audit_context,
            state.settings,
            state.keyring,
            username=data.username,
            password=data.password,
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
