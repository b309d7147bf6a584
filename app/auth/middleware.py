"""Authentication and request identity, as one ASGI middleware.

Sets ``scope["user"]`` to a :class:`Principal` or ``None`` (anonymous), a request id, and the client
address; ``app.metrics.RequestMetrics``, outside it, writes the request id into the response. A presented but
invalid credential is refused with 401 at once; a missing one is left to the route's guards, so public
endpoints stay public.
"""

from __future__ import annotations

import collections
import datetime as dt
import ipaddress
import itertools
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.accounts.models import ApiKey, User
from app.auth.keys import KeyRing
from app.auth.principal import Principal
from app.auth.tokens import API_KEY_PREFIX, InvalidToken, secret_digest, verify_access_token
from app.db import utcnow
from app.errors import unauthorized
from app.settings import IPNetwork, Settings

REQUEST_ID_HEADER = b"x-request-id"
VERIFIED_TOKENS_KEPT = 10_000
LAST_USED_PRECISION = dt.timedelta(minutes=1)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _request_ids() -> Iterator[str]:
    """Unique, not secret: a random prefix per app and a counter (no system call per request)."""
    prefix = secrets.token_hex(4)
    for number in itertools.count(1):
        yield f"{prefix}{number:08x}"


def client_address(peer: str | None, forwarded_for: str | None, trusted: Sequence[IPNetwork]) -> str | None:
    """The client's address: the TCP peer, unless that is a trusted proxy; then the nearest address in
    X-Forwarded-For that is not a trusted proxy (each proxy appends the address it was reached from, so what
    lies left of the first untrusted hop may be forged)."""
    if not trusted or not forwarded_for or not _is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",")]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop if _is_address(hop) else peer
    return hops[0] if _is_address(hops[0]) else peer


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_trusted(address: str | None, trusted: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    return any(ip in network for network in trusted)


class AuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        keyring: KeyRing,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        self.app = app
        self.settings = settings
        self.keyring = keyring
        self.sessionmaker = sessionmaker
        self._request_ids = _request_ids()  # made in each worker: the app is built after the fork
        # A verified token's caller and when the token expires.
        self._verified: collections.OrderedDict[str, tuple[Principal, float]] = collections.OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        incoming = authorization = None
        forwarded: list[str] = []
        for key, value in scope["headers"]:  # one pass over the headers for all three
            if key == b"authorization":
                authorization = authorization or bytes(value).decode("latin-1")
            elif key == REQUEST_ID_HEADER:
                incoming = incoming or bytes(value).decode("latin-1")
            elif key == b"x-forwarded-for":
                # Every X-Forwarded-For line, in order: a proxy may add its own line after the client's.
                forwarded.append(bytes(value).decode("latin-1"))
        request_id = incoming if incoming and _REQUEST_ID.match(incoming) else next(self._request_ids)
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        client = scope.get("client")
        peer = client[0] if client else None
        trusted = self.settings.trusted_proxies
        state["client_addr"] = client_address(peer, ",".join(forwarded) or None, trusted) if trusted else peer

        handler = scope.get("route_handler")
        if handler is not None and handler.opt.get("own_auth"):
            scope["user"] = None  # the route checks its own credential (/metrics and its scrape token)
        else:
            scope["user"] = await self.authenticate(authorization)
        await self.app(scope, receive, send)

    async def authenticate(self, authorization: str | None) -> Principal | None:
        if authorization is None:
            return None
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise unauthorized("use 'Authorization: Bearer <token>' with an access token or API key")
        if credential.startswith(API_KEY_PREFIX):
            return await self.api_key_principal(credential)
        cached = self._verified.get(credential)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        try:
            claims = verify_access_token(
                self.keyring, credential, issuer=self.settings.jwt_issuer, audience=self.settings.jwt_audience
            )
        except InvalidToken as exc:
            raise unauthorized(str(exc)) from exc
        principal = Principal(user_id=claims.user_id, platform_roles=claims.platform_roles)
        self._remember(credential, principal, claims.expires_at)
        return principal

    def _remember(self, token: str, principal: Principal, expires_at: float) -> None:
        """Keep verified tokens until they expire, so a client's repeated calls skip the signature check.

        Only tokens that verified are kept, keyed by their full text; the cache is per process and bounded.
        """
        self._verified[token] = (principal, expires_at)
        self._verified.move_to_end(token)
        while len(self._verified) > VERIFIED_TOKENS_KEPT:
            self._verified.popitem(last=False)

    async def api_key_principal(self, secret: str) -> Principal:
        async with self.sessionmaker() as session:
            key = (
                await session.execute(
                    select(
                        ApiKey.id, ApiKey.user_id, ApiKey.org_id, ApiKey.scopes, ApiKey.expires_at, ApiKey.last_used_at
                    )
                    .join(User, User.id == ApiKey.user_id)
                    .where(
                        ApiKey.secret_hash == secret_digest(secret),
                        ApiKey.revoked_at.is_(None),
                        User.disabled_at.is_(None),  # a disabled account's keys stop working with it
                    )
                )
            ).one_or_none()
            if key is None:
                raise unauthorized("the API key is unknown or has been revoked")
            now = utcnow()
            if key.expires_at <= now:
                raise unauthorized("the API key has expired; create a new one at /api/v1/api-keys")
            if key.last_used_at is None or now - key.last_used_at >= LAST_USED_PRECISION:
                # To the minute: at most one write a minute per key, and none for the other requests.
                await session.execute(
                    update(ApiKey)
                    .where(
                        ApiKey.id == key.id,
                        or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= now - LAST_USED_PRECISION),
                    )
                    .values(last_used_at=now)
                )
                await session.commit()
        return Principal(
            user_id=key.user_id,
            platform_roles=frozenset(),
            api_key_id=key.id,
            api_key_org_id=key.org_id,
            scopes=frozenset(key.scopes),
        )
