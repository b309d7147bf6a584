"""Authentication: forged, expired and replayed credentials are refused; failed logins are audited and throttled.

Every refusal is checked against a positive control built the same way, so a test fails if the app
starts accepting the forgery or starts refusing the genuine credential.

Failed logins count against the account *and* the client address. The shared ``client`` fixture
always presents the address ``testclient``, so tests that fail logins on purpose send them from
their own documentation-range address (``address_client``); otherwise the failures of one test would
add up to the address limit and lock every later sign-in of the run.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from litestar import Litestar
from litestar.enums import ScopeType
from litestar.testing import AsyncTestClient
from litestar.types import Receive, Scope, Send

from app.auth.keys import KeyRing
from app.auth.service import ADDRESS_FAILURE_FACTOR
from app.auth.tokens import issue_access_token
from app.main import create_app
from app.settings import Settings
from tests.conftest import PASSWORD, Account, make_org, sequence_audit, sign_up, unique_email

PROBLEM = "application/problem+json"
WRONG_PASSWORD = "not the password at all"
BASE_URL = "http://testserver.local"


def assert_problem(response: httpx.Response, status: int, type_: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    if type_ is not None:
        assert body["type"] == type_, body
    return body


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def fresh_address() -> str:
    """A client address of the IPv6 documentation range, unique to the caller."""
    return f"2001:db8::{secrets.token_hex(2)}:{secrets.token_hex(2)}"


class FromAddress:
    """ASGI wrapper that presents every HTTP request as coming from ``address``."""

    def __init__(self, app: Litestar, address: str) -> None:
        self.app = app
        self.address = address

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP:
            scope = {**scope, "client": (self.address, 40000)}
        await self.app(scope, receive, send)


@contextlib.asynccontextmanager
async def client_from(settings: Settings, address: str) -> AsyncIterator[AsyncTestClient[Any]]:
    """A client of a new app instance on the same database, connecting from ``address``.

    The test client runs each app in an event loop of its own, so an app's connection pool cannot be
    shared with another client; a new instance is the honest way to get a second client address.
    """
    async with AsyncTestClient(app=FromAddress(create_app(settings), address), base_url=BASE_URL) as other:
        yield other


@pytest.fixture
async def address_client(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with client_from(settings, fresh_address()) as other:
        yield other


def keyring_of(app: Litestar) -> KeyRing:
    keyring: KeyRing = app.state.keyring
    return keyring


def claims_for(account: Account, settings: Settings, **overrides: Any) -> dict[str, Any]:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    claims: dict[str, Any] = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": account.id,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": secrets.token_urlsafe(12),
        "roles": [],
    }
    claims.update(overrides)
    return claims


def sign_hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


async def me_status(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/api/v1/me", headers=bearer(token))


async def password_login(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post(
        "/api/v1/auth/token", json={"grant_type": "password", "username": email, "password": password}
    )


# --- the public key set -------------------------------------------------------------------------------


async def test_jwks_publishes_the_ed25519_signing_key(app: Litestar, client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    keys = response.json()["keys"]
    active = keyring_of(app).active
    [jwk] = [k for k in keys if k["kid"] == active.kid]
    assert jwk["kty"] == "OKP"
    assert jwk["crv"] == "Ed25519"
    assert jwk["alg"] == "EdDSA"
    assert "d" not in jwk, "the private key must never be published"
    assert len(b64url_decode(jwk["x"])) == 32

    # A token the app issues verifies with the published key alone.
    account = await sign_up(client)
    assert jwt.get_unverified_header(account.token)["kid"] == active.kid
    public = jwt.PyJWK(jwk).key
    assert isinstance(public, Ed25519PublicKey)
    claims = jwt.decode(account.token, public, algorithms=["EdDSA"], audience="corpora-api", issuer="corpora")
    assert claims["sub"] == account.id


# --- forged and unusable access tokens ---------------------------------------------------------------


async def test_genuine_token_is_accepted(app: Litestar, client: AsyncTestClient[Litestar], settings: Settings) -> None:
    """The positive control for the attacks below: a token minted the same way, but honestly, works."""
    account = await sign_up(client)
    token = jwt.encode(
        claims_for(account, settings),
        keyring_of(app).active.private,
        algorithm="EdDSA",
        headers={"kid": keyring_of(app).active.kid, "typ": "at+jwt"},
    )
    response = await me_status(client, token)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == account.id


@pytest.mark.parametrize("typ", [None, "JWT", "corpora-receipt+jwt", "corpora-audit-checkpoint+jwt"])
async def test_a_token_of_another_type_is_refused(
    app: Litestar, client: AsyncTestClient[Litestar], settings: Settings, typ: str | None
) -> None:
    """Every claim right and our signature, but not issued as an access token (RFC 9068 ``typ``)."""
    account = await sign_up(client)
    active = keyring_of(app).active
    headers = {"kid": active.kid} if typ is None else {"kid": active.kid, "typ": typ}
    token = jwt.encode(claims_for(account, settings), active.private, algorithm="EdDSA", headers=headers)
    body = assert_problem(await me_status(client, token), 401, "unauthorized")
    assert "not an access token" in body["detail"]


async def test_alg_none_token_is_refused(client: AsyncTestClient[Litestar], settings: Settings) -> None:
    account = await sign_up(client)
    claims = claims_for(account, settings)
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    for token in (f"{header}.{payload}.", f"{header}.{payload}.{account.token.rsplit('.', 1)[1]}"):
        assert_problem(await me_status(client, token), 401, "unauthorized")
    # PyJWT's own rendering of an unsigned token, with the real kid for good measure.
    kid = jwt.get_unverified_header(account.token)["kid"]
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": kid})  # type: ignore[arg-type]
    response = await me_status(client, unsigned)
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_hs256_signed_with_the_public_key_is_refused(
    app: Litestar, client: AsyncTestClient[Litestar], settings: Settings
) -> None:
    """The algorithm-confusion attack: HMAC keyed with the published public key, in every usual encoding."""
    account = await sign_up(client)
    jwk = (await client.get("/.well-known/jwks.json")).json()["keys"][0]
    raw = b64url_decode(jwk["x"])
    public = Ed25519PublicKey.from_public_bytes(raw)
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    claims = claims_for(account, settings)
    for secret in (raw, jwk["x"].encode(), pem, der, json.dumps(jwk).encode()):
        for header in ({"alg": "HS256", "typ": "JWT", "kid": jwk["kid"]}, {"alg": "HS256", "typ": "JWT"}):
            token = sign_hs256(header, claims, secret)
            assert_problem(await me_status(client, token), 401, "unauthorized")


async def test_expired_token_is_refused(app: Litestar, client: AsyncTestClient[Litestar], settings: Settings) -> None:
    account = await sign_up(client)

    def token_at(now: dt.datetime) -> str:
        return issue_access_token(
            keyring_of(app),
            user_id=uuid.UUID(account.id),
            platform_roles=[],
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            ttl_seconds=settings.access_token_ttl_seconds,
            now=now,
        )

    assert (await me_status(client, token_at(dt.datetime.now(dt.UTC)))).status_code == 200
    expired = token_at(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    body = assert_problem(await me_status(client, expired), 401, "unauthorized")
    assert "expired" in body["detail"]
    # Just past expiry, beyond the small clock-skew leeway.
    just_expired = token_at(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=settings.access_token_ttl_seconds + 30))
    assert_problem(await me_status(client, just_expired), 401, "unauthorized")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("aud", "another-api"),
        ("aud", ["another-api"]),
        ("iss", "https://attacker.example"),
        ("iss", ""),
    ],
)
async def test_wrong_audience_or_issuer_is_refused(
    app: Litestar, client: AsyncTestClient[Litestar], settings: Settings, field: str, value: Any
) -> None:
    account = await sign_up(client)
    active = keyring_of(app).active
    token = jwt.encode(
        claims_for(account, settings, **{field: value}),
        active.private,
        algorithm="EdDSA",
        headers={"kid": active.kid, "typ": "at+jwt"},
    )
    assert_problem(await me_status(client, token), 401, "unauthorized")


@pytest.mark.parametrize("missing", ["exp", "iss", "aud", "sub", "jti"])
async def test_token_missing_a_required_claim_is_refused(
    app: Litestar, client: AsyncTestClient[Litestar], settings: Settings, missing: str
) -> None:
    account = await sign_up(client)
    active = keyring_of(app).active
    claims = claims_for(account, settings)
    del claims[missing]
    token = jwt.encode(claims, active.private, algorithm="EdDSA", headers={"kid": active.kid, "typ": "at+jwt"})
    assert_problem(await me_status(client, token), 401, "unauthorized")


async def test_tampered_payload_is_refused(client: AsyncTestClient[Litestar]) -> None:
    """Swap ``sub`` for another user's id (and grant a platform role) while keeping the signature."""
    victim = await sign_up(client)
    attacker = await sign_up(client)
    header, payload, signature = attacker.token.split(".")
    claims = json.loads(b64url_decode(payload))
    assert claims["sub"] == attacker.id
    for changes in ({"sub": victim.id}, {"roles": ["admin"]}, {"exp": claims["exp"] + 86400}):
        forged = f"{header}.{b64url(json.dumps(claims | changes).encode())}.{signature}"
        assert_problem(await me_status(client, forged), 401, "unauthorized")
    # The untouched token still works, and is the attacker's.
    me = await me_status(client, attacker.token)
    assert me.status_code == 200
    assert me.json()["id"] == attacker.id


async def test_token_signed_by_an_unknown_key_is_refused(
    app: Litestar, client: AsyncTestClient[Litestar], settings: Settings
) -> None:
    account = await sign_up(client)
    stranger = Ed25519PrivateKey.generate()
    claims = claims_for(account, settings)
    unknown_kid = jwt.encode(claims, stranger, algorithm="EdDSA", headers={"kid": "not-a-key-of-ours", "typ": "at+jwt"})
    body = assert_problem(await me_status(client, unknown_kid), 401, "unauthorized")
    assert "unknown key" in body["detail"]
    no_kid = jwt.encode(claims, stranger, algorithm="EdDSA")
    assert_problem(await me_status(client, no_kid), 401, "unauthorized")
    # A stranger's key that claims our kid fails on the signature.
    our_kid = jwt.encode(
        claims, stranger, algorithm="EdDSA", headers={"kid": keyring_of(app).active.kid, "typ": "at+jwt"}
    )
    assert_problem(await me_status(client, our_kid), 401, "unauthorized")


@pytest.mark.parametrize(
    "authorization",
    ["Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer not-a-jwt", "Bearer a.b.c", "Bearer crp_unknownkey"],
)
async def test_garbage_credentials_are_refused(client: AsyncTestClient[Litestar], authorization: str) -> None:
    response = await client.get("/api/v1/me", headers={"Authorization": authorization})
    assert_problem(response, 401, "unauthorized")


async def test_no_credentials_is_401(client: AsyncTestClient[Litestar]) -> None:
    assert_problem(await client.get("/api/v1/me"), 401, "unauthorized")


# --- API keys ----------------------------------------------------------------------------------------


async def create_api_key(
    client: httpx.AsyncClient, owner: Account, org: str, scopes: list[str] | None = None
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/api-keys",
        json={
            "name": "ci",
            "org": org,
            "scopes": scopes or ["catalog:read"],
            "expires_at": (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat(),
        },
        headers=owner.headers,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert body["key"].startswith("crp_")
    return body


async def test_revoked_api_key_is_refused(client: AsyncTestClient[Litestar], db: asyncpg.Connection) -> None:
    owner = await sign_up(client)
    org = await make_org(client, owner)
    key = await create_api_key(client, owner, org)
    me = await me_status(client, key["key"])
    assert me.status_code == 200, me.text
    assert me.json()["id"] == owner.id

    revoked = await client.delete(f"/api/v1/api-keys/{key['id']}", headers=owner.headers)
    assert revoked.status_code == 204, revoked.text
    assert await db.fetchval("SELECT revoked_at IS NOT NULL FROM api_keys WHERE id = $1", uuid.UUID(key["id"]))
    assert_problem(await me_status(client, key["key"]), 401, "unauthorized")
    # Revoking twice finds nothing left to revoke.
    assert_problem(await client.delete(f"/api/v1/api-keys/{key['id']}", headers=owner.headers), 404)


async def test_expired_api_key_is_refused(client: AsyncTestClient[Litestar], db: asyncpg.Connection) -> None:
    owner = await sign_up(client)
    org = await make_org(client, owner)
    key = await create_api_key(client, owner, org)
    assert (await me_status(client, key["key"])).status_code == 200
    await db.execute(
        "UPDATE api_keys SET created_at = now() - interval '2 days', expires_at = now() - interval '1 second'"
        " WHERE id = $1",
        uuid.UUID(key["id"]),
    )
    body = assert_problem(await me_status(client, key["key"]), 401, "unauthorized")
    assert "expired" in body["detail"]


async def test_disabled_account_loses_its_api_keys_and_sessions(
    client: AsyncTestClient[Litestar], db: asyncpg.Connection
) -> None:
    owner = await sign_up(client)
    org = await make_org(client, owner)
    key = await create_api_key(client, owner, org)
    assert (await me_status(client, key["key"])).status_code == 200
    await db.execute("UPDATE users SET disabled_at = now() WHERE id = $1", uuid.UUID(owner.id))
    try:
        assert_problem(await me_status(client, key["key"]), 401, "unauthorized")
        assert_problem(await refresh(client, owner.refresh_token), 401, "unauthorized")
    finally:
        await db.execute("UPDATE users SET disabled_at = NULL WHERE id = $1", uuid.UUID(owner.id))
    # Re-enabled, the same key works again: it was refused for the account, not revoked.
    assert (await me_status(client, key["key"])).status_code == 200


async def test_api_key_secret_is_stored_only_as_a_hash(
    client: AsyncTestClient[Litestar], db: asyncpg.Connection
) -> None:
    owner = await sign_up(client)
    org = await make_org(client, owner)
    key = await create_api_key(client, owner, org)
    stored = await db.fetchval("SELECT secret_hash FROM api_keys WHERE id = $1", uuid.UUID(key["id"]))
    assert stored == hashlib.sha256(key["key"].encode()).digest()
    assert key["key"].encode() not in stored


# --- refresh tokens ----------------------------------------------------------------------------------


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/api/v1/auth/token", json={"grant_type": "refresh_token", "refresh_token": token})


async def test_refresh_rotates_and_reuse_revokes_the_family(
    client: AsyncTestClient[Litestar], db: asyncpg.Connection
) -> None:
    account = await sign_up(client)
    first = account.refresh_token

    rotated = await refresh(client, first)
    assert rotated.status_code == 200, rotated.text
    pair = rotated.json()
    assert pair["token_type"] == "Bearer"
    assert pair["refresh_token"] != first
    assert pair["access_token"] != account.token
    assert (await me_status(client, pair["access_token"])).status_code == 200

    # The spent token presented again: refused, and the whole family with it.
    assert_problem(await refresh(client, first), 401, "unauthorized")
    assert_problem(await refresh(client, pair["refresh_token"]), 401, "unauthorized")
    await sequence_audit(db)
    events = await db.fetch(
        "SELECT actor, details FROM audit_events WHERE action = 'auth.refresh_reuse_detected' AND target_id = $1",
        account.id,
    )
    assert len(events) == 1
    assert events[0]["actor"] == f"user:{account.id}"
    live = await db.fetchval(
        "SELECT count(*) FROM refresh_tokens WHERE user_id = $1 AND revoked_at IS NULL", uuid.UUID(account.id)
    )
    assert live == 0

    # Signing in again starts a new, working family.
    login = await password_login(client, account.email, PASSWORD)
    assert login.status_code == 200
    assert (await refresh(client, login.json()["refresh_token"])).status_code == 200


async def test_unknown_refresh_token_is_refused(client: AsyncTestClient[Litestar]) -> None:
    assert_problem(await refresh(client, "crt_" + secrets.token_urlsafe(32)), 401, "unauthorized")


async def test_expired_refresh_token_is_refused(client: AsyncTestClient[Litestar], db: asyncpg.Connection) -> None:
    account = await sign_up(client)
    await db.execute(
        "UPDATE refresh_tokens SET expires_at = now() - interval '1 second' WHERE token_hash = $1",
        hashlib.sha256(account.refresh_token.encode()).digest(),
    )
    assert_problem(await refresh(client, account.refresh_token), 401, "unauthorized")


# --- failed logins: audited and throttled ------------------------------------------------------------


async def test_wrong_password_is_refused_and_audited(
    client: AsyncTestClient[Litestar], address_client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    account = await sign_up(client)
    await sequence_audit(db)
    before = await db.fetchval("SELECT count(*) FROM audit_events WHERE action = 'auth.login_failed'")
    response = await password_login(address_client, account.email, WRONG_PASSWORD)
    body = assert_problem(response, 401, "unauthorized")
    assert "access_token" not in body
    await sequence_audit(db)
    events = await db.fetch(
        "SELECT target_type, details, client_addr FROM audit_events"
        " WHERE action = 'auth.login_failed' AND target_id = $1",
        account.id,
    )
    assert len(events) == 1
    assert events[0]["target_type"] == "user"
    assert json.loads(events[0]["details"])["username"] == account.email
    assert events[0]["client_addr"] is not None
    await sequence_audit(db)
    after = await db.fetchval("SELECT count(*) FROM audit_events WHERE action = 'auth.login_failed'")
    assert after == before + 1
    # The same message for an account that does not exist: no account enumeration.
    ghost = await password_login(address_client, unique_email("ghost"), WRONG_PASSWORD)
    assert assert_problem(ghost, 401, "unauthorized")["detail"] == body["detail"]


async def test_login_is_throttled_after_repeated_failures(
    client: AsyncTestClient[Litestar], address_client: AsyncTestClient[Any], settings: Settings
) -> None:
    account = await sign_up(client)
    for _ in range(settings.login_max_failures):
        assert_problem(await password_login(address_client, account.email, WRONG_PASSWORD), 401)

    throttled = await password_login(address_client, account.email, WRONG_PASSWORD)
    assert_problem(throttled, 429, "login-throttled")
    retry_after = int(throttled.headers["retry-after"])
    assert 0 < retry_after <= settings.login_window_seconds
    # The right password does not get through from that address while it is locked out of the account...
    assert_problem(await password_login(address_client, account.email, PASSWORD), 429, "login-throttled")
    # ...but the owner, elsewhere, is not locked out by someone else's failures.
    assert (await password_login(client, account.email, PASSWORD)).status_code == 200

    # The lock is per account: someone else signs in from the same address.
    other = await sign_up(client)
    assert (await password_login(address_client, other.email, PASSWORD)).status_code == 200


async def test_successful_login_resets_the_account_counter(
    client: AsyncTestClient[Litestar], address_client: AsyncTestClient[Any], settings: Settings
) -> None:
    account = await sign_up(client)
    for _ in range(2):
        for _ in range(settings.login_max_failures - 1):
            assert_problem(await password_login(address_client, account.email, WRONG_PASSWORD), 401)
        assert (await password_login(address_client, account.email, PASSWORD)).status_code == 200


async def test_login_is_throttled_per_client_address(client: AsyncTestClient[Litestar], settings: Settings) -> None:
    """Failures spread over many accounts from one address lock that address, and only that address."""
    account = await sign_up(client)
    # A lower account limit keeps the address limit (a multiple of it) cheap to reach.
    strict = dataclasses.replace(settings, login_max_failures=2)
    async with client_from(strict, fresh_address()) as attacker:
        for _ in range(strict.login_max_failures * ADDRESS_FAILURE_FACTOR):
            assert_problem(await password_login(attacker, unique_email("spray"), WRONG_PASSWORD), 401)
        assert_problem(await password_login(attacker, account.email, PASSWORD), 429, "login-throttled")
    # The account itself was never attacked: it signs in from anywhere else.
    assert (await password_login(client, account.email, PASSWORD)).status_code == 200


async def test_throttling_is_shared_between_app_processes(
    client: AsyncTestClient[Litestar], settings: Settings
) -> None:
    """Failures counted by one app instance lock the account for another: the counter lives in PostgreSQL."""
    account = await sign_up(client)
    address = fresh_address()
    async with client_from(settings, address) as first, client_from(settings, address) as second:
        assert (await password_login(second, account.email, PASSWORD)).status_code == 200
        for _ in range(settings.login_max_failures):
            assert_problem(await password_login(first, account.email, WRONG_PASSWORD), 401)
        assert_problem(await password_login(second, account.email, PASSWORD), 429, "login-throttled")
