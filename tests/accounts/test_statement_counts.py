"""A list page costs a fixed number of statements whatever its length: every list endpoint is counted at 1 and
at 50 items. Reads write nothing (no UPDATE, INSERT or DELETE among their statements)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import asyncpg
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.settings import Settings
from tests.accounts.test_access_rules import in_a_day, in_review
from tests.catalog.helpers import make_product, make_version
from tests.conftest import Account, grant_platform_role, make_org, sequence_audit, sign_up
from tests.licensing.test_licensing import make_offer, order_ok
from tests.statements import counting_client

Client = AsyncTestClient[Litestar]

MANY = 50
# Placing a free order fulfilled at once: the replay check, the org and role, the offer with its product, licence
# and current entitlement, the order, its audit event, the entitlement, its audit event; then its two events
# (order.created, order.fulfilled), each: the orgs' slugs, the inbox entries, the webhook endpoints that want it.
POST_ORDER = 13

# Statements per page, whatever its length (1 or 50 items).
EXPECTED = {
    "orders": 1,
    "entitlements": 1,
    "offers": 3,  # the product (with the caller's role), the page, the target orgs' slugs
    "licences": 1,
    "products": 4,  # the provider named by ?org=, the page, its facets, the latest versions
    "audit events": 2,  # the caller's organisation, the page
    "orgs": 1,
    "members": 2,  # the organisation and the caller's role, the page
    "api keys": 1,
    "reviews": 1,
    "models": 1,
}


async def test_list_pages_cost_a_fixed_number_of_statements(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    provider = await sign_up(client)
    provider_org = await make_org(client, provider, kind="provider")
    reviewer = await grant_platform_role(client, db, await sign_up(client), "reviewer")
    slug = await in_review(client, provider, provider_org)
    approved = await client.post(
        f"/api/v1/products/{slug}/versions/1.0.0/review", json={"decision": "approve"}, headers=reviewer.headers
    )
    assert approved.status_code == 200, approved.text
    one_buyer, many_buyer = await sign_up(client), await sign_up(client)
    one_org = await make_org(client, one_buyer, kind="buyer")
    many_org = await make_org(client, many_buyer, kind="buyer")
    # Offers private to the buyer with many (their slugs are loaded with the page), then one public.
    offers = [await make_offer(client, provider, slug, target_orgs=[many_org]) for _ in range(MANY)]
    public = await make_offer(client, provider, slug)
    for offer in offers:
        await order_ok(client, many_buyer, offer["id"], many_org)
    await order_ok(client, one_buyer, public["id"], one_org)
    for n in range(MANY):
        created = await client.post(
            "/api/v1/licences",
            json={"name": f"Custom {n}", "url": "https://example.com/l", "uses": ["research"], "duties": []},
            headers=provider.headers,
        )
        assert created.status_code == 201, created.text
    drafts = [await make_product(client, provider, provider_org) for _ in range(MANY)]
    for n in range(MANY):
        await make_version(client, provider, drafts[0], version=f"2.0.{n}")
    await db.execute(
        "UPDATE product_versions SET state = 'in_review', submitted_at = now() "
        "WHERE product_id = (SELECT id FROM products WHERE slug = $1)",
        drafts[0],
    )
    for _ in range(MANY - 1):
        await make_org(client, many_buyer, kind="buyer")
    for _ in range(MANY):
        made = await client.post(
            "/api/v1/api-keys",
            json={"name": "k", "org": many_org, "scopes": ["orders:read"], "expires_at": in_a_day()},
            headers=many_buyer.headers,
        )
        assert made.status_code == 201, made.text
    await client.post(
        "/api/v1/api-keys",
        json={"name": "k", "org": one_org, "scopes": ["orders:read"], "expires_at": in_a_day()},
        headers=one_buyer.headers,
    )
    await _add_members(db, many_org, MANY - 1)
    await _add_models(db, one_org, 1)
    await _add_models(db, many_org, MANY)
    await sequence_audit(db)  # the audit events recorded above join the log

    def h(account: Account) -> dict[str, str]:
        return account.headers

    cases: dict[str, tuple[tuple[str, dict[str, Any]], tuple[str, dict[str, Any]]]] = {
        "orders": (
            ("/api/v1/orders", {"headers": h(one_buyer)}),
            ("/api/v1/orders", {"headers": h(many_buyer)}),
        ),
        "entitlements": (
            ("/api/v1/entitlements", {"headers": h(one_buyer)}),
            ("/api/v1/entitlements", {"headers": h(many_buyer)}),
        ),
        "offers": (
            (f"/api/v1/products/{slug}/offers", {"headers": h(provider), "params": {"limit": 1}}),
            (f"/api/v1/products/{slug}/offers", {"headers": h(provider), "params": {"limit": MANY}}),
        ),
        "licences": (
            ("/api/v1/licences", {"params": {"limit": 1}}),
            ("/api/v1/licences", {"params": {"limit": MANY}}),
        ),
        "products": (
            ("/api/v1/products", {"headers": h(provider), "params": {"org": provider_org, "limit": 1}}),
            ("/api/v1/products", {"headers": h(provider), "params": {"org": provider_org, "limit": MANY}}),
        ),
        "audit events": (
            ("/api/v1/audit/events", {"headers": h(provider), "params": {"org": provider_org, "limit": 1}}),
            ("/api/v1/audit/events", {"headers": h(provider), "params": {"org": provider_org, "limit": MANY}}),
        ),
        "orgs": (
            ("/api/v1/orgs", {"headers": h(one_buyer)}),
            ("/api/v1/orgs", {"headers": h(many_buyer)}),
        ),
        "members": (
            (f"/api/v1/orgs/{one_org}/members", {"headers": h(one_buyer)}),
            (f"/api/v1/orgs/{many_org}/members", {"headers": h(many_buyer)}),
        ),
        "api keys": (
            ("/api/v1/api-keys", {"headers": h(one_buyer)}),
            ("/api/v1/api-keys", {"headers": h(many_buyer)}),
        ),
        "reviews": (
            ("/api/v1/reviews", {"headers": h(reviewer), "params": {"limit": 1}}),
            ("/api/v1/reviews", {"headers": h(reviewer), "params": {"limit": MANY}}),
        ),
        "models": (
            ("/api/v1/models", {"headers": h(one_buyer)}),
            ("/api/v1/models", {"headers": h(many_buyer)}),
        ),
    }
    async with counting_client(settings) as counter:
        measured: dict[str, tuple[int, int]] = {}
        for name, ((one_url, one_kw), (many_url, many_kw)) in cases.items():
            one, one_count = await counter.count("GET", one_url, **one_kw)
            many, many_count = await counter.count("GET", many_url, **many_kw)
            assert one.status_code == 200, (name, one.text)
            assert many.status_code == 200, (name, many.text)
            assert len(one.json()["items"]) == 1, (name, len(one.json()["items"]))
            assert len(many.json()["items"]) == MANY, (name, len(many.json()["items"]))
            measured[name] = (one_count, many_count)
        assert measured == {name: (n, n) for name, n in EXPECTED.items()}

        # Reading orders and entitlements past their deadlines writes nothing: expiry is computed.
        await db.execute(
            "UPDATE entitlements SET valid_from = now() - interval '2 days', valid_until = now() - interval '1 day' "
            "WHERE buyer_org_id = (SELECT id FROM organizations WHERE slug = $1)",
            one_org,
        )
        for url in ("/api/v1/orders", "/api/v1/entitlements", f"/api/v1/products/{slug}/offers/transparency"):
            await counter.count("GET", url, headers=h(one_buyer))
            writes = [s for s in counter.statements if s.lstrip().split()[0].upper() in ("UPDATE", "INSERT", "DELETE")]
            assert writes == [], (url, writes)
        shown = await counter.count("GET", "/api/v1/entitlements", headers=h(one_buyer))
        assert [e["status"] for e in shown[0].json()["items"]] == ["expired"]

        # Placing an order that is fulfilled at once.
        fresh = await make_offer(client, provider, slug)
        placed, placed_count = await counter.count(
            "POST",
            "/api/v1/orders",
            json={"offer_id": fresh["id"], "buyer_org": one_org, "purpose": "research"},
            headers={**h(one_buyer), "Idempotency-Key": f"count-{uuid.uuid4().hex}"},
        )
        assert placed.status_code == 201, placed.text
        assert placed_count == POST_ORDER, counter.statements


async def _add_models(db: asyncpg.Connection, org: str, n: int) -> None:
    """Manifests as the API stores them (their training chains are not what this test counts)."""
    for index in range(n):
        document: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "org": org,
            "name": f"model-{index}",
            "version": "1",
            "description": "",
            "territory": None,
            "sme": False,
            "manifest_digest": "sha256:" + "0" * 64,
            "verdict": {"allowed": True, "conflicts": [], "duties": {}, "reasons": []},
            "items": [],
            "created_at": "2026-01-01T00:00:00Z",
        }
        await db.execute(
            "INSERT INTO model_manifests (id, org_id, name, version, document, manifest_digest, created_by)"
            " SELECT $1::uuid, id, $2, '1', $3::jsonb, $4, 'system' FROM organizations WHERE slug = $5",
            document["id"],
            document["name"],
            json.dumps(document),
            document["manifest_digest"],
            org,
        )


async def _add_members(db: asyncpg.Connection, org: str, n: int) -> None:
    """Members arranged directly: sign-ups would only cost password hashing here."""
    org_id = await db.fetchval("SELECT id FROM organizations WHERE slug = $1", org)
    for _ in range(n):
        user_id = uuid.uuid4()
        await db.execute(
            "INSERT INTO users (id, email, display_name, password_hash) VALUES ($1, $2, 'member', 'x')",
            user_id,
            f"member-{user_id.hex[:12]}@example.com",
        )
        await db.execute(
            "INSERT INTO memberships (org_id, user_id, role, created_at) VALUES ($1, $2, 'member', $3)",
            org_id,
            user_id,
            dt.datetime.now(dt.UTC),
        )
