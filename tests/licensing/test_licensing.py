"""Licences and offers: the seeded catalogue with its AI-use terms, custom licences, ODRL policies, offers and
their bad input, and entitlements that keep the terms they were granted with.

The helpers at the top (published products, offers, orders, row counts) are shared with the order and
licence-check tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
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

from app.auth.tokens import issue_access_token
from app.main import create_app
from app.settings import Settings
from tests.catalog.helpers import make_product, make_version, upload
from tests.conftest import Account, Servers, asyncpg_dsn, make_org, unique_email

PROBLEM = "application/problem+json"
Client = AsyncTestClient[Litestar]

ALL_USES = [
    "research",
    "evaluation",
    "pretraining",
    "fine_tuning",
    "rag_indexing",
    "synthetic_data_generation",
    "commercial_model_release",
    "open_weights_release",
    "redistribution",
    "derivative_datasets",
]
NON_COMMERCIAL = [u for u in ALL_USES if u not in ("commercial_model_release", "open_weights_release")]


# --- shared helpers --------------------------------------------------------------------------------------


def assert_problem(response: httpx.Response, status: int, type_: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"]
    assert body["title"]
    assert body["detail"]
    if type_ is not None:
        assert body["type"] == type_, body
    return body


async def quick_account(db: asyncpg.Connection, app: Litestar, *platform_roles: str) -> Account:
    """A user written straight to the database, with an access token signed by the app's own keys.

    Sign-up and password login are covered by the auth tests; with Argon2 they cost about a second each,
    and these tests need dozens of users.
    """
    user_id = uuid.uuid4()
    email = unique_email("licensing")
    await db.execute(
        "INSERT INTO users (id, email, display_name, password_hash) VALUES ($1, $2, $3, '!')",
        user_id,
        email,
        email.split("@")[0],
    )
    for role in platform_roles:
        await db.execute("INSERT INTO platform_role_grants (user_id, role) VALUES ($1, $2)", user_id, role)
    settings = app.state.settings
    token = issue_access_token(
        app.state.keyring,
        user_id=user_id,
        platform_roles=list(platform_roles),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        ttl_seconds=settings.access_token_ttl_seconds,
    )
    return Account(str(user_id), email, token, "")


@dataclasses.dataclass(frozen=True)
class People:
    """Makes users on demand (see :func:`quick_account`)."""

    db: asyncpg.Connection
    app: Litestar

    async def new(self, *platform_roles: str) -> Account:
        return await quick_account(self.db, self.app, *platform_roles)


@contextlib.asynccontextmanager
async def live_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose requests really run at the same time.

    The ``client`` fixture (Litestar's AsyncTestClient) runs the app in a portal thread and blocks the test's
    event loop until each response is complete, so requests gathered through it run one after another. This
    is a second app on the test's own event loop, over ASGI, sharing the database and the signing keys.
    """
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # litestar's ASGI types are narrower
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local", timeout=60) as client:
            yield client
    finally:
        await app.state.engine.dispose()


async def staff_connection(servers: Servers) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection for module-scoped fixtures (the ``db`` fixture is per test)."""
    connection = await asyncpg.connect(asyncpg_dsn(servers.database_url))
    try:
        yield connection
    finally:
        await connection.close()


async def published_product(
    client: Client, owner: Account, org: str, reviewer: Account, *, licence: str = "CC-BY-4.0"
) -> str:
    """A product with one version under ``licence``: provenance, one verified file, published and approved."""
    slug = await make_product(client, owner, org)
    await make_version(client, owner, slug, licence=licence)
    done = await upload(client, owner, slug, "1.0.0", "data/part-0.jsonl", b'{"text": "a filing"}\n' * 20)
    assert done.status_code == 200, done.text
    published = await client.post(f"/api/v1/products/{slug}/versions/1.0.0/publish", headers=owner.headers)
    assert published.status_code == 200, published.text
    reviewed = await client.post(
        f"/api/v1/products/{slug}/versions/1.0.0/review", json={"decision": "approve"}, headers=reviewer.headers
    )
    assert reviewed.status_code == 200, reviewed.text
    assert reviewed.json()["state"] == "published"
    return slug


@dataclasses.dataclass(frozen=True)
class Market:
    """A provider org with a published product, and a buyer org."""

    provider: Account
    provider_org: str
    product: str
    buyer: Account
    buyer_org: str


async def open_market(client: Client, people: People, reviewer: Account, *, licence: str = "CC-BY-4.0") -> Market:
    provider = await people.new()
    provider_org = await make_org(client, provider, kind="provider")
    product = await published_product(client, provider, provider_org, reviewer, licence=licence)
    buyer = await people.new()
    buyer_org = await make_org(client, buyer, kind="buyer")
    return Market(provider, provider_org, product, buyer, buyer_org)


def offer_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Standard",
        "licence_id": "CC-BY-4.0",
        "price": {"amount": "0", "currency": "EUR"},
        "term_days": 365,
        "quota": {"downloads": 100, "bytes": 10**9},
        "versions": "latest",
        "approval": "automatic",
        "purposes": ["research", "pretraining", "fine_tuning"],
    }
    body.update(overrides)
    return body


async def make_offer(client: Client, provider: Account, product: str, **overrides: Any) -> dict[str, Any]:
    response = await client.post(
        f"/api/v1/products/{product}/offers", json=offer_body(**overrides), headers=provider.headers
    )
    assert response.status_code == 201, response.text
    offer: dict[str, Any] = response.json()
    return offer


async def post_order(
    client: httpx.AsyncClient,
    account: Account,
    offer_id: str,
    buyer_org: str,
    purpose: str = "research",
    *,
    key: str | None = None,
    answers: dict[str, Any] | None = None,
) -> httpx.Response:
    body: dict[str, Any] = {"offer_id": offer_id, "buyer_org": buyer_org, "purpose": purpose}
    if answers is not None:
        body["answers"] = answers
    headers = {**account.headers, "Idempotency-Key": key or f"order-{uuid.uuid4().hex}"}
    return await client.post("/api/v1/orders", json=body, headers=headers)


async def order_ok(
    client: Client, account: Account, offer_id: str, buyer_org: str, purpose: str = "research"
) -> dict[str, Any]:
    response = await post_order(client, account, offer_id, buyer_org, purpose)
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    return order


async def row_counts(db: asyncpg.Connection) -> dict[str, int]:
    """Rows in the licensing tables, read in one statement."""
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM licences) AS licences, (SELECT count(*) FROM offers) AS offers, "
        "(SELECT count(*) FROM orders) AS orders, (SELECT count(*) FROM entitlements) AS entitlements"
    )
    assert row is not None
    return dict(row)


def canonical_digest(document: Any) -> str:
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return "sha256:" + hashlib.sha256(encoded).hexdigest()


# --- fixtures --------------------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def staff_db(servers: Servers) -> AsyncIterator[asyncpg.Connection]:
    async for connection in staff_connection(servers):
        yield connection


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def people(staff_db: asyncpg.Connection, app: Litestar) -> People:
    return People(staff_db, app)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def reviewer(people: People) -> Account:
    return await people.new("reviewer")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def market(client: Client, people: People, reviewer: Account) -> Market:
    return await open_market(client, people, reviewer)


# --- the licence catalogue -------------------------------------------------------------------------------

SEEDED: dict[str, tuple[list[str], list[str]]] = {
    "CC0-1.0": (ALL_USES, []),
    "PDDL-1.0": (ALL_USES, []),
    "CC-BY-4.0": (ALL_USES, ["attribution"]),
    "CC-BY-SA-4.0": (ALL_USES, ["attribution", "share_alike"]),
    "CC-BY-NC-4.0": (NON_COMMERCIAL, ["attribution"]),
    "CC-BY-NC-SA-4.0": (NON_COMMERCIAL, ["attribution", "share_alike"]),
    "CC-BY-ND-4.0": (["research", "evaluation", "rag_indexing", "redistribution"], ["attribution"]),
    "CC-BY-NC-ND-4.0": (["research", "evaluation"], ["attribution"]),
    "CDLA-Permissive-2.0": (ALL_USES, ["attribution"]),
    "CDLA-Sharing-1.0": (ALL_USES, ["attribution", "share_alike"]),
    "ODC-By-1.0": (ALL_USES, ["attribution"]),
    "ODbL-1.0": (ALL_USES, ["attribution", "share_alike"]),
    "Apache-2.0": (ALL_USES, ["attribution"]),
    "MIT": (ALL_USES, ["attribution"]),
}


async def test_catalogue_lists_every_seeded_licence_with_its_terms(client: Client) -> None:
    response = await client.get("/api/v1/licences", params={"limit": 100})
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    by_id = {item["id"]: item for item in items}
    assert set(SEEDED) <= set(by_id)
    for licence_id, (uses, duties) in SEEDED.items():
        item = by_id[licence_id]
        assert item["spdx"] == licence_id
        assert sorted(item["uses"]) == sorted(uses), licence_id
        assert sorted(item["duties"]) == sorted(duties), licence_id
        assert item["territories"] == []
        assert item["note"], f"{licence_id} has no reading of its terms"
        assert item["custom"] is False
        assert item["url"] == f"https://spdx.org/licenses/{licence_id}.html"
    # The seeded licences come before any custom one.
    seeded_positions = [i for i, item in enumerate(items) if not item["custom"]]
    assert seeded_positions == list(range(len(seeded_positions)))

    # Walking the pages with a small limit finds the same licences once each.
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 4}
        if cursor:
            params["cursor"] = cursor
        page = await client.get("/api/v1/licences", params=params)
        assert page.status_code == 200, page.text
        seen += [item["id"] for item in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    assert set(SEEDED) <= set(seen)

    one = await client.get("/api/v1/licences/CC-BY-NC-SA-4.0")
    assert one.status_code == 200
    assert one.json()["duties"] == ["attribution", "share_alike"]
    assert_problem(await client.get("/api/v1/licences/Not-A-Licence-9.9"), 404, "not-found")
    # Unreadable, empty, or naming no licence (AAAA: NUL bytes; W10: "[]"): not a page of nothing.
    for cursor in ("!!!", "", "AAAA", "W10", "Tm8tU3VjaC1MaWNlbmNl"):
        assert_problem(await client.get("/api/v1/licences", params={"cursor": cursor}), 400, "invalid-cursor")


async def test_odrl_policy_of_a_non_commercial_licence(client: Client) -> None:
    response = await client.get("/api/v1/licences/CC-BY-NC-4.0/odrl")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/ld+json")
    policy = response.json()
    assert "http://www.w3.org/ns/odrl.jsonld" in policy["@context"]
    assert policy["@type"] == "Set"
    assert policy["uid"].endswith("/api/v1/licences/CC-BY-NC-4.0/odrl")
    prohibited = {p["action"] for p in policy["prohibition"]}
    permitted = {p["action"] for p in policy["permission"]}
    assert "ai:commercial_model_release" in prohibited
    assert "ai:open_weights_release" in prohibited
    assert "ai:commercial_model_release" not in permitted
    assert permitted == {f"ai:{u}" for u in NON_COMMERCIAL}
    assert not permitted & prohibited
    for permission in policy["permission"]:
        assert {"action": "odrl:attribute"} in permission["duty"]
        assert "constraint" not in permission  # worldwide

    share_alike = (await client.get("/api/v1/licences/CC-BY-SA-4.0/odrl")).json()
    assert share_alike["prohibition"] == []
    assert {d["action"] for d in share_alike["permission"][0]["duty"]} == {"odrl:attribute", "cc:ShareAlike"}
    public_domain = (await client.get("/api/v1/licences/CC0-1.0/odrl")).json()
    assert all("duty" not in p for p in public_domain["permission"])
    assert_problem(await client.get("/api/v1/licences/Not-A-Licence-9.9/odrl"), 404, "not-found")


async def test_custom_licence_gets_a_licenseref_id_and_territories(
    client: Client, db: asyncpg.Connection, people: People
) -> None:
    owner = await people.new()
    org = await make_org(client, owner, kind="provider")
    text = "Acme grants research use in Germany and France only.\n"
    response = await client.post(
        "/api/v1/licences",
        json={
            "name": "Acme Research Licence",
            "url": "https://acme.example/licence",
            "text": text,
            "spdx": "LicenseRef-acme-research OR MIT",
            "uses": ["research", "evaluation", "research"],
            "duties": ["usage_reporting", "attribution"],
            "territories": ["FR", "DE"],
        },
        headers=owner.headers,
    )
    assert response.status_code == 201, response.text
    licence = response.json()
    assert licence["id"] == f"LicenseRef-{org}-Acme-Research-Licence"
    assert licence["custom"] is True
    assert licence["org"] == org
    assert licence["uses"] == ["research", "evaluation"]
    assert licence["duties"] == ["attribution", "usage_reporting"]
    assert licence["territories"] == ["DE", "FR"]
    assert licence["text_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert licence["spdx"] == "LicenseRef-acme-research OR MIT"

    read = await client.get(f"/api/v1/licences/{licence['id']}")
    assert read.status_code == 200
    assert read.json() == licence
    policy = (await client.get(f"/api/v1/licences/{licence['id']}/odrl")).json()
    assert {p["action"] for p in policy["permission"]} == {"ai:research", "ai:evaluation"}
    for permission in policy["permission"]:
        assert permission["constraint"] == [
            {"leftOperand": "spatial", "operator": "isAnyOf", "rightOperand": ["DE", "FR"]}
        ]
        assert {"action": "odrl:inform"} in permission["duty"]
    assert "ai:pretraining" in {p["action"] for p in policy["prohibition"]}

    # The same name again is a conflict; an SPDX expression without a LicenseRef is normalised.
    before = await row_counts(db)
    again = await client.post(
        "/api/v1/licences",
        json={"name": "Acme Research Licence", "url": "https://acme.example/2", "uses": ["research"]},
        headers=owner.headers,
    )
    assert_problem(again, 409, "licence-exists")
    assert await row_counts(db) == before
    normalised = await client.post(
        "/api/v1/licences",
        json={"name": "Dual", "url": "https://acme.example/dual", "spdx": "mit or apache-2.0", "uses": ["research"]},
        headers=owner.headers,
    )
    assert normalised.status_code == 201, normalised.text
    assert normalised.json()["spdx"] == "MIT OR Apache-2.0"

    # Custom licences are listed after the seeded ones.
    listed = [item["id"] for item in (await client.get("/api/v1/licences", params={"limit": 100})).json()["items"]]
    if licence["id"] in listed:
        assert listed.index(licence["id"]) > max(listed.index(s) for s in SEEDED)


async def test_only_provider_members_add_licences(client: Client, db: asyncpg.Connection, people: People) -> None:
    buyer = await people.new()
    buyer_org = await make_org(client, buyer, kind="buyer")
    provider = await people.new()
    provider_org = await make_org(client, provider, kind="provider")
    body = {"name": "Mine", "url": "https://example.com/l", "uses": ["research"]}
    before = await row_counts(db)
    assert_problem(await client.post("/api/v1/licences", json=body), 401)
    assert_problem(
        await client.post("/api/v1/licences", json={**body, "org": buyer_org}, headers=buyer.headers), 403, "forbidden"
    )
    # Not a member of the provider org: it is not visible.
    assert_problem(
        await client.post("/api/v1/licences", json={**body, "org": provider_org}, headers=buyer.headers),
        404,
        "not-found",
    )
    assert await row_counts(db) == before


# --- bad input: licences and offers ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Bad:
    id: str
    path: str  # "licences" or "offers"
    body: dict[str, Any]
    status: int
    field: str | None = None


def _licence(**fields: Any) -> dict[str, Any]:
    return {"name": f"L-{uuid.uuid4().hex[:8]}", "url": "https://example.com/licence", "uses": ["research"], **fields}


BAD_INPUT = [
    Bad("unknown licence in offer", "offers", offer_body(licence_id="Not-A-Licence-9.9"), 422, "licence_id"),
    Bad("spdx id as licence id, wrong case", "offers", offer_body(licence_id="cc-by-4.0"), 422, "licence_id"),
    Bad(
        "purpose beyond the licence",
        "offers",
        offer_body(licence_id="CC-BY-NC-4.0", purposes=["research", "commercial_model_release"]),
        422,
        "purposes",
    ),
    Bad("no-derivatives licence for training", "offers", offer_body(licence_id="CC-BY-ND-4.0"), 422, "purposes"),
    Bad("unknown purpose", "offers", offer_body(purposes=["mind_reading"]), 422),
    Bad("no purposes", "offers", offer_body(purposes=[]), 422),
    Bad("negative price", "offers", offer_body(price={"amount": -1, "currency": "EUR"}), 422, "price.amount"),
    Bad("negative price string", "offers", offer_body(price={"amount": "-0.01", "currency": "EUR"}), 422),
    Bad("price abc", "offers", offer_body(price={"amount": "abc", "currency": "EUR"}), 422),
    Bad("price true", "offers", offer_body(price={"amount": True, "currency": "EUR"}), 422),
    Bad("price NaN", "offers", offer_body(price={"amount": "NaN", "currency": "EUR"}), 422, "price.amount"),
    Bad("price Infinity", "offers", offer_body(price={"amount": "Infinity", "currency": "EUR"}), 422),
    Bad("price 1e400", "offers", offer_body(price={"amount": "1e400", "currency": "EUR"}), 422, "price.amount"),
    Bad("price fractions of a cent", "offers", offer_body(price={"amount": "0.001", "currency": "EUR"}), 422),
    Bad("price 1e12", "offers", offer_body(price={"amount": 1e12, "currency": "EUR"}), 422, "price.amount"),
    Bad("price a cent past a billion", "offers", offer_body(price={"amount": "1000000000.01", "currency": "EUR"}), 422),
    Bad("quota beyond 64 bits", "offers", offer_body(quota={"downloads": 2**70, "bytes": 10}), 422, "quota.downloads"),
    Bad("price missing", "offers", {k: v for k, v in offer_body().items() if k != "price"}, 422),
    Bad("currency XXX", "offers", offer_body(price={"amount": "10", "currency": "XXX"}), 422, "price.currency"),
    Bad("currency usd", "offers", offer_body(price={"amount": "10", "currency": "usd"}), 422),
    Bad("currency euro", "offers", offer_body(price={"amount": "10", "currency": "EURO"}), 422),
    Bad("quota downloads 0", "offers", offer_body(quota={"downloads": 0, "bytes": 10}), 422),
    Bad("quota downloads -1", "offers", offer_body(quota={"downloads": -1, "bytes": 10}), 422),
    Bad("quota bytes 0", "offers", offer_body(quota={"downloads": 1, "bytes": 0}), 422),
    Bad("quota downloads 1.5", "offers", offer_body(quota={"downloads": 1.5}), 422),
    Bad("term 3661 days", "offers", offer_body(term_days=3661), 422),
    Bad("term 0 days", "offers", offer_body(term_days=0), 422),
    Bad("versions this", "offers", offer_body(versions="this"), 422),
    Bad("approval maybe", "offers", offer_body(approval="maybe"), 422),
    Bad("unknown field", "offers", offer_body(discount=10), 422),
    Bad("unknown target org", "offers", offer_body(target_orgs=["no-such-org-zzz"]), 422, "target_orgs"),
    Bad("unknown SPDX id", "licences", _licence(spdx="Made-Up-1.0"), 422, "spdx"),
    Bad("malformed SPDX expression", "licences", _licence(spdx="MIT AND OR Apache-2.0"), 422, "spdx"),
    Bad("unknown use", "licences", _licence(uses=["mind_reading"]), 422),
    Bad("unknown duty", "licences", _licence(duties=["praise"]), 422),
    Bad("territory not ISO 3166", "licences", _licence(territories=["Germany"]), 422),
    Bad("no licence text", "licences", {"name": "Textless", "uses": ["research"]}, 422, "url"),
    Bad("text and wrong digest", "licences", _licence(text="terms", text_sha256="0" * 64), 422, "text_sha256"),
    Bad("url not http", "licences", _licence(url="ftp://example.com/l"), 422),
]


@pytest.mark.parametrize(("amount", "echoed"), [("-0.00", "0.00"), (-0.0, "0.00"), (1_000_000_000, "1000000000.00")])
async def test_prices_at_the_edges_are_echoed_as_stored(
    client: Client, db: asyncpg.Connection, market: Market, amount: Any, echoed: str
) -> None:
    offer = await make_offer(client, market.provider, market.product, price={"amount": amount, "currency": "EUR"})
    assert offer["price"]["amount"] == echoed
    stored = await db.fetchval("SELECT price_amount::text FROM offers WHERE id = $1", uuid.UUID(offer["id"]))
    assert stored == echoed


@pytest.mark.parametrize("case", BAD_INPUT, ids=[c.id for c in BAD_INPUT])
async def test_bad_licence_and_offer_input_changes_nothing(
    client: Client, db: asyncpg.Connection, market: Market, case: Bad
) -> None:
    path = "/api/v1/licences" if case.path == "licences" else f"/api/v1/products/{market.product}/offers"
    before = await row_counts(db)
    response = await client.post(path, json=case.body, headers=market.provider.headers)
    body = assert_problem(response, case.status)
    if case.field is not None:
        assert case.field in [e["field"] for e in body.get("errors") or []], body
    assert await row_counts(db) == before


async def test_offers_are_created_listed_and_kept_private(
    client: Client, db: asyncpg.Connection, people: People, market: Market
) -> None:
    other = await people.new()
    other_org = await make_org(client, other, kind="buyer")
    public = await make_offer(client, market.provider, market.product, price={"amount": "1234.5", "currency": "USD"})
    assert public["price"] == {"amount": "1234.50", "currency": "USD"}
    assert public["licence_id"] == "CC-BY-4.0"
    assert public["purposes"] == ["research", "pretraining", "fine_tuning"]
    private = await make_offer(client, market.provider, market.product, name="Private", target_orgs=[market.buyer_org])
    assert private["target_orgs"] == [market.buyer_org]

    def ids(response: httpx.Response) -> set[str]:
        assert response.status_code == 200, response.text
        return {o["id"] for o in response.json()["items"]}

    path = f"/api/v1/products/{market.product}/offers"
    assert public["id"] in ids(await client.get(path))
    assert private["id"] not in ids(await client.get(path))
    assert private["id"] not in ids(await client.get(path, headers=other.headers))
    assert private["id"] in ids(await client.get(path, headers=market.buyer.headers))
    assert private["id"] in ids(await client.get(path, headers=market.provider.headers))

    # Only the target org can order a private offer; to anyone else it does not exist.
    before = await row_counts(db)
    assert_problem(await post_order(client, other, private["id"], other_org), 404, "not-found")
    assert await row_counts(db) == before
    assert (await post_order(client, market.buyer, private["id"], market.buyer_org)).status_code == 201

    # Another org's member cannot offer this product.
    assert_problem(await client.post(path, json=offer_body(), headers=other.headers), 403, "forbidden")
    assert await row_counts(db) == {
        **before,
        "orders": before["orders"] + 1,
        "entitlements": before["entitlements"] + 1,
    }


# --- granted terms do not move ---------------------------------------------------------------------------


async def test_entitlement_keeps_the_terms_it_was_granted_with(
    client: Client, db: asyncpg.Connection, people: People, market: Market
) -> None:
    created = await client.post(
        "/api/v1/licences",
        json={
            "name": f"Snapshot {uuid.uuid4().hex[:6]}",
            "url": "https://example.com/snapshot",
            "uses": ["research", "pretraining", "fine_tuning"],
            "duties": ["attribution"],
        },
        headers=market.provider.headers,
    )
    assert created.status_code == 201, created.text
    licence_id = created.json()["id"]
    offer = await make_offer(
        client,
        market.provider,
        market.product,
        licence_id=licence_id,
        quota={"downloads": 5, "bytes": 5000},
        purposes=["research", "pretraining"],
        term_days=90,
    )
    order = await order_ok(client, market.buyer, offer["id"], market.buyer_org, "pretraining")
    path = f"/api/v1/entitlements/{order['entitlement_id']}"
    granted = (await client.get(path, headers=market.buyer.headers)).json()
    stored = await db.fetchrow(
        "SELECT terms, terms_digest FROM entitlements WHERE id = $1", uuid.UUID(order["entitlement_id"])
    )
    assert stored is not None
    terms = json.loads(stored["terms"])
    # The digest is the SHA-256 of the canonical JSON of the snapshot, which holds the licence and the offer.
    assert stored["terms_digest"] == granted["terms_digest"] == canonical_digest(terms)
    assert terms["licence"]["uses"] == ["research", "pretraining", "fine_tuning"]
    assert terms["offer"]["quota"] == {"downloads": 5, "bytes": 5000}
    assert terms["offer"]["price"] == {"amount": "0.00", "currency": "EUR"}
    assert terms["purpose"] == "pretraining"
    assert granted["licence"] == terms["licence"]

    # The provider changes the licence's terms and every part of the offer.
    await db.execute(
        "UPDATE licences SET uses = ARRAY['research'], duties = ARRAY['attribution', 'share_alike', "
        "'usage_reporting'], territories = ARRAY['DE'], name = 'Rewritten' WHERE id = $1",
        licence_id,
    )
    patched = await client.patch(
        f"/api/v1/products/{market.product}/offers/{offer['id']}",
        json={
            "name": "Dearer",
            "price": {"amount": "999", "currency": "USD"},
            "quota": {"downloads": 1, "bytes": 10},
            "purposes": ["research"],
            "term_days": 7,
            "approval": "manual",
        },
        headers=market.provider.headers,
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["price"] == {"amount": "999.00", "currency": "USD"}
    assert patched.json()["quota"] == {"downloads": 1, "bytes": 10}
    assert patched.json()["purposes"] == ["research"]

    after = (await client.get(path, headers=market.buyer.headers)).json()
    for field in ("licence", "terms_digest", "quota", "purposes", "valid_from", "valid_until", "status"):
        assert after[field] == granted[field], field
    stored_after = await db.fetchrow(
        "SELECT terms, terms_digest, downloads_limit, bytes_limit FROM entitlements WHERE id = $1",
        uuid.UUID(order["entitlement_id"]),
    )
    assert stored_after is not None
    assert json.loads(stored_after["terms"]) == terms
    assert stored_after["terms_digest"] == stored["terms_digest"]
    assert (stored_after["downloads_limit"], stored_after["bytes_limit"]) == (5, 5000)

    # New orders get the new offer (once the first entitlement has ended): a purpose it no longer offers is
    # refused, and approval is now manual.
    ended = await client.post(f"{path}/revoke", json={"reason": "renewal"}, headers=market.provider.headers)
    assert ended.status_code == 200, ended.text
    refused = await post_order(client, market.buyer, offer["id"], market.buyer_org, "pretraining")
    assert assert_problem(refused, 422, "purpose-not-permitted")["permitted_purposes"] == ["research"]
    fresh = await order_ok(client, market.buyer, offer["id"], market.buyer_org, "research")
    assert fresh["status"] == "pending_approval"
    assert fresh["price"] == {"amount": "999.00", "currency": "USD"}


async def test_bad_offer_changes_are_refused(client: Client, db: asyncpg.Connection, market: Market) -> None:
    offer = await make_offer(client, market.provider, market.product, licence_id="CC-BY-NC-4.0")
    path = f"/api/v1/products/{market.product}/offers/{offer['id']}"
    before = await db.fetchrow("SELECT * FROM offers WHERE id = $1", uuid.UUID(offer["id"]))
    for change, status in (
        ({"price": {"amount": -5, "currency": "EUR"}}, 422),
        ({"price": {"amount": "abc", "currency": "EUR"}}, 422),
        ({"price": {"amount": "5", "currency": "XXX"}}, 422),
        ({"quota": {"downloads": 0}}, 422),
        ({"term_days": 3661}, 422),
        ({"purposes": ["commercial_model_release"]}, 422),
        ({"purposes": []}, 422),
        ({"licence_id": "CC0-1.0"}, 422),  # the licence of an offer is fixed; make a new offer instead
    ):
        assert_problem(await client.patch(path, json=change, headers=market.provider.headers), status)
    assert_problem(await client.patch(path, json={"term_days": 30}, headers=market.buyer.headers), 403, "forbidden")
    assert_problem(
        await client.patch(
            f"/api/v1/products/{market.product}/offers/{uuid.uuid4()}",
            json={"term_days": 30},
            headers=market.provider.headers,
        ),
        404,
    )
    assert await db.fetchrow("SELECT * FROM offers WHERE id = $1", uuid.UUID(offer["id"])) == before


async def test_offer_terms_are_frozen_while_orders_are_open(
    client: Client, db: asyncpg.Connection, people: People, market: Market
) -> None:
    """What a buyer accepted when ordering is what it is granted on approval or payment: an offer with open
    orders keeps its price, quota, purposes and term (archive it and make a new one instead)."""
    admin = await people.new("admin")
    offer = await make_offer(
        client, market.provider, market.product, price={"amount": "100", "currency": "EUR"}, quota={"downloads": 50}
    )
    order = await order_ok(client, market.buyer, offer["id"], market.buyer_org)
    assert order["status"] == "awaiting_payment"
    path = f"/api/v1/products/{market.product}/offers/{offer['id']}"
    before = await db.fetchrow("SELECT * FROM offers WHERE id = $1", uuid.UUID(offer["id"]))
    for change in (
        {"price": {"amount": "999", "currency": "EUR"}},
        {"quota": {"downloads": 1}},
        {"purposes": ["research"]},
        {"term_days": 1},
    ):
        assert_problem(
            await client.patch(path, json=change, headers=market.provider.headers), 409, "offer-has-open-orders"
        )
    assert await db.fetchrow("SELECT * FROM offers WHERE id = $1", uuid.UUID(offer["id"])) == before
    # What does not change the terms still can.
    renamed = await client.patch(path, json={"name": "Legacy", "archived": True}, headers=market.provider.headers)
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["archived_at"] is not None

    confirmed = await client.post(
        f"/api/v1/orders/{order['id']}/confirm-payment", json={"reference": "inv-1"}, headers=admin.headers
    )
    assert confirmed.status_code == 200, confirmed.text
    entitlement = (
        await client.get(f"/api/v1/entitlements/{confirmed.json()['entitlement_id']}", headers=market.buyer.headers)
    ).json()
    assert entitlement["quota"]["downloads_limit"] == 50
    terms = json.loads(await db.fetchval("SELECT terms FROM entitlements WHERE id = $1", uuid.UUID(entitlement["id"])))
    assert terms["offer"]["price"] == {"amount": "100.00", "currency": "EUR"}
    assert terms["offer"]["term_days"] == 365
    # With no order open any more, the terms can change for future orders.
    cheaper = await client.patch(
        path, json={"price": {"amount": "80", "currency": "EUR"}}, headers=market.provider.headers
    )
    assert cheaper.status_code == 200, cheaper.text
    assert cheaper.json()["price"] == {"amount": "80.00", "currency": "EUR"}

    # The same holds for a request waiting for the provider's decision.
    manual = await make_offer(client, market.provider, market.product, approval="manual")
    request = await order_ok(client, market.buyer, manual["id"], market.buyer_org)
    manual_path = f"/api/v1/products/{market.product}/offers/{manual['id']}"
    assert_problem(
        await client.patch(manual_path, json={"quota": {"downloads": 1}}, headers=market.provider.headers),
        409,
        "offer-has-open-orders",
    )
    approved = await client.post(f"/api/v1/orders/{request['id']}/approve", json={}, headers=market.provider.headers)
    assert approved.status_code == 200, approved.text
    granted = (
        await client.get(f"/api/v1/entitlements/{approved.json()['entitlement_id']}", headers=market.buyer.headers)
    ).json()
    assert granted["quota"]["downloads_limit"] == 100


async def test_licence_created_meanwhile_is_a_conflict(
    client: Client, db: asyncpg.Connection, staff_db: asyncpg.Connection, settings: Settings, people: People
) -> None:
    """Two requests for one name: the loser waits on the winner's row and gets a 409, not a 500."""
    owner = await people.new()
    org = await make_org(client, owner, kind="provider")
    licence_id = f"LicenseRef-{org}-Raced"
    org_id = await db.fetchval("SELECT id FROM organizations WHERE slug = $1", org)
    body = {"name": "Raced", "url": "https://example.com/raced", "uses": ["research"]}
    async with live_client(settings) as live:
        winner = db.transaction()
        await winner.start()
        try:
            await db.execute(
                "INSERT INTO licences (id, name, uses, duties, territories, note, owner_org_id) "
                "VALUES ($1, 'Raced', ARRAY['research'], ARRAY[]::text[], ARRAY[]::text[], '', $2)",
                licence_id,
                org_id,
            )
            loser = asyncio.create_task(live.post("/api/v1/licences", json=body, headers=owner.headers))
            waiting = 0
            for _ in range(200):  # until the request waits for the winner's row
                waiting = await staff_db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO licences%'"
                )
                if waiting or loser.done():
                    break
                await asyncio.sleep(0.05)
            assert waiting == 1, "the request did not wait for the concurrent insert"
        finally:
            await winner.commit()
        assert_problem(await loser, 409, "licence-exists")
    assert await db.fetchval("SELECT count(*) FROM licences WHERE id = $1", licence_id) == 1
