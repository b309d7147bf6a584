"""Bad input gets a clear 4xx problem response and changes nothing.

Every case checks the problem document (``application/problem+json`` with ``type``, ``title``,
``status``, ``detail``, and ``errors`` naming the field where one is to blame) and that no user,
organisation, membership, API key, refresh token or audit event was written.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.main import create_app
from app.settings import Settings
from tests.conftest import PASSWORD, Account, make_org, sequence_audit, sign_up, unique_email, unique_slug

PROBLEM = "application/problem+json"
TABLES = ("users", "organizations", "memberships", "api_keys", "refresh_tokens", "audit_events")

Client = AsyncTestClient[Litestar]


def assert_problem(response: httpx.Response, status: int, type_: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert isinstance(body["type"], str)
    assert body["type"]
    assert body["title"]
    assert body["detail"]
    if type_ is not None:
        assert body["type"] == type_, body
    return body


def error_fields(body: dict[str, Any]) -> list[str]:
    return [str(e["field"]) for e in body.get("errors") or []]


async def counts(db: asyncpg.Connection) -> dict[str, int]:
    """Rows per table; audit events of background jobs (actor ``system``) may come and go meanwhile."""
    await sequence_audit(db)
    found = {table: await db.fetchval(f"SELECT count(*) FROM {table}") for table in TABLES}  # noqa: S608
    found["audit_events"] = await db.fetchval("SELECT count(*) FROM audit_events WHERE actor <> 'system'")
    return found


@dataclasses.dataclass(frozen=True)
class World:
    owner: Account
    org: str
    member: Account  # a plain user, not in ``org``


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(client: Client) -> World:
    owner = await sign_up(client)
    org = await make_org(client, owner)
    return World(owner=owner, org=org, member=await sign_up(client))


def in_days(days: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(days=days)).isoformat()


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str
    body: Any = None
    raw: bytes | None = None
    status: int = 422
    type_: str | None = "validation-error"
    field: str | None = None  # a field the problem's ``errors`` must name
    auth: bool = False
    content_type: str = "application/json"


def signup(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"email": unique_email("bad"), "password": PASSWORD, "display_name": "Bad Input"}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def api_key(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "k", "org": "{org}", "scopes": ["catalog:read"], "expires_at": in_days(1)}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


CASES = [
    # Malformed JSON.
    Case(
        "malformed-json-signup", "POST", "/api/v1/users", raw=b'{"email": "a@b.co",', status=400, type_="malformed-json"
    ),
    Case(
        "malformed-json-token",
        "POST",
        "/api/v1/auth/token",
        raw=b"{grant_type: password}",
        status=400,
        type_="malformed-json",
    ),
    Case(
        "malformed-json-org",
        "POST",
        "/api/v1/orgs",
        raw=b'{"slug": "fine-slug", "name": ',
        status=400,
        type_="malformed-json",
        auth=True,
    ),
    Case("not-utf8", "POST", "/api/v1/users", raw=b'{"email": "\xff\xfe"}', status=400, type_="malformed-json"),
    Case("empty-body", "POST", "/api/v1/users", raw=b"", status=400, type_=None),
    Case("json-array", "POST", "/api/v1/users", body=[1, 2, 3]),
    Case("json-null", "POST", "/api/v1/users", raw=b"null"),
    Case(
        "trailing-garbage",
        "POST",
        "/api/v1/users",
        raw=json.dumps(signup()).encode() + b"}",
        status=400,
        type_="malformed-json",
    ),
    # Wrong types.
    Case("email-number", "POST", "/api/v1/users", body=signup(email=12345), field="email"),
    Case("password-list", "POST", "/api/v1/users", body=signup(password=["a", "b"]), field="password"),
    Case("display-name-null", "POST", "/api/v1/users", body=signup(display_name=None), field="display_name"),
    Case(
        "org-kind-number",
        "POST",
        "/api/v1/orgs",
        body={"slug": "ok-slug", "name": "n", "kind": 3},
        field="kind",
        auth=True,
    ),
    Case("scopes-string", "POST", "/api/v1/api-keys", body=api_key(scopes="catalog:read"), field="scopes", auth=True),
    # Unknown fields.
    Case("unknown-field-signup", "POST", "/api/v1/users", body=signup(is_admin=True), field="is_admin"),
    Case(
        "unknown-field-org",
        "POST",
        "/api/v1/orgs",
        body={"slug": "ok-slug", "name": "n", "kind": "buyer", "owner": "someone"},
        field="owner",
        auth=True,
    ),
    Case(
        "unknown-field-token",
        "POST",
        "/api/v1/auth/token",
        body={"grant_type": "password", "username": "a@b.co", "password": "x", "scope": "admin"},
        field="scope",
    ),
    # Missing fields.
    Case("missing-email", "POST", "/api/v1/users", body=signup(email=...), field="email"),
    Case("missing-password", "POST", "/api/v1/users", body=signup(password=...), field="password"),
    Case("missing-display-name", "POST", "/api/v1/users", body=signup(display_name=...), field="display_name"),
    Case("missing-org-kind", "POST", "/api/v1/orgs", body={"slug": "ok-slug", "name": "n"}, field="kind", auth=True),
    Case(
        "missing-member-role",
        "POST",
        "/api/v1/orgs/{org}/members",
        body={"email": "a@example.com"},
        field="role",
        auth=True,
    ),
    Case(
        "missing-username",
        "POST",
        "/api/v1/auth/token",
        body={"grant_type": "password", "password": "x"},
        field="username",
    ),
    Case(
        "missing-grant-type",
        "POST",
        "/api/v1/auth/token",
        body={"username": "a@b.co", "password": "x"},
        field="grant_type",
    ),
    # Field rules.
    Case("email-without-at", "POST", "/api/v1/users", body=signup(email="not-an-email"), field="email"),
    Case("password-short", "POST", "/api/v1/users", body=signup(password="Xy7!q"), field="password"),
    Case("password-common", "POST", "/api/v1/users", body=signup(password="password123"), field="password"),
    Case("password-repetitive", "POST", "/api/v1/users", body=signup(password="aaaaaaaaaaaaaaaa"), field="password"),
    Case(
        "password-contains-email",
        "POST",
        "/api/v1/users",
        body=signup(email="marguerite@example.com", password="Marguerite-2024!"),
        field="password",
    ),
    Case("password-too-long", "POST", "/api/v1/users", body=signup(password="x" * 5000), field="password"),
    Case("empty-display-name", "POST", "/api/v1/users", body=signup(display_name=""), field="display_name"),
    Case(
        "org-slug-uppercase",
        "POST",
        "/api/v1/orgs",
        body={"slug": "Bad-Slug", "name": "n", "kind": "buyer"},
        field="slug",
        auth=True,
    ),
    Case(
        "org-slug-traversal",
        "POST",
        "/api/v1/orgs",
        body={"slug": "../etc", "name": "n", "kind": "buyer"},
        field="slug",
        auth=True,
    ),
    Case(
        "org-slug-too-short",
        "POST",
        "/api/v1/orgs",
        body={"slug": "a", "name": "n", "kind": "buyer"},
        field="slug",
        auth=True,
    ),
    Case(
        "org-slug-too-long",
        "POST",
        "/api/v1/orgs",
        body={"slug": "a" * 64, "name": "n", "kind": "buyer"},
        field="slug",
        auth=True,
    ),
    Case(
        "org-kind-unknown",
        "POST",
        "/api/v1/orgs",
        body={"slug": "ok-slug", "name": "n", "kind": "reseller"},
        field="kind",
        auth=True,
    ),
    Case(
        "member-role-unknown",
        "POST",
        "/api/v1/orgs/{org}/members",
        body={"email": "a@example.com", "role": "superuser"},
        field="role",
        auth=True,
    ),
    Case(
        "api-key-scope-unknown",
        "POST",
        "/api/v1/api-keys",
        body=api_key(scopes=["catalog:read", "root"]),
        field="scopes",
        auth=True,
    ),
    Case("api-key-no-scopes", "POST", "/api/v1/api-keys", body=api_key(scopes=[]), field="scopes", auth=True),
    Case(
        "api-key-expired",
        "POST",
        "/api/v1/api-keys",
        body=api_key(expires_at=in_days(-1)),
        field="expires_at",
        auth=True,
    ),
    Case(
        "api-key-naive-time",
        "POST",
        "/api/v1/api-keys",
        body=api_key(expires_at="2030-01-01T00:00:00"),
        field="expires_at",
        auth=True,
    ),
    Case(
        "api-key-not-a-time",
        "POST",
        "/api/v1/api-keys",
        body=api_key(expires_at="next tuesday"),
        field="expires_at",
        auth=True,
    ),
    Case(
        "api-key-too-far",
        "POST",
        "/api/v1/api-keys",
        body=api_key(expires_at=in_days(4000)),
        field="expires_at",
        auth=True,
    ),
    Case(
        "grant-type-unknown",
        "POST",
        "/api/v1/auth/token",
        body={"grant_type": "client_credentials", "client_id": "x", "client_secret": "y"},
        field="grant_type",
    ),
    Case("grant-type-number", "POST", "/api/v1/auth/token", body={"grant_type": 1}, field="grant_type"),
    # The NUL character, which PostgreSQL text cannot hold, in bodies, paths and queries.
    Case(
        "nul-email", "POST", "/api/v1/users", body=signup(email="a\u0000@example.com"), status=400, type_="invalid-text"
    ),
    Case(
        "nul-display-name",
        "POST",
        "/api/v1/users",
        body=signup(display_name="a\u0000b"),
        status=400,
        type_="invalid-text",
    ),
    Case(
        "nul-username",
        "POST",
        "/api/v1/auth/token",
        body={"grant_type": "password", "username": "a\u0000@example.com", "password": "x"},
        status=400,
        type_="invalid-text",
    ),
    Case(
        "nul-org-name",
        "POST",
        "/api/v1/orgs",
        body={"slug": "nul-org", "name": "a\u0000b", "kind": "buyer"},
        status=400,
        type_="invalid-text",
        auth=True,
    ),
    Case("nul-in-path", "GET", "/api/v1/orgs/a%00b", status=400, type_="invalid-text", auth=True),
    Case("nul-in-query", "GET", "/api/v1/products?org=a%00b", status=400, type_="invalid-text"),
    # A streamed answer refuses it before its headers go out, not mid-stream.
    Case(
        "nul-in-export-query", "GET", "/api/v1/audit/export?action=a%00b", status=400, type_="invalid-text", auth=True
    ),
    # Wrong media type.
    Case(
        "form-encoded",
        "POST",
        "/api/v1/users",
        raw=b"email=a%40b.co&password=x",
        status=415,
        type_="unsupported-media-type",
        content_type="application/x-www-form-urlencoded",
    ),
]


async def send(client: Client, world: World, case: Case) -> httpx.Response:
    path = case.path.format(org=world.org)
    headers = {"Content-Type": case.content_type}
    if case.auth:
        headers.update(world.owner.headers)
    content = case.raw if case.raw is not None else json.dumps(case.body).replace("{org}", world.org).encode()
    return await client.request(case.method, path, content=content, headers=headers)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_bad_input_is_refused_and_changes_nothing(
    client: Client, db: asyncpg.Connection, world: World, case: Case
) -> None:
    before = await counts(db)
    response = await send(client, world, case)
    body = assert_problem(response, case.status, case.type_)
    if case.field is not None:
        assert case.field in error_fields(body), body
        assert case.field in body["detail"]
    assert await counts(db) == before


async def test_oversized_body_is_refused(client: Client, db: asyncpg.Connection, settings: Settings) -> None:
    before = await counts(db)
    huge = json.dumps(signup(display_name="x" * (settings.max_body_bytes + 1))).encode()
    response = await client.post("/api/v1/users", content=huge, headers={"Content-Type": "application/json"})
    body = assert_problem(response, 413, "body-too-large")
    assert "instance" in body
    assert await counts(db) == before


async def test_oversized_streamed_body_is_refused(db: asyncpg.Connection, settings: Settings) -> None:
    """Without a Content-Length the limit still holds: the body is cut off as it arrives.

    The test client cannot stream a request body, so this talks ASGI to an app instance of its own.
    """
    before = await counts(db)
    chunk = b" " * 8192

    async def stream() -> AsyncIterator[bytes]:
        yield b'{"email": "big@example.com", "password": "correct horse battery staple", "display_name": "big"'
        for _ in range(settings.max_body_bytes // len(chunk) + 2):
            yield chunk
        yield b"}"

    app = create_app(settings)
    try:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as c:
            response = await c.post("/api/v1/users", content=stream(), headers={"Content-Type": "application/json"})
            assert "content-length" not in response.request.headers
    finally:
        await app.state.engine.dispose()
    assert_problem(response, 413, "body-too-large")
    assert await counts(db) == before


async def test_body_just_under_the_limit_is_accepted(client: Client, settings: Settings) -> None:
    """The control for the two tests above: size alone, not the padding, is what gets refused."""
    body = json.dumps(signup()).encode()
    padded = body[:-1] + b" " * (settings.max_body_bytes - len(body) - 16) + b"}"
    assert len(padded) < settings.max_body_bytes
    response = await client.post("/api/v1/users", content=padded, headers={"Content-Type": "application/json"})
    assert response.status_code == 201, response.text


async def test_duplicate_email_is_a_conflict_whatever_the_case(client: Client, db: asyncpg.Connection) -> None:
    local = f"upper-{uuid.uuid4().hex[:8]}"
    first = await client.post(
        "/api/v1/users", json={"email": f"{local.upper()}@Example.com", "password": PASSWORD, "display_name": "U"}
    )
    assert first.status_code == 201, first.text
    assert first.json()["email"] == f"{local}@example.com"
    before = await counts(db)
    for email in (f"{local}@example.com", f"{local.upper()}@EXAMPLE.COM", f"  {local}@example.com "):
        again = await client.post("/api/v1/users", json={"email": email, "password": PASSWORD, "display_name": "U2"})
        if again.status_code == 422:  # surrounding spaces may be refused as a malformed address instead
            assert email != email.strip()
            continue
        assert_problem(again, 409, "email-taken")
    assert await counts(db) == before
    # Signing in works with any capitalisation.
    login = await client.post(
        "/api/v1/auth/token",
        json={"grant_type": "password", "username": f"{local.upper()}@example.COM", "password": PASSWORD},
    )
    assert login.status_code == 200, login.text


async def test_duplicate_org_slug_is_a_conflict(client: Client, db: asyncpg.Connection, world: World) -> None:
    slug = unique_slug()
    body = {"slug": slug, "name": "First", "kind": "buyer"}
    assert (await client.post("/api/v1/orgs", json=body, headers=world.owner.headers)).status_code == 201
    before = await counts(db)
    again = await client.post("/api/v1/orgs", json=body | {"name": "Second"}, headers=world.member.headers)
    assert_problem(again, 409, "slug-taken")
    assert await counts(db) == before


async def test_adding_an_unknown_or_existing_member(client: Client, db: asyncpg.Connection, world: World) -> None:
    before = await counts(db)
    unknown = await client.post(
        f"/api/v1/orgs/{world.org}/members",
        json={"email": unique_email("nobody"), "role": "member"},
        headers=world.owner.headers,
    )
    assert_problem(unknown, 404, "user-not-found")
    existing = await client.post(
        f"/api/v1/orgs/{world.org}/members",
        json={"email": world.owner.email, "role": "member"},
        headers=world.owner.headers,
    )
    assert_problem(existing, 409, "already-member")
    assert await counts(db) == before


@pytest.mark.parametrize("key_id", ["not-a-uuid", "1234", "00000000-0000-0000-0000-00000000000g", "..%2F..%2Fusers"])
async def test_non_uuid_api_key_id(client: Client, db: asyncpg.Connection, world: World, key_id: str) -> None:
    before = await counts(db)
    response = await client.delete(f"/api/v1/api-keys/{key_id}", headers=world.owner.headers)
    assert 400 <= response.status_code < 500, response.text
    assert response.status_code != 405
    assert_problem(response, response.status_code)
    assert await counts(db) == before


async def test_unknown_api_key_id_is_not_found(client: Client, db: asyncpg.Connection, world: World) -> None:
    before = await counts(db)
    response = await client.delete(f"/api/v1/api-keys/{uuid.uuid4()}", headers=world.owner.headers)
    assert_problem(response, 404, "not-found")
    assert await counts(db) == before


async def test_unknown_route_and_method_are_problems(client: Client) -> None:
    assert_problem(await client.get("/api/v1/no-such-thing"), 404)
    assert_problem(await client.put("/api/v1/users", json={}), 405)
