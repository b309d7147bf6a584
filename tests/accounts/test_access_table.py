"""Every route of the OpenAPI document, for every kind of caller, answered as the access table says.

Each route declares its action with a ``requires(action)`` guard; a route without one fails here, and so does a
route this test has no request for. Callers: anonymous; the owner, an admin, a member and an auditor of the
provider organisation P that every request concerns; the platform's admin, reviewer and auditor; API keys of
P's owner with each scope; and a key of P's owner for another organisation. Expected from ``RULES``: a caller the
table allows is never answered 401 or 403; one it refuses is answered 401 (anonymous), 403 or 404.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.accounts.access import API_KEY_SCOPES, RULES, platform_allows, refusal
from app.auth.guards import OPEN_TO_AUDITORS, requires
from app.auth.principal import Principal
from app.openapi import DOCUMENTED_AT
from tests.conftest import METRICS_HEADERS, Account, Servers, grant_platform_role, make_org, sign_up
from tests.licensing.helpers import market
from tests.licensing.test_licensing import make_offer, post_order, staff_connection

Client = AsyncTestClient[Litestar]
NOBODY = "00000000-0000-4000-8000-000000000000"


@dataclasses.dataclass(frozen=True)
class Caller:
    name: str
    headers: dict[str, str]
    principal: Principal | None  # what the access table sees (ids are placeholders: only kinds matter)
    role: str | None  # the role in P through which it acts


@dataclasses.dataclass
class World:
    p: str  # the provider organisation every request concerns
    product: str  # P's published product
    other_product: str  # Q's published product, which P holds an entitlement for
    sold_order: str  # B's pending access request for P's product
    bought_order: str  # P's pending access request for Q's product
    sold_entitlement: str  # B's entitlement to P's product
    bought_entitlement: str  # P's entitlement to Q's product
    q_manual_offer: str
    p_offer: str
    target_member: str  # a member of P that managers may change or remove
    callers: list[Caller]


def _principal(
    platform: frozenset[str] = frozenset(), key_org: uuid.UUID | None = None, scopes: Any = None
) -> Principal:
    return Principal(
        user_id=uuid.uuid4(),
        platform_roles=platform,
        api_key_id=uuid.uuid4() if key_org is not None else None,
        api_key_org_id=key_org,
        scopes=scopes,
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(client: Client, servers: Servers) -> AsyncIterator[World]:
    async for db in staff_connection(servers):
        ours = await market(client, db)  # P, with B holding an entitlement
        theirs = await market(client, db)  # Q
        owner, p = ours.provider, ours.provider_org
        await db.execute("UPDATE organizations SET kind = 'both' WHERE slug = $1", p)
        q_offer = await db.fetchval(
            "SELECT o.id FROM offers o JOIN products p ON p.id = o.product_id WHERE p.slug = $1", theirs.product
        )
        bought = await post_order(client, owner, str(q_offer), p)
        assert bought.status_code == 201, bought.text
        q_manual = await make_offer(client, theirs.provider, theirs.product, approval="manual")
        bought_order = await post_order(client, owner, q_manual["id"], p)
        p_manual = await make_offer(client, owner, ours.product, approval="manual")
        sold_order = await post_order(client, ours.buyer, p_manual["id"], ours.buyer_org)
        assert sold_order.status_code == 201, sold_order.text

        callers = [Caller("anonymous", {}, None, None)]
        p_id = uuid.UUID(str(await db.fetchval("SELECT id FROM organizations WHERE slug = $1", p)))
        callers.append(Caller("owner", owner.headers, _principal(), "owner"))
        for role in ("admin", "member", "auditor"):
            account = await _member(client, owner, p, role)
            callers.append(Caller(role, account.headers, _principal(), role))
        for role in ("admin", "reviewer", "auditor"):
            staff = await grant_platform_role(client, db, await sign_up(client), role)
            callers.append(Caller(f"platform {role}", staff.headers, _principal(frozenset({role})), None))
        for scope in API_KEY_SCOPES:
            secret = await _key(client, owner, p, [scope])
            callers.append(Caller(f"key {scope}", _bearer(secret), _principal(key_org=p_id, scopes={scope}), "owner"))
        elsewhere = await make_org(client, owner)
        secret = await _key(client, owner, elsewhere, list(API_KEY_SCOPES))
        other_principal = _principal(key_org=uuid.uuid4(), scopes=set(API_KEY_SCOPES))
        callers.append(Caller("key for another org", _bearer(secret), other_principal, None))

        target = uuid.uuid4()
        await db.execute(
            "INSERT INTO users (id, email, display_name, password_hash) VALUES ($1, $2, 'target', 'x')",
            target,
            f"target-{target.hex[:12]}@example.com",
        )
        await db.execute("INSERT INTO memberships (org_id, user_id, role) VALUES ($1, $2, 'member')", p_id, target)
        yield World(
            p=p,
            product=ours.product,
            other_product=theirs.product,
            sold_order=sold_order.json()["id"],
            bought_order=bought_order.json()["id"],
            sold_entitlement=ours.entitlement_id,
            bought_entitlement=bought.json()["entitlement_id"],
            q_manual_offer=q_manual["id"],
            p_offer=p_manual["id"],
            target_member=str(target),
            callers=callers,
        )


async def _member(client: Client, owner: Account, org: str, role: str) -> Account:
    account = await sign_up(client)
    added = await client.post(
        f"/api/v1/orgs/{org}/members", json={"email": account.email, "role": role}, headers=owner.headers
    )
    assert added.status_code == 201, added.text
    return account


async def _key(client: Client, owner: Account, org: str, scopes: list[str]) -> str:
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    made = await client.post(
        "/api/v1/api-keys",
        json={"name": "t", "org": org, "scopes": scopes, "expires_at": expires},
        headers=owner.headers,
    )
    assert made.status_code == 201, made.text
    secret: str = made.json()["key"]
    return secret


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@dataclasses.dataclass(frozen=True)
class Request:
    url: str
    body: Any = None
    params: dict[str, str] | None = None
    concerns_p: bool = True  # refused to callers who do not act for P with a role the rule names
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


def requests(w: World) -> dict[tuple[str, str], Request]:
    """One request per route of the OpenAPI document, keyed by (method, path template)."""
    v = f"/api/v1/products/{w.product}/versions/1.0.0"
    q = f"/api/v1/products/{w.other_product}/versions/1.0.0"
    provenance = {"sources": [{"kind": "synthetic", "name": "gen", "generator": "g"}], "activities": []}
    offer = {
        "name": "o",
        "licence_id": "CC-BY-4.0",
        "price": {"amount": "0", "currency": "EUR"},
        "term_days": 30,
        "quota": {"downloads": 5, "bytes": 10**6},
        "versions": "latest",
        "approval": "manual",
        "purposes": ["research"],
    }
    download = {
        "entitlement_id": w.bought_entitlement,
        "product": w.other_product,
        "version": "1.0.0",
        "path": "data/a.txt",
        "purpose": "research",
    }
    return {
        ("POST", "/api/v1/users"): Request("/api/v1/users", {}, concerns_p=False),
        ("POST", "/api/v1/auth/token"): Request("/api/v1/auth/token", {}, concerns_p=False),
        ("GET", "/api/v1/me"): Request("/api/v1/me", concerns_p=False),
        ("GET", "/api/v1/orgs"): Request("/api/v1/orgs", concerns_p=False),
        ("POST", "/api/v1/orgs"): Request("/api/v1/orgs", {"slug": "x", "name": "x", "kind": "boss"}, concerns_p=False),
        ("GET", "/api/v1/orgs/{org}"): Request(f"/api/v1/orgs/{w.p}"),
        ("GET", "/api/v1/orgs/{org}/members"): Request(f"/api/v1/orgs/{w.p}/members"),
        ("POST", "/api/v1/orgs/{org}/members"): Request(
            f"/api/v1/orgs/{w.p}/members", {"email": "nobody@example.com", "role": "member"}
        ),
        ("PATCH", "/api/v1/orgs/{org}/members/{user_id}"): Request(
            f"/api/v1/orgs/{w.p}/members/{w.target_member}", {"role": "auditor"}
        ),
        ("DELETE", "/api/v1/orgs/{org}/members/{user_id}"): Request(f"/api/v1/orgs/{w.p}/members/{NOBODY}"),
        ("POST", "/api/v1/api-keys"): Request(
            "/api/v1/api-keys",
            {"name": "k", "org": w.p, "scopes": ["catalog:read"], "expires_at": "2000-01-01T00:00:00Z"},
            concerns_p=False,
        ),
        ("GET", "/api/v1/api-keys"): Request("/api/v1/api-keys", concerns_p=False),
        ("DELETE", "/api/v1/api-keys/{key_id}"): Request(f"/api/v1/api-keys/{NOBODY}", concerns_p=False),
        ("GET", "/api/v1/audit/events"): Request("/api/v1/audit/events", params={"org": w.p}),
        ("GET", "/api/v1/audit/export"): Request("/api/v1/audit/export", params={"org": w.p}),
        ("GET", "/api/v1/audit/verify"): Request("/api/v1/audit/verify", concerns_p=False),
        ("GET", "/api/v1/audit/checkpoints"): Request("/api/v1/audit/checkpoints", concerns_p=False),
        ("GET", "/api/v1/audit/proofs/inclusion"): Request("/api/v1/audit/proofs/inclusion", params={"seq": "1"}),
        ("GET", "/api/v1/audit/proofs/consistency"): Request(
            "/api/v1/audit/proofs/consistency", params={"first": "1", "second": "2", "org": w.p}
        ),
        ("GET", "/api/v1/audit/bundle"): Request("/api/v1/audit/bundle", params={"org": w.p}),
        ("GET", "/api/v1/reviews"): Request("/api/v1/reviews", concerns_p=False),
        ("GET", "/api/v1/products"): Request("/api/v1/products", concerns_p=False),
        ("POST", "/api/v1/products"): Request(
            "/api/v1/products",
            {
                "org": w.p,
                "slug": w.product,  # taken: allowed callers get 409, and nothing is created
                "title": "t",
                "summary": "s",
                "description": "d",
                "industry": "finance",
                "modality": "text",
                "languages": ["en"],
                "tags": [],
                "access": "open",
            },
        ),
        ("GET", "/api/v1/products/{slug}"): Request(f"/api/v1/products/{w.product}", concerns_p=False),
        ("PATCH", "/api/v1/products/{slug}"): Request(f"/api/v1/products/{w.product}", {"summary": "still"}),
        ("POST", "/api/v1/products/{slug}/versions"): Request(
            f"/api/v1/products/{w.product}/versions",
            {"version": "1.0.0", "changelog": "c", "licence_id": "CC-BY-4.0", "provenance": provenance},
        ),
        ("GET", "/api/v1/products/{slug}/versions/{version}"): Request(v, concerns_p=False),
        ("PATCH", "/api/v1/products/{slug}/versions/{version}"): Request(v, {"changelog": "c"}),
        ("GET", "/api/v1/products/{slug}/versions/{version}/croissant"): Request(f"{v}/croissant", concerns_p=False),
        ("GET", "/api/v1/products/{slug}/versions/{version}/provenance"): Request(f"{v}/provenance", concerns_p=False),
        ("POST", "/api/v1/products/{slug}/versions/{version}/files"): Request(
            f"{v}/files", {"path": "x.txt", "size": 1, "sha256": "0" * 64, "media_type": "text/plain"}
        ),
        ("POST", "/api/v1/products/{slug}/versions/{version}/files/{file_id}/complete"): Request(
            f"{v}/files/{NOBODY}/complete", {}
        ),
        ("POST", "/api/v1/products/{slug}/versions/{version}/uploads"): Request(
            f"{v}/uploads", {"files": [{"path": "x.txt", "size": 1, "sha256": "0" * 64, "media_type": "text/plain"}]}
        ),
        ("POST", "/api/v1/products/{slug}/versions/{version}/uploads/complete"): Request(
            f"{v}/uploads/complete", {"files": [{"file_id": NOBODY}]}
        ),
        ("DELETE", "/api/v1/products/{slug}/versions/{version}/files/{file_id}"): Request(f"{v}/files/{NOBODY}"),
        ("GET", "/api/v1/products/{slug}/versions/{version}/files/{path}"): Request(
            f"{q}/files/data/a.txt", params={"entitlement_id": w.bought_entitlement, "purpose": "research"}
        ),
        ("POST", "/api/v1/products/{slug}/versions/{version}/publish"): Request(f"{v}/publish"),
        ("GET", "/api/v1/products/{slug}/versions/{version}/profile"): Request(f"{v}/profile", concerns_p=False),
        ("GET", "/api/v1/products/{slug}/versions/{version}/preview"): Request(f"{v}/preview", params={"path": "x"}),
        ("GET", "/api/v1/products/{slug}/versions/{version}/opt-out-evidence"): Request(
            f"{v}/opt-out-evidence", concerns_p=False
        ),
        ("POST", "/api/v1/products/{slug}/versions/{version}/samples"): Request(
            f"{v}/samples", {"size": 1, "kind": "manual"}, concerns_p=False
        ),
        ("GET", "/api/v1/samples/{sample_id}"): Request(f"/api/v1/samples/{NOBODY}", concerns_p=False),
        ("POST", "/api/v1/samples/{sample_id}/verdicts"): Request(
            f"/api/v1/samples/{NOBODY}/verdicts", {"verdicts": [{"index": 0, "ok": True}]}, concerns_p=False
        ),
        ("POST", "/api/v1/products/{slug}/versions/{version}/review"): Request(
            f"{v}/review", {"decision": "approve", "reason": ""}, concerns_p=False
        ),
        ("POST", "/api/v1/products/{slug}/versions/{version}/deprecate"): Request(f"{v}/deprecate", {"reason": ""}),
        ("POST", "/api/v1/products/{slug}/versions/{version}/withdraw"): Request(f"{v}/withdraw", {"reason": "gone"}),
        ("GET", "/api/v1/licences"): Request("/api/v1/licences", concerns_p=False),
        ("POST", "/api/v1/licences"): Request(
            "/api/v1/licences", {"name": "L", "org": w.p, "url": "https://example.com/l", "uses": [], "duties": []}
        ),
        ("GET", "/api/v1/licences/{licence_id}"): Request("/api/v1/licences/CC-BY-4.0", concerns_p=False),
        ("GET", "/api/v1/licences/{licence_id}/odrl"): Request("/api/v1/licences/CC-BY-4.0/odrl", concerns_p=False),
        ("POST", "/api/v1/licensing/check"): Request(
            "/api/v1/licensing/check", {"items": [{"product": w.product}], "use": "research"}, concerns_p=False
        ),
        ("GET", "/api/v1/products/{slug}/offers"): Request(f"/api/v1/products/{w.product}/offers", concerns_p=False),
        ("POST", "/api/v1/products/{slug}/offers"): Request(f"/api/v1/products/{w.product}/offers", offer),
        ("GET", "/api/v1/products/{slug}/offers/transparency"): Request(
            f"/api/v1/products/{w.product}/offers/transparency", concerns_p=False
        ),
        ("PATCH", "/api/v1/products/{slug}/offers/{offer_id}"): Request(
            f"/api/v1/products/{w.product}/offers/{w.p_offer}", {"name": "renamed"}
        ),
        ("GET", "/api/v1/orders"): Request("/api/v1/orders", concerns_p=False),
        ("POST", "/api/v1/orders"): Request(
            "/api/v1/orders",
            {"offer_id": w.q_manual_offer, "buyer_org": w.p, "purpose": "research"},
            headers={"Idempotency-Key": "access-table-order"},
        ),
        ("GET", "/api/v1/orders/{order_id}"): Request(f"/api/v1/orders/{w.sold_order}"),
        ("POST", "/api/v1/orders/{order_id}/approve"): Request(f"/api/v1/orders/{w.sold_order}/approve", {}),
        ("POST", "/api/v1/orders/{order_id}/reject"): Request(
            f"/api/v1/orders/{w.sold_order}/reject", {"reason": "no"}
        ),
        ("POST", "/api/v1/orders/{order_id}/cancel"): Request(f"/api/v1/orders/{w.bought_order}/cancel"),
        ("POST", "/api/v1/orders/{order_id}/confirm-payment"): Request(
            f"/api/v1/orders/{w.sold_order}/confirm-payment", {}, concerns_p=False
        ),
        ("POST", "/api/v1/payments/webhook"): Request("/api/v1/payments/webhook", {}, concerns_p=False),
        ("GET", "/api/v1/entitlements"): Request("/api/v1/entitlements", concerns_p=False),
        ("GET", "/api/v1/entitlements/{entitlement_id}"): Request(f"/api/v1/entitlements/{w.sold_entitlement}"),
        ("POST", "/api/v1/entitlements/{entitlement_id}/suspend"): Request(
            f"/api/v1/entitlements/{w.sold_entitlement}/suspend", {"reason": "check"}
        ),
        ("POST", "/api/v1/entitlements/{entitlement_id}/reinstate"): Request(
            f"/api/v1/entitlements/{w.sold_entitlement}/reinstate", {"reason": "back"}
        ),
        ("POST", "/api/v1/entitlements/{entitlement_id}/revoke"): Request(
            f"/api/v1/entitlements/{w.sold_entitlement}/revoke", {"reason": "done"}
        ),
        ("POST", "/api/v1/downloads"): Request("/api/v1/downloads", download),
        ("POST", "/api/v1/downloads/manifest"): Request(
            "/api/v1/downloads/manifest", {k: download[k] for k in ("entitlement_id", "product", "version", "purpose")}
        ),
        ("POST", "/api/v1/downloads/refresh"): Request(
            "/api/v1/downloads/refresh", {"download_ids": [NOBODY]}, concerns_p=False
        ),
        ("POST", "/api/v1/downloads/{download_id}/refresh"): Request(
            f"/api/v1/downloads/{NOBODY}/refresh", concerns_p=False
        ),
        ("GET", "/api/v1/downloads/{download_id}/content"): Request(
            f"/api/v1/downloads/{NOBODY}/content", concerns_p=False
        ),
        ("HEAD", "/api/v1/downloads/{download_id}/content"): Request(
            f"/api/v1/downloads/{NOBODY}/content", concerns_p=False
        ),
        ("GET", "/api/v1/usage"): Request("/api/v1/usage", concerns_p=False),
        ("POST", "/api/v1/models"): Request(
            "/api/v1/models",
            {  # recorded once if a file of it was downloaded by then (then 409), else 422 never-downloaded
                "org": w.p,
                "name": "m",
                "version": "1",
                "training": [
                    {
                        "entitlement_id": w.bought_entitlement,
                        "product": w.other_product,
                        "version": "1.0.0",
                        "use": "research",
                    }
                ],
            },
        ),
        ("GET", "/api/v1/models"): Request("/api/v1/models", params={"org": w.p}),
        ("GET", "/api/v1/models/{model_id}"): Request(f"/api/v1/models/{NOBODY}", concerns_p=False),
        ("GET", "/api/v1/models/{model_id}/summary"): Request(f"/api/v1/models/{NOBODY}/summary", concerns_p=False),
        ("GET", "/api/v1/models/{model_id}/notice"): Request(f"/api/v1/models/{NOBODY}/notice", concerns_p=False),
        ("GET", "/api/v1/models/{model_id}/tc260.csv"): Request(f"/api/v1/models/{NOBODY}/tc260.csv", concerns_p=False),
        # An unknown product: allowed callers get 404, and nothing is filed.
        ("POST", "/api/v1/takedowns"): Request(
            "/api/v1/takedowns",
            {"product": "no-such-product", "reason": "r", "claimant": {"name": "n", "email": "n@example.com"}},
            concerns_p=False,
        ),
        ("GET", "/api/v1/takedowns"): Request("/api/v1/takedowns", params={"org": w.p}),
        ("GET", "/api/v1/takedowns/{takedown_id}"): Request(f"/api/v1/takedowns/{NOBODY}", concerns_p=False),
        ("POST", "/api/v1/takedowns/{takedown_id}/decide"): Request(
            f"/api/v1/takedowns/{NOBODY}/decide", {"decision": "dismiss", "reason": "r"}, concerns_p=False
        ),
        ("POST", "/api/v1/takedowns/{takedown_id}/attest"): Request(
            f"/api/v1/takedowns/{NOBODY}/attest", {"org": w.p, "statement": "deleted"}
        ),
        ("GET", "/api/v1/notifications"): Request("/api/v1/notifications", params={"org": w.p}),
        ("POST", "/api/v1/webhooks"): Request(
            "/api/v1/webhooks", {"org": w.p, "url": "http://127.0.0.1/hook", "events": ["order.created"]}
        ),
        ("GET", "/api/v1/webhooks"): Request("/api/v1/webhooks", params={"org": w.p}),
        ("GET", "/api/v1/webhooks/{webhook_id}"): Request(f"/api/v1/webhooks/{NOBODY}", concerns_p=False),
        ("DELETE", "/api/v1/webhooks/{webhook_id}"): Request(f"/api/v1/webhooks/{NOBODY}", concerns_p=False),
        ("POST", "/api/v1/webhooks/{webhook_id}/enable"): Request(
            f"/api/v1/webhooks/{NOBODY}/enable", concerns_p=False
        ),
        ("GET", "/api/v1/webhooks/{webhook_id}/deliveries"): Request(
            f"/api/v1/webhooks/{NOBODY}/deliveries", concerns_p=False
        ),
        ("GET", "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}"): Request(
            f"/api/v1/webhooks/{NOBODY}/deliveries/{NOBODY}", concerns_p=False
        ),
        ("POST", "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"): Request(
            f"/api/v1/webhooks/{NOBODY}/deliveries/{NOBODY}/redeliver", concerns_p=False
        ),
        ("GET", "/.well-known/jwks.json"): Request("/.well-known/jwks.json", concerns_p=False),
        ("GET", "/healthz"): Request("/healthz", concerns_p=False),
        ("GET", "/readyz"): Request("/readyz", concerns_p=False),
        # /metrics checks its own scrape token (the same for every caller) after the table's "public" rule.
        ("GET", "/metrics"): Request("/metrics", concerns_p=False, headers=METRICS_HEADERS),
    }


def _rules_of(app: Litestar) -> dict[tuple[str, str], tuple[list[str], bool]]:
    """(method, path) → the actions its guards name (outermost first), and whether auditors may write there."""
    found: dict[tuple[str, str], tuple[list[str], bool]] = {}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            actions = [g.action for g in handler.resolve_guards() if isinstance(g, requires)]
            path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
            if (documented_at := handler.opt.get(DOCUMENTED_AT)) is not None:  # served by a wider template
                path = path.replace(f"{{{documented_at.parameter}}}", documented_at.template)
            for method in handler.http_methods:
                found[(method, path)] = (actions, bool(handler.opt.get(OPEN_TO_AUDITORS)))
    return found


def _allowed(caller: Caller, method: str, actions: list[str], open_to_auditors: bool, request: Request) -> bool:
    principal = caller.principal
    if any(refusal(principal, action) is not None for action in actions):
        return False
    if principal is None:
        return True
    if principal.platform_roles == {"auditor"} and method not in ("GET", "HEAD") and not open_to_auditors:
        return False  # platform auditors read and never write
    if not request.concerns_p:
        return True
    rule = RULES[actions[-1]]
    return caller.role in rule.roles or platform_allows(principal, actions[-1])


async def test_every_route_answers_every_caller_as_the_access_table_says(
    app: Litestar, client: Client, world: World
) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    documented = {(m.upper(), path) for path, ops in schema["paths"].items() for m in ops}
    guarded = _rules_of(app)
    table = requests(world)
    assert documented - set(table) == set(), "routes this test has no request for"
    unguarded = {route for route in documented if not guarded.get(route, ([], False))[0]}
    assert unguarded == set(), "routes without an access rule (guards=[requires(...)])"

    wrong: list[str] = []
    for (method, path), request in sorted(table.items()):
        if (method, path) not in documented:
            continue
        actions, open_to_auditors = guarded[(method, path)]
        for caller in world.callers:
            response = await client.request(
                method, request.url, json=request.body, params=request.params, headers=caller.headers | request.headers
            )
            allowed = _allowed(caller, method, actions, open_to_auditors, request)
            status = response.status_code
            if allowed and status in (401, 403):
                wrong.append(f"{method} {path} {caller.name}: allowed by {actions} but {status} {response.text[:120]}")
            if not allowed and status not in (401, 403, 404):
                wrong.append(f"{method} {path} {caller.name}: refused by {actions} but {status} {response.text[:120]}")
            if not allowed and caller.principal is None and status != 401:
                wrong.append(f"{method} {path} anonymous: {status}, not 401")
            if status >= 500:
                wrong.append(f"{method} {path} {caller.name}: {status} {response.text[:120]}")
    assert wrong == [], "\n".join(wrong)
