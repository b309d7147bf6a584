"""Object-level access: what the caller may not see is a 404, what they may not do to what they see is a 403.

Each refusal comes with a control showing the same request succeeds for someone who is allowed, so
the tests fail if access is widened or if the resource simply does not work.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg
import httpx
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.conftest import Account, grant_platform_role, make_org, sequence_audit, sign_up

PROBLEM = "application/problem+json"

Client = AsyncTestClient[Litestar]


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


def key_headers(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def in_a_day() -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()


async def add_member(client: Client, actor_headers: dict[str, str], org: str, email: str, role: str) -> httpx.Response:
    return await client.post(f"/api/v1/orgs/{org}/members", json={"email": email, "role": role}, headers=actor_headers)


async def member_of(client: Client, owner: Account, org: str, role: str) -> Account:
    account = await sign_up(client)
    response = await add_member(client, owner.headers, org, account.email, role)
    assert response.status_code == 201, response.text
    return account


async def new_key(
    client: Client, account: Account, org: str, scopes: list[str], *, expect: int = 201
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/api-keys",
        json={"name": "k", "org": org, "scopes": scopes, "expires_at": in_a_day()},
        headers=account.headers,
    )
    assert response.status_code == expect, response.text
    body: dict[str, Any] = response.json()
    return body


async def membership_count(db: asyncpg.Connection, org: str) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM memberships m JOIN organizations o ON o.id = m.org_id WHERE o.slug = $1", org
    )
    return count


async def test_member_of_one_org_cannot_see_another(client: Client, db: asyncpg.Connection) -> None:
    alice = await sign_up(client)
    bob = await sign_up(client)
    org_a = await make_org(client, alice)
    org_b = await make_org(client, bob)
    outsider = await sign_up(client)

    assert (await client.get(f"/api/v1/orgs/{org_a}", headers=alice.headers)).status_code == 200
    assert (await client.get(f"/api/v1/orgs/{org_b}", headers=bob.headers)).status_code == 200
    hidden = assert_problem(await client.get(f"/api/v1/orgs/{org_b}", headers=alice.headers), 404, "not-found")
    # Indistinguishable from an org that does not exist.
    missing = assert_problem(await client.get("/api/v1/orgs/no-such-org-xyz", headers=alice.headers), 404)
    assert hidden["type"] == missing["type"]
    assert hidden["title"] == missing["title"]

    before = await membership_count(db, org_b)
    for role in ("member", "owner"):
        assert_problem(await add_member(client, alice.headers, org_b, outsider.email, role), 404, "not-found")
        assert_problem(await add_member(client, alice.headers, org_b, alice.email, role), 404, "not-found")
    assert await membership_count(db, org_b) == before


async def test_plain_member_cannot_add_members(client: Client, db: asyncpg.Connection) -> None:
    owner = await sign_up(client)
    org = await make_org(client, owner)
    member = await member_of(client, owner, org, "member")
    newcomer = await sign_up(client)

    # A member sees the org...
    assert (await client.get(f"/api/v1/orgs/{org}", headers=member.headers)).status_code == 200
    # ...but cannot change who is in it.
    before = await membership_count(db, org)
    for role in ("member", "admin", "owner"):
        assert_problem(await add_member(client, member.headers, org, newcomer.email, role), 403, "forbidden")
    assert await membership_count(db, org) == before
    # The owner can.
    assert (await add_member(client, owner.headers, org, newcomer.email, "member")).status_code == 201


async def test_admin_cannot_make_owners(client: Client) -> None:
    owner = await sign_up(client)
    org = await make_org(client, owner)
    admin = await member_of(client, owner, org, "admin")
    newcomer = await sign_up(client)
    assert_problem(await add_member(client, admin.headers, org, newcomer.email, "owner"), 403, "forbidden")
    assert (await add_member(client, admin.headers, org, newcomer.email, "member")).status_code == 201


async def test_org_auditor_reads_but_cannot_write(client: Client, db: asyncpg.Connection) -> None:
    owner = await sign_up(client)
    org = await make_org(client, owner)
    auditor = await member_of(client, owner, org, "auditor")
    newcomer = await sign_up(client)

    read = await client.get(f"/api/v1/orgs/{org}", headers=auditor.headers)
    assert read.status_code == 200
    assert read.json()["your_role"] == "auditor"

    before = await membership_count(db, org)
    assert_problem(await add_member(client, auditor.headers, org, newcomer.email, "member"), 403, "forbidden")
    assert await membership_count(db, org) == before

    keys_before = await db.fetchval("SELECT count(*) FROM api_keys WHERE user_id = $1", uuid.UUID(auditor.id))
    for scopes in (["catalog:write"], ["orders:write"], ["downloads"], ["org:admin"], ["audit:read", "catalog:write"]):
        refused = await client.post(
            "/api/v1/api-keys",
            json={"name": "k", "org": org, "scopes": scopes, "expires_at": in_a_day()},
            headers=auditor.headers,
        )
        assert_problem(refused, 403, "forbidden")
    assert await db.fetchval("SELECT count(*) FROM api_keys WHERE user_id = $1", uuid.UUID(auditor.id)) == keys_before
    # Read-only keys are fine.
    key = await new_key(client, auditor, org, ["audit:read", "catalog:read"])
    assert key["scopes"] == ["audit:read", "catalog:read"]


async def test_api_key_is_confined_to_its_org(client: Client, db: asyncpg.Connection) -> None:
    """The key's owner belongs to both orgs; the key sees only the one it was made for."""
    owner = await sign_up(client)
    org_a = await make_org(client, owner)
    org_b = await make_org(client, owner)
    key = await new_key(client, owner, org_a, ["catalog:read", "org:admin"])
    headers = key_headers(key["key"])

    assert (await client.get(f"/api/v1/orgs/{org_a}", headers=headers)).status_code == 200
    assert (await client.get(f"/api/v1/orgs/{org_b}", headers=owner.headers)).status_code == 200
    assert_problem(await client.get(f"/api/v1/orgs/{org_b}", headers=headers), 404, "not-found")

    newcomer = await sign_up(client)
    before = await membership_count(db, org_b)
    assert_problem(await add_member(client, headers, org_b, newcomer.email, "member"), 404, "not-found")
    assert await membership_count(db, org_b) == before
    # With org:admin, the key can manage its own org.
    assert (await add_member(client, headers, org_a, newcomer.email, "member")).status_code == 201


async def test_api_key_without_org_admin_scope_cannot_add_members(client: Client) -> None:
    owner = await sign_up(client)
    org = await make_org(client, owner)
    key = await new_key(client, owner, org, ["catalog:read"])
    newcomer = await sign_up(client)
    body = assert_problem(
        await add_member(client, key_headers(key["key"]), org, newcomer.email, "member"), 403, "forbidden"
    )
    assert "org:admin" in body["detail"]


async def test_user_cannot_revoke_someone_elses_api_key(client: Client, db: asyncpg.Connection) -> None:
    owner = await sign_up(client)
    org = await make_org(client, owner)
    member = await member_of(client, owner, org, "member")
    stranger = await sign_up(client)
    key = await new_key(client, member, org, ["catalog:read"])

    assert_problem(await client.delete(f"/api/v1/api-keys/{key['id']}", headers=stranger.headers), 404, "not-found")
    # A fellow member without admin rights is no better placed.
    colleague = await member_of(client, owner, org, "member")
    assert_problem(await client.delete(f"/api/v1/api-keys/{key['id']}", headers=colleague.headers), 404, "not-found")
    assert await db.fetchval("SELECT revoked_at FROM api_keys WHERE id = $1", uuid.UUID(key["id"])) is None
    assert (await client.get("/api/v1/me", headers=key_headers(key["key"]))).status_code == 200

    # Its maker can revoke it (and so can the org's owner, tested below).
    assert (await client.delete(f"/api/v1/api-keys/{key['id']}", headers=member.headers)).status_code == 204
    assert_problem(await client.get("/api/v1/me", headers=key_headers(key["key"])), 401)


async def test_org_owner_can_revoke_a_members_key(client: Client) -> None:
    owner = await sign_up(client)
    org = await make_org(client, owner)
    member = await member_of(client, owner, org, "member")
    key = await new_key(client, member, org, ["catalog:read"])
    assert (await client.delete(f"/api/v1/api-keys/{key['id']}", headers=owner.headers)).status_code == 204
    assert_problem(await client.get("/api/v1/me", headers=key_headers(key["key"])), 401)


async def test_api_keys_cannot_manage_credentials_or_create_orgs(client: Client, db: asyncpg.Connection) -> None:
    owner = await sign_up(client)
    org = await make_org(client, owner)
    key = await new_key(client, owner, org, ["catalog:read", "org:admin"])
    headers = key_headers(key["key"])
    keys_before = await db.fetchval("SELECT count(*) FROM api_keys WHERE user_id = $1", uuid.UUID(owner.id))

    created = await client.post(
        "/api/v1/api-keys",
        json={"name": "child", "org": org, "scopes": ["catalog:read"], "expires_at": in_a_day()},
        headers=headers,
    )
    assert_problem(created, 403, "forbidden")
    assert_problem(await client.delete(f"/api/v1/api-keys/{key['id']}", headers=headers), 403, "forbidden")
    assert await db.fetchval("SELECT count(*) FROM api_keys WHERE user_id = $1", uuid.UUID(owner.id)) == keys_before
    assert await db.fetchval("SELECT revoked_at FROM api_keys WHERE id = $1", uuid.UUID(key["id"])) is None

    org_made = await client.post(
        "/api/v1/orgs", json={"slug": f"by-key-{uuid.uuid4().hex[:8]}", "name": "x", "kind": "buyer"}, headers=headers
    )
    assert_problem(org_made, 403, "forbidden")


async def test_cannot_create_api_key_for_an_org_one_is_not_in(client: Client) -> None:
    alice = await sign_up(client)
    bob = await sign_up(client)
    org_b = await make_org(client, bob)
    refused = await client.post(
        "/api/v1/api-keys",
        json={"name": "k", "org": org_b, "scopes": ["catalog:read"], "expires_at": in_a_day()},
        headers=alice.headers,
    )
    assert_problem(refused, 404, "not-found")


async def test_platform_auditor_reads_any_org_but_changes_nothing(client: Client, db: asyncpg.Connection) -> None:
    owner = await sign_up(client)
    org = await make_org(client, owner)
    staff = await grant_platform_role(client, db, await sign_up(client), "auditor")
    newcomer = await sign_up(client)

    me = await client.get("/api/v1/me", headers=staff.headers)
    assert me.json()["platform_roles"] == ["auditor"]
    read = await client.get(f"/api/v1/orgs/{org}", headers=staff.headers)
    assert read.status_code == 200, read.text
    assert read.json()["your_role"] is None
    assert [m["email"] for m in read.json()["members"]] == [owner.email]

    before = await membership_count(db, org)
    for member_role in ("member", "auditor"):
        assert_problem(await add_member(client, staff.headers, org, newcomer.email, member_role), 403, "forbidden")
        assert_problem(await add_member(client, staff.headers, org, staff.email, member_role), 403, "forbidden")
    assert await membership_count(db, org) == before

    # Nor mint keys for an org they can see but do not belong to.
    refused = await client.post(
        "/api/v1/api-keys",
        json={"name": "k", "org": org, "scopes": ["audit:read"], "expires_at": in_a_day()},
        headers=staff.headers,
    )
    assert_problem(refused, 403, "forbidden")


async def test_platform_auditors_read_but_never_write(
    client: AsyncTestClient[Litestar], db: asyncpg.Connection
) -> None:
    owner = await sign_up(client)
    account = await sign_up(client)
    member_org = await make_org(client, account, kind="buyer")  # made before the role: it stays read-only too
    auditor = await grant_platform_role(client, db, account, "auditor")
    tables = ("organizations", "memberships", "products", "api_keys", "audit_events")

    async def counts() -> dict[str, int]:
        await sequence_audit(db)
        return {t: await db.fetchval(f"SELECT count(*) FROM {t} WHERE true") for t in tables}  # noqa: S608

    before = await counts()
    writes = [
        ("POST", "/api/v1/orgs", {"slug": f"audit-{uuid.uuid4().hex[:8]}", "name": "A", "kind": "buyer"}),
        ("POST", f"/api/v1/orgs/{member_org}/members", {"email": owner.email, "role": "member"}),
        (
            "POST",
            "/api/v1/products",
            {
                "org": member_org,
                "slug": f"audit-{uuid.uuid4().hex[:8]}",
                "title": "T",
                "summary": "S",
                "description": "D",
                "industry": "finance",
                "modality": "text",
                "languages": ["en"],
                "tags": [],
                "access": "open",
            },
        ),
        (
            "POST",
            "/api/v1/api-keys",
            {
                "name": "k",
                "org": member_org,
                "scopes": ["audit:read"],
                "expires_at": (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat(),
            },
        ),
    ]
    for method, path, body in writes:
        assert_problem(await client.request(method, path, json=body, headers=auditor.headers), 403, "forbidden")
    assert await counts() == before

    # Reading stays open, and so do the POSTs that change nothing (refused here by validation or the password,
    # which shows the auditor got past the guard).
    assert (await client.get("/api/v1/audit/events", headers=auditor.headers)).status_code == 200
    check = await client.post("/api/v1/licensing/check", json={"items": [], "use": "research"}, headers=auditor.headers)
    assert_problem(check, 422)
    wrong_password = {"grant_type": "password", "username": account.email, "password": "not-the-password"}
    assert_problem(await client.post("/api/v1/auth/token", json=wrong_password, headers=auditor.headers), 401)
