"""Sign-up → token → /me → organisation → member, over HTTP against the real database."""

from __future__ import annotations

import datetime as dt
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


async def _all_pages(client: AsyncTestClient[Any], url: str, headers: dict[str, str]) -> list[list[dict[str, Any]]]:
    """Every page of a list at one item a page, following next_cursor to its end."""
    pages: list[list[dict[str, Any]]] = []
    params: dict[str, Any] = {"limit": 1}
    while True:
        response = await client.get(url, params=params, headers=headers)
        assert response.status_code == 200, response.text
        pages.append(response.json()["items"])
        if response.json()["next_cursor"] is None:
            return pages
        params = {"limit": 1, "cursor": response.json()["next_cursor"]}


async def test_orgs_members_and_keys_page_with_the_shared_cursor(client: AsyncTestClient[Any]) -> None:
    owner = await sign_up(client)
    orgs = sorted([await make_org(client, owner, kind="buyer") for _ in range(3)])
    people = [await sign_up(client) for _ in range(2)]
    for person in people:
        added = await client.post(
            f"/api/v1/orgs/{orgs[0]}/members", json={"email": person.email, "role": "member"}, headers=owner.headers
        )
        assert added.status_code == 201, added.text
    in_a_month = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).isoformat()
    made = []
    for name in ("first", "second", "third"):
        key = await client.post(
            "/api/v1/api-keys",
            json={"name": name, "org": orgs[0], "scopes": ["orders:read"], "expires_at": in_a_month},
            headers=owner.headers,
        )
        assert key.status_code == 201, key.text
        made.append(key.json()["id"])

    org_pages = await _all_pages(client, "/api/v1/orgs", owner.headers)
    assert [[o["slug"] for o in page] for page in org_pages] == [[slug] for slug in orgs]
    member_pages = await _all_pages(client, f"/api/v1/orgs/{orgs[0]}/members", owner.headers)
    assert [[m["email"] for m in page] for page in member_pages] == [
        [email] for email in sorted([owner.email, *(p.email for p in people)])
    ]
    key_pages = await _all_pages(client, "/api/v1/api-keys", owner.headers)
    assert [[k["id"] for k in page] for page in key_pages] == [[key_id] for key_id in reversed(made)]

    for url in ("/api/v1/orgs", f"/api/v1/orgs/{orgs[0]}/members", "/api/v1/api-keys"):
        forged = await client.get(url, params={"cursor": "not-a-cursor"}, headers=owner.headers)
        assert forged.status_code == 400, (url, forged.text)
        assert forged.json()["type"] == "invalid-cursor"
