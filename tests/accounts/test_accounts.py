"""Sign-up → token → /me → organisation → member, over HTTP against the real database."""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient

from tests.conftest import make_org, sign_up


async def test_signup_token_me_org_member_flow(client: AsyncTestClient[Any]) -> None:
    owner = await sign_up(client)
    me = await client.get("/api/v1/me", headers=owner.headers)
    assert me.status_code == 200
    assert me.json()["email"] == owner.email
    assert me.json()["orgs"] == []
    assert me.json()["platform_roles"] == []

    slug = await make_org(client, owner, kind="provider")
    me = await client.get("/api/v1/me", headers=owner.headers)
    assert [(o["slug"], o["role"]) for o in me.json()["orgs"]] == [(slug, "owner")]

    colleague = await sign_up(client)
    added = await client.post(
        f"/api/v1/orgs/{slug}/members",
        json={"email": colleague.email, "role": "member"},
        headers=owner.headers,
    )
    assert added.status_code == 201, added.text
    assert added.json()["role"] == "member"

    org = await client.get(f"/api/v1/orgs/{slug}", headers=colleague.headers)
    assert org.status_code == 200
    assert org.json()["kind"] == "provider"
    assert {m["email"]: m["role"] for m in org.json()["members"]} == {
        owner.email: "owner",
        colleague.email: "member",
    }
    me = await client.get("/api/v1/me", headers=colleague.headers)
    assert [(o["slug"], o["role"]) for o in me.json()["orgs"]] == [(slug, "member")]


async def test_org_response_shape(client: AsyncTestClient[Any]) -> None:
    owner = await sign_up(client)
    response = await client.post(
        "/api/v1/orgs",
        json={"slug": "shape-check-org", "name": "Shape", "kind": "buyer"},
        headers=owner.headers,
    )
    assert response.status_code == 201
    assert {"slug": "shape-check-org", "name": "Shape", "kind": "buyer"}.items() <= response.json().items()
