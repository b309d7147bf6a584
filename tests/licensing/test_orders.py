"""Orders and entitlements: who sees what, idempotent creation under concurrent retries, manual approval,
payment (by a platform admin or a signed webhook), expiry, revocation and suspension, bad input, and the
per-product transparency numbers."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import hmac
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
from sqlalchemy.ext.asyncio import async_sessionmaker

from app.db import create_engine
from app.main import create_app
from app.settings import Settings
from licensing.sweeps import sweep
from tests.conftest import Account, Servers, make_org, sequence_audit
from tests.licensing.test_licensing import (
    Market,
    People,
    assert_problem,
    live_client,
    make_offer,
    open_market,
    order_ok,
    post_order,
    published_product,
    row_counts,
    staff_connection,
)

Client = AsyncTestClient[Litestar]


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
async def platform_admin(people: People) -> Account:
    return await people.new("admin")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def live(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """For requests that must really run at the same time (see :func:`live_client`)."""
    async with live_client(settings) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session")
async def market(client: Client, people: People, reviewer: Account) -> Market:
    return await open_market(client, people, reviewer)


async def add_member(client: Client, people: People, owner: Account, org: str, role: str) -> Account:
    account = await people.new()
    response = await client.post(
        f"/api/v1/orgs/{org}/members", json={"email": account.email, "role": role}, headers=owner.headers
    )
    assert response.status_code == 201, response.text
    return account


def ids(response: httpx.Response) -> set[str]:
    assert response.status_code == 200, response.text
    return {item["id"] for item in response.json()["items"]}


async def order_status(db: asyncpg.Connection, order_id: str) -> str:
    status: str = await db.fetchval("SELECT status FROM orders WHERE id = $1", uuid.UUID(order_id))
    return status


async def entitlements_of(db: asyncpg.Connection, order_id: str) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM entitlements WHERE order_id = $1", uuid.UUID(order_id))
    return count


# --- visibility ------------------------------------------------------------------------------------------


async def test_buyers_and_providers_see_only_their_own(client: Client, people: People, reviewer: Account) -> None:
    one = await open_market(client, people, reviewer)
    other_provider = await people.new()
    other_org = await make_org(client, other_provider, kind="provider")
    other_product = await published_product(client, other_provider, other_org, reviewer)
    buyer_b = await people.new()
    buyer_b_org = await make_org(client, buyer_b, kind="buyer")
    outsider = await people.new()

    offer = await make_offer(client, one.provider, one.product)
    other_offer = await make_offer(client, other_provider, other_product)
    order_a = await order_ok(client, one.buyer, offer["id"], one.buyer_org)
    order_b = await order_ok(client, buyer_b, offer["id"], buyer_b_org)
    order_b2 = await order_ok(client, buyer_b, other_offer["id"], buyer_b_org)
    for order in (order_a, order_b, order_b2):
        assert order["status"] == "fulfilled"
        assert order["entitlement_id"] is not None
    ent_a, ent_b, ent_b2 = order_a["entitlement_id"], order_b["entitlement_id"], order_b2["entitlement_id"]

    # Buyer A: its own order and entitlement only.
    assert (await client.get(f"/api/v1/orders/{order_a['id']}", headers=one.buyer.headers)).status_code == 200
    assert (await client.get(f"/api/v1/entitlements/{ent_a}", headers=one.buyer.headers)).status_code == 200
    for order in (order_b, order_b2):
        assert_problem(await client.get(f"/api/v1/orders/{order['id']}", headers=one.buyer.headers), 404, "not-found")
    for entitlement in (ent_b, ent_b2):
        assert_problem(
            await client.get(f"/api/v1/entitlements/{entitlement}", headers=one.buyer.headers), 404, "not-found"
        )
    assert ids(await client.get("/api/v1/orders", headers=one.buyer.headers)) == {order_a["id"]}
    assert ids(await client.get("/api/v1/entitlements", headers=one.buyer.headers)) == {ent_a}

    # Buyer B sees both of its orders, filtered by product on request.
    assert ids(await client.get("/api/v1/orders", headers=buyer_b.headers)) == {order_b["id"], order_b2["id"]}
    assert ids(await client.get("/api/v1/orders", params={"product": other_product}, headers=buyer_b.headers)) == {
        order_b2["id"]
    }
    assert ids(await client.get("/api/v1/entitlements", headers=buyer_b.headers)) == {ent_b, ent_b2}

    # The provider sees what was ordered of its product, and nothing of the other provider's.
    assert ids(await client.get("/api/v1/orders", headers=one.provider.headers)) == {order_a["id"], order_b["id"]}
    assert ids(await client.get("/api/v1/entitlements", headers=one.provider.headers)) == {ent_a, ent_b}
    assert (await client.get(f"/api/v1/entitlements/{ent_b}", headers=one.provider.headers)).status_code == 200
    assert_problem(await client.get(f"/api/v1/orders/{order_b2['id']}", headers=one.provider.headers), 404)
    assert_problem(await client.get(f"/api/v1/entitlements/{ent_b2}", headers=one.provider.headers), 404)
    assert ids(await client.get("/api/v1/orders", headers=other_provider.headers)) == {order_b2["id"]}
    assert ids(await client.get("/api/v1/entitlements", headers=other_provider.headers)) == {ent_b2}

    # Someone in no org sees nothing.
    assert ids(await client.get("/api/v1/orders", headers=outsider.headers)) == set()
    assert ids(await client.get("/api/v1/entitlements", headers=outsider.headers)) == set()
    assert_problem(await client.get(f"/api/v1/orders/{order_a['id']}", headers=outsider.headers), 404)
    assert_problem(await client.get(f"/api/v1/entitlements/{ent_a}", headers=outsider.headers), 404)
    assert_problem(await client.get(f"/api/v1/orders/{order_a['id']}"), 401)
    assert_problem(await client.get("/api/v1/entitlements"), 401)

    entitlement = (await client.get(f"/api/v1/entitlements/{ent_a}", headers=one.buyer.headers)).json()
    assert entitlement["product"] == one.product
    assert entitlement["buyer_org"] == one.buyer_org
    assert entitlement["purposes"] == ["research"]
    assert entitlement["licence"]["id"] == "CC-BY-4.0"
    assert entitlement["quota"] == {"downloads_limit": 100, "downloads_used": 0, "bytes_limit": 10**9, "bytes_used": 0}
    assert entitlement["terms_digest"].startswith("sha256:")
    valid = dt.datetime.fromisoformat(entitlement["valid_until"]) - dt.datetime.fromisoformat(entitlement["valid_from"])
    assert valid == dt.timedelta(days=365)


# --- idempotency -----------------------------------------------------------------------------------------


async def test_ten_concurrent_retries_make_one_order(
    client: Client, live: httpx.AsyncClient, db: asyncpg.Connection, people: People, market: Market
) -> None:
    offer = await make_offer(client, market.provider, market.product)
    key = f"retry-{uuid.uuid4().hex}"
    responses = await asyncio.gather(
        *(post_order(live, market.buyer, offer["id"], market.buyer_org, key=key) for _ in range(10))
    )
    assert sorted(r.status_code for r in responses) == [200] * 9 + [201], [r.text for r in responses]
    bodies = [r.json() for r in responses]
    assert len({b["id"] for b in bodies}) == 1
    assert len({b["entitlement_id"] for b in bodies}) == 1
    assert bodies[0]["entitlement_id"] is not None
    assert {b["status"] for b in bodies} == {"fulfilled"}
    order_id = bodies[0]["id"]
    assert await db.fetchval("SELECT count(*) FROM orders WHERE idempotency_key = $1", key) == 1
    assert await entitlements_of(db, order_id) == 1

    # The same key with another body is refused and writes nothing; with the same body it replays.
    before = await row_counts(db)
    changed: list[tuple[str, dict[str, Any] | None]] = [("pretraining", None), ("research", {"team": "search"})]
    for purpose, answers in changed:
        reused = await post_order(
            client, market.buyer, offer["id"], market.buyer_org, purpose, key=key, answers=answers
        )
        assert_problem(reused, 422, "idempotency-key-reused")
    assert await row_counts(db) == before
    replay = await post_order(client, market.buyer, offer["id"], market.buyer_org, key=key)
    assert replay.status_code == 200
    assert replay.json()["id"] == order_id
    assert await row_counts(db) == before

    # Keys belong to their user: a colleague using the same key places a new order (of another offer: the org
    # already holds an entitlement under this one).
    colleague = await add_member(client, people, market.buyer, market.buyer_org, "member")
    other = await make_offer(client, market.provider, market.product)
    theirs = await post_order(client, colleague, other["id"], market.buyer_org, key=key)
    assert theirs.status_code == 201, theirs.text
    assert theirs.json()["id"] != order_id


async def test_concurrent_requests_with_one_key_and_different_bodies(
    client: Client, live: httpx.AsyncClient, db: asyncpg.Connection, market: Market
) -> None:
    offer = await make_offer(client, market.provider, market.product)
    key = f"race-{uuid.uuid4().hex}"
    purposes = ["research", "pretraining"] * 4
    responses = await asyncio.gather(
        *(post_order(live, market.buyer, offer["id"], market.buyer_org, p, key=key) for p in purposes)
    )
    assert await db.fetchval("SELECT count(*) FROM orders WHERE idempotency_key = $1", key) == 1
    winner = await db.fetchrow("SELECT id, purpose FROM orders WHERE idempotency_key = $1", key)
    assert winner is not None
    for purpose, response in zip(purposes, responses, strict=True):
        if purpose == winner["purpose"]:
            assert response.status_code in (200, 201), response.text
            assert response.json()["id"] == str(winner["id"])
        else:
            assert_problem(response, 422, "idempotency-key-reused")
    assert await entitlements_of(db, str(winner["id"])) == 1


# --- manual approval and payment -------------------------------------------------------------------------


async def test_manual_approval_flow(
    client: Client, db: asyncpg.Connection, people: People, market: Market, platform_admin: Account
) -> None:
    free = await make_offer(client, market.provider, market.product, approval="manual")
    paid = await make_offer(
        client, market.provider, market.product, approval="manual", price={"amount": "250", "currency": "EUR"}
    )
    provider_admin = await add_member(client, people, market.provider, market.provider_org, "admin")
    provider_member = await add_member(client, people, market.provider, market.provider_org, "member")
    other_provider = await people.new()
    await make_org(client, other_provider, kind="provider")

    request = await order_ok(client, market.buyer, free["id"], market.buyer_org)
    assert request["status"] == "pending_approval"
    assert request["entitlement_id"] is None
    ttl = dt.datetime.fromisoformat(request["expires_at"]) - dt.datetime.fromisoformat(request["created_at"])
    assert ttl == dt.timedelta(days=45)
    approve = f"/api/v1/orders/{request['id']}/approve"
    reject = f"/api/v1/orders/{request['id']}/reject"

    before = await row_counts(db)
    assert_problem(await client.post(reject, json={"reason": "x" * 501}, headers=market.provider.headers), 422)
    assert_problem(await client.post(reject, json={"reason": "   "}, headers=market.provider.headers), 422)
    # The buyer sees its request but cannot decide it; another provider does not see it at all.
    assert_problem(await client.post(approve, json={}, headers=market.buyer.headers), 403, "forbidden")
    assert_problem(await client.post(approve, json={}, headers=other_provider.headers), 404, "not-found")
    assert_problem(await client.post(reject, json={"reason": "no"}, headers=other_provider.headers), 404)
    assert_problem(await client.post(approve, json={}, headers=provider_member.headers), 403, "forbidden")
    assert await row_counts(db) == before
    assert await order_status(db, request["id"]) == "pending_approval"
    assert await db.fetchval("SELECT decided_at FROM orders WHERE id = $1", uuid.UUID(request["id"])) is None

    approved = await client.post(approve, json={"reason": "research use fits"}, headers=provider_admin.headers)
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "fulfilled"
    assert approved.json()["entitlement_id"] is not None
    assert approved.json()["decision_reason"] == "research use fits"
    assert await entitlements_of(db, request["id"]) == 1
    assert_problem(await client.post(approve, json={}, headers=market.provider.headers), 409, "order-not-pending")
    assert_problem(await client.post(reject, json={"reason": "late"}, headers=market.provider.headers), 409)
    assert await entitlements_of(db, request["id"]) == 1

    # While the entitlement is current, the org cannot order the offer again; it names the entitlement.
    twice = assert_problem(
        await post_order(client, market.buyer, free["id"], market.buyer_org), 409, "already-entitled"
    )
    assert twice["entitlement_id"] == approved.json()["entitlement_id"]

    # A rejection carries its reason (up to 500 characters) to the buyer and grants nothing.
    another = await make_offer(client, market.provider, market.product, approval="manual")
    second = await order_ok(client, market.buyer, another["id"], market.buyer_org)
    rejected = await client.post(
        f"/api/v1/orders/{second['id']}/reject", json={"reason": "y" * 500}, headers=market.provider.headers
    )
    assert rejected.status_code == 200, rejected.text
    seen = (await client.get(f"/api/v1/orders/{second['id']}", headers=market.buyer.headers)).json()
    assert seen["status"] == "rejected"
    assert seen["decision_reason"] == "y" * 500
    assert seen["entitlement_id"] is None
    assert await entitlements_of(db, second["id"]) == 0

    # A paid request, once approved, waits for payment; only a platform admin confirms it.
    paid_request = await order_ok(client, market.buyer, paid["id"], market.buyer_org)
    assert paid_request["status"] == "pending_approval"
    assert_problem(
        await client.post(
            f"/api/v1/orders/{paid_request['id']}/confirm-payment", json={}, headers=platform_admin.headers
        ),
        409,
        "order-not-awaiting-payment",
    )
    approved = await client.post(
        f"/api/v1/orders/{paid_request['id']}/approve", json={}, headers=market.provider.headers
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "awaiting_payment"
    assert approved.json()["entitlement_id"] is None
    assert approved.json()["price"] == {"amount": "250.00", "currency": "EUR"}
    confirm = f"/api/v1/orders/{paid_request['id']}/confirm-payment"
    for account in (market.provider, market.buyer, provider_admin):
        assert_problem(await client.post(confirm, json={"reference": "pay-1"}, headers=account.headers), 403)
    assert await order_status(db, paid_request["id"]) == "awaiting_payment"
    assert await entitlements_of(db, paid_request["id"]) == 0
    confirmed = await client.post(confirm, json={"reference": "pay-1"}, headers=platform_admin.headers)
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "fulfilled"
    assert confirmed.json()["paid_at"] is not None
    assert confirmed.json()["entitlement_id"] is not None
    # Confirming twice grants nothing more.
    again = await client.post(confirm, json={"reference": "pay-1"}, headers=platform_admin.headers)
    assert again.status_code == 200
    assert await entitlements_of(db, paid_request["id"]) == 1

    # A paid offer with automatic approval waits for payment at once.
    automatic = await make_offer(client, market.provider, market.product, price={"amount": "9.99", "currency": "GBP"})
    placed = await order_ok(client, market.buyer, automatic["id"], market.buyer_org)
    assert placed["status"] == "awaiting_payment"
    assert placed["entitlement_id"] is None
    deadline = dt.datetime.fromisoformat(placed["expires_at"]) - dt.datetime.fromisoformat(placed["created_at"])
    assert dt.timedelta(days=7) - dt.timedelta(minutes=1) < deadline <= dt.timedelta(days=7)
    # The buyer can still cancel it; then it can no longer be paid.
    cancelled = await client.post(f"/api/v1/orders/{placed['id']}/cancel", headers=market.buyer.headers)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert_problem(
        await client.post(f"/api/v1/orders/{placed['id']}/confirm-payment", json={}, headers=platform_admin.headers),
        409,
    )
    assert await entitlements_of(db, placed["id"]) == 0


async def test_actions_the_contract_gives_no_body_need_none(
    client: Client, db: asyncpg.Connection, market: Market, platform_admin: Account
) -> None:
    """``approve``, ``reject``, ``confirm-payment`` and ``revoke`` are complete without a body (as the contract
    writes them); a body that is sent is still checked."""
    free = await make_offer(client, market.provider, market.product, approval="manual")
    paid = await make_offer(
        client, market.provider, market.product, approval="manual", price={"amount": "10", "currency": "EUR"}
    )
    rejected_offer = await make_offer(client, market.provider, market.product, approval="manual")
    orders = [await order_ok(client, market.buyer, o["id"], market.buyer_org) for o in (free, paid, rejected_offer)]
    first, second, third = (f"/api/v1/orders/{order['id']}" for order in orders)

    approved = await client.post(f"{first}/approve", headers=market.provider.headers)
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "fulfilled"
    rejected = await client.post(f"{third}/reject", headers=market.provider.headers)
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["status"] == "rejected"
    assert (await client.post(f"{second}/approve", headers=market.provider.headers)).json()["status"] == (
        "awaiting_payment"
    )
    confirmed = await client.post(f"{second}/confirm-payment", headers=platform_admin.headers)
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "fulfilled"

    entitlement = f"/api/v1/entitlements/{approved.json()['entitlement_id']}"
    assert_problem(await client.post(f"{entitlement}/revoke", json={"reason": 5}, headers=market.provider.headers), 422)
    assert_problem(
        await client.post(f"{entitlement}/revoke", json={"reason": " "}, headers=market.provider.headers), 422
    )
    assert (await client.get(entitlement, headers=market.buyer.headers)).json()["status"] == "active"
    revoked = await client.post(f"{entitlement}/revoke", headers=market.provider.headers)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["status"] == "revoked"
    assert revoked.json()["status_reason"] is None
    await sequence_audit(db)
    assert (
        await db.fetchval(
            "SELECT count(*) FROM audit_events WHERE action = 'entitlement.revoked' AND target_id = $1",
            approved.json()["entitlement_id"],
        )
        == 1
    )

    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    for path in ("/api/v1/orders/{order_id}/approve", "/api/v1/entitlements/{entitlement_id}/revoke"):
        assert paths[path]["post"]["requestBody"]["required"] is False, path


def signed(secret: str, event: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(event).encode()
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return body, {"Content-Type": "application/json", "X-Corpora-Signature": f"sha256={signature}"}


async def test_payment_webhook_needs_the_right_signature(
    client: Client, db: asyncpg.Connection, settings: Settings, market: Market
) -> None:
    offer = await make_offer(client, market.provider, market.product, price={"amount": "100", "currency": "USD"})
    order = await order_ok(client, market.buyer, offer["id"], market.buyer_org)
    assert order["status"] == "awaiting_payment"
    event = {"order_id": order["id"], "reference": "ch_123", "status": "paid"}
    secret = "whsec-" + uuid.uuid4().hex

    # Without a configured secret the webhook does not exist.
    body, headers = signed(secret, event)
    assert_problem(await client.post("/api/v1/payments/webhook", content=body, headers=headers), 404)

    hook_app = create_app(dataclasses.replace(settings, payment_webhook_secret=secret))
    async with AsyncTestClient(app=hook_app, base_url="http://testserver.local") as hook:
        for wrong in ("0" * 64, signed("another-secret", event)[1]["X-Corpora-Signature"], ""):
            response = await hook.post(
                "/api/v1/payments/webhook",
                content=body,
                headers={"Content-Type": "application/json", "X-Corpora-Signature": wrong},
            )
            assert_problem(response, 401)
        # A signature over another body does not carry over.
        tampered = json.dumps({**event, "order_id": str(uuid.uuid4())}).encode()
        assert_problem(await hook.post("/api/v1/payments/webhook", content=tampered, headers=headers), 401)
        missing = await hook.post(
            "/api/v1/payments/webhook", content=body, headers={"Content-Type": "application/json"}
        )
        assert 400 <= missing.status_code < 500
        assert await order_status(db, order["id"]) == "awaiting_payment"
        assert await entitlements_of(db, order["id"]) == 0

        # A failed payment is acknowledged and changes nothing.
        failed_body, failed_headers = signed(secret, {**event, "status": "failed"})
        failed = await hook.post("/api/v1/payments/webhook", content=failed_body, headers=failed_headers)
        assert failed.status_code == 200, failed.text
        assert await order_status(db, order["id"]) == "awaiting_payment"

        # A payment of another amount or currency than the order's price is refused and changes nothing.
        for collected in ({"amount": "99.99", "currency": "USD"}, {"amount": "100", "currency": "EUR"}):
            short_body, short_headers = signed(secret, {**event, **collected})
            short = await hook.post("/api/v1/payments/webhook", content=short_body, headers=short_headers)
            assert_problem(short, 409)
            assert short.json()["type"] == "payment-mismatch"
        assert await order_status(db, order["id"]) == "awaiting_payment"
        assert await entitlements_of(db, order["id"]) == 0

        unsigned = await hook.post(
            "/api/v1/payments/webhook", content=json.dumps(event).encode(), headers={"Content-Type": "application/json"}
        )
        assert_problem(unsigned, 422)
        assert [e["field"] for e in unsigned.json()["errors"]] == ["X-Corpora-Signature"]
        # A reference longer than an order keeps, or a body that is not one, is refused naming the field.
        for bad, field in (({**event, "reference": "r" * 201}, "reference"), ({**event, "order_id": "x"}, "order_id")):
            bad_body, bad_headers = signed(secret, bad)
            refused = await hook.post("/api/v1/payments/webhook", content=bad_body, headers=bad_headers)
            assert_problem(refused, 422)
            assert [e["field"] for e in refused.json()["errors"]] == [field]
        assert await order_status(db, order["id"]) == "awaiting_payment"

        paid_body, paid_headers = signed(secret, {**event, "amount": "100.00", "currency": "usd"})
        paid = await hook.post("/api/v1/payments/webhook", content=paid_body, headers=paid_headers)
        assert paid.status_code == 200, paid.text
        assert paid.json() == {"status": "fulfilled"}
        # Delivered twice: still one entitlement.
        assert (await hook.post("/api/v1/payments/webhook", content=body, headers=headers)).status_code == 200
        unknown_body, unknown_headers = signed(secret, {**event, "order_id": str(uuid.uuid4())})
        assert_problem(await hook.post("/api/v1/payments/webhook", content=unknown_body, headers=unknown_headers), 404)
        garbage_body = b'{"order_id": "not-a-uuid"}'
        garbage_headers = {
            "Content-Type": "application/json",
            "X-Corpora-Signature": hmac.new(secret.encode(), garbage_body, hashlib.sha256).hexdigest(),
        }
        assert_problem(await hook.post("/api/v1/payments/webhook", content=garbage_body, headers=garbage_headers), 422)

    row = await db.fetchrow(
        "SELECT status, paid_at, payment_reference FROM orders WHERE id = $1", uuid.UUID(order["id"])
    )
    assert row is not None
    assert row["status"] == "fulfilled"
    assert row["paid_at"] is not None
    assert row["payment_reference"] == "ch_123"
    assert await entitlements_of(db, order["id"]) == 1
    seen = (await client.get(f"/api/v1/orders/{order['id']}", headers=market.buyer.headers)).json()
    assert seen["status"] == "fulfilled"
    assert seen["entitlement_id"] is not None


# --- expiry ----------------------------------------------------------------------------------------------


async def run_sweep(settings: Settings) -> tuple[int, int]:
    """One round of the periodic sweep, in its own transaction, as the background task runs it."""
    engine = create_engine(settings.database_url or "")
    try:
        async with async_sessionmaker(engine)() as session, session.begin():
            return await sweep(session)
    finally:
        await engine.dispose()


async def test_requests_and_entitlements_expire(
    client: Client, db: asyncpg.Connection, settings: Settings, market: Market
) -> None:
    manual = await make_offer(client, market.provider, market.product, approval="manual")
    first = await order_ok(client, market.buyer, manual["id"], market.buyer_org)
    second = await order_ok(client, market.buyer, manual["id"], market.buyer_org)
    for order in (first, second):
        await db.execute(
            "UPDATE orders SET created_at = now() - interval '46 days', expires_at = now() - interval '1 day' "
            "WHERE id = $1",
            uuid.UUID(order["id"]),
        )

    # Read after its deadline, a request shows as expired and can no longer be approved.
    seen = await client.get(f"/api/v1/orders/{first['id']}", headers=market.buyer.headers)
    assert seen.status_code == 200
    assert seen.json()["status"] == "expired"
    assert await order_status(db, first["id"]) == "pending_approval"  # reads never write: the sweep records it
    assert_problem(
        await client.post(f"/api/v1/orders/{first['id']}/approve", json={}, headers=market.provider.headers),
        409,
        "order-not-pending",
    )
    # The sweep expires the other one without anybody reading it.
    await run_sweep(settings)
    assert await order_status(db, second["id"]) == "expired"
    assert_problem(
        await client.post(f"/api/v1/orders/{second['id']}/approve", json={}, headers=market.provider.headers),
        409,
        "order-not-pending",
    )
    assert await entitlements_of(db, second["id"]) == 0
    # A request inside its 45 days is untouched by the sweep.
    fresh = await order_ok(client, market.buyer, manual["id"], market.buyer_org)
    await run_sweep(settings)
    assert await order_status(db, fresh["id"]) == "pending_approval"

    # Entitlements past their term: expired when read, and by the sweep.
    automatic = await make_offer(client, market.provider, market.product, term_days=30)
    another = await make_offer(client, market.provider, market.product, term_days=30)
    read_one = await order_ok(client, market.buyer, automatic["id"], market.buyer_org)
    swept_one = await order_ok(client, market.buyer, another["id"], market.buyer_org)
    for order in (read_one, swept_one):
        await db.execute(
            "UPDATE entitlements SET valid_from = now() - interval '31 days', valid_until = now() - interval '1 day' "
            "WHERE id = $1",
            uuid.UUID(order["entitlement_id"]),
        )
    entitlement = await client.get(f"/api/v1/entitlements/{read_one['entitlement_id']}", headers=market.buyer.headers)
    assert entitlement.status_code == 200
    assert entitlement.json()["status"] == "expired"
    assert entitlement.json()["status_reason"] == "term ended"
    assert (
        await db.fetchval("SELECT status FROM entitlements WHERE id = $1", uuid.UUID(read_one["entitlement_id"]))
        == "active"
    )  # reads never write
    # Ended, it no longer stands in the way of a new order of the same offer.
    renewed = await order_ok(client, market.buyer, automatic["id"], market.buyer_org)
    assert renewed["entitlement_id"] != read_one["entitlement_id"]
    await run_sweep(settings)
    assert (
        await db.fetchval("SELECT status FROM entitlements WHERE id = $1", uuid.UUID(swept_one["entitlement_id"]))
        == "expired"
    )
    # An expired entitlement cannot be suspended or reinstated.
    assert_problem(
        await client.post(
            f"/api/v1/entitlements/{read_one['entitlement_id']}/suspend",
            json={"reason": "late"},
            headers=market.provider.headers,
        ),
        409,
    )


async def test_overdue_requests_never_show_as_pending(client: Client, db: asyncpg.Connection, market: Market) -> None:
    manual = await make_offer(client, market.provider, market.product, approval="manual")
    overdue = await order_ok(client, market.buyer, manual["id"], market.buyer_org)
    waiting = await order_ok(client, market.buyer, manual["id"], market.buyer_org)
    await db.execute(
        "UPDATE orders SET created_at = now() - interval '45 days 1 minute', expires_at = now() - interval '1 minute' "
        "WHERE id = $1",
        uuid.UUID(overdue["id"]),
    )
    pending = await client.get(
        "/api/v1/orders", params={"status": "pending_approval", "product": market.product}, headers=market.buyer.headers
    )
    assert ids(pending) == {waiting["id"]}
    listed = await client.get("/api/v1/orders", params={"product": market.product}, headers=market.provider.headers)
    assert {o["id"]: o["status"] for o in listed.json()["items"]} == {
        overdue["id"]: "expired",
        waiting["id"]: "pending_approval",
    }
    numbers = (await client.get(f"/api/v1/products/{market.product}/offers/transparency")).json()
    assert (numbers["requests"], numbers["pending"]) == (2, 1)


async def test_unpaid_orders_expire_and_free_their_offer(
    client: Client, db: asyncpg.Connection, market: Market, platform_admin: Account
) -> None:
    paid = await make_offer(client, market.provider, market.product, price={"amount": "5", "currency": "EUR"})
    unpaid = await order_ok(client, market.buyer, paid["id"], market.buyer_org)
    assert unpaid["status"] == "awaiting_payment"
    offer_url = f"/api/v1/products/{market.product}/offers/{paid['id']}"
    reprice = {"price": {"amount": "6", "currency": "EUR"}}
    # While the order is open, the offer's terms are frozen.
    assert_problem(await client.patch(offer_url, json=reprice, headers=market.provider.headers), 409)
    await db.execute(
        "UPDATE orders SET expires_at = now() - interval '1 minute' WHERE id = $1", uuid.UUID(unpaid["id"])
    )
    # Past its deadline it can no longer be paid, and it shows as expired.
    confirm = f"/api/v1/orders/{unpaid['id']}/confirm-payment"
    assert_problem(await client.post(confirm, json={"reference": "late"}, headers=platform_admin.headers), 409)
    assert await entitlements_of(db, unpaid["id"]) == 0
    shown = await client.get(f"/api/v1/orders/{unpaid['id']}", headers=market.buyer.headers)
    assert shown.json()["status"] == "expired"
    assert await order_status(db, unpaid["id"]) == "awaiting_payment"  # reads never write: the sweep records it
    # No open order holds the offer any more.
    assert (await client.patch(offer_url, json=reprice, headers=market.provider.headers)).status_code == 200


async def test_concurrent_decisions_grant_once(
    client: Client, live: httpx.AsyncClient, db: asyncpg.Connection, market: Market, platform_admin: Account
) -> None:
    manual = await make_offer(client, market.provider, market.product, approval="manual")
    request = await order_ok(client, market.buyer, manual["id"], market.buyer_org)
    decisions: list[tuple[str, dict[str, str]]] = [("approve", {})] * 5 + [
        ("reject", {"reason": "changed my mind"})
    ] * 2
    responses = await asyncio.gather(
        *(
            live.post(f"/api/v1/orders/{request['id']}/{verb}", json=body, headers=market.provider.headers)
            for verb, body in decisions
        )
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] + [409] * 6, [r.text for r in responses]
    final = await order_status(db, request["id"])
    assert await entitlements_of(db, request["id"]) == (1 if final == "fulfilled" else 0)

    # Payment confirmed several times at once: one entitlement.
    paid = await make_offer(client, market.provider, market.product, price={"amount": "5", "currency": "CHF"})
    order = await order_ok(client, market.buyer, paid["id"], market.buyer_org)
    confirmations = await asyncio.gather(
        *(
            live.post(
                f"/api/v1/orders/{order['id']}/confirm-payment",
                json={"reference": "wire-7"},
                headers=platform_admin.headers,
            )
            for _ in range(6)
        )
    )
    assert [r.status_code for r in confirmations] == [200] * 6, [r.text for r in confirmations]
    assert len({r.json()["entitlement_id"] for r in confirmations}) == 1
    assert await entitlements_of(db, order["id"]) == 1


async def api_key(client: Client, owner: Account, org: str, scopes: list[str]) -> Account:
    """``owner`` acting through a new API key of ``org`` with ``scopes``."""
    response = await client.post(
        "/api/v1/api-keys",
        json={
            "name": "ci",
            "org": org,
            "scopes": scopes,
            "expires_at": (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat(),
        },
        headers=owner.headers,
    )
    assert response.status_code == 201, response.text
    return dataclasses.replace(owner, token=response.json()["key"])


async def test_orders_with_api_keys(client: Client, db: asyncpg.Connection, people: People, market: Market) -> None:
    offer = await make_offer(client, market.provider, market.product)
    second_org = await make_org(client, market.buyer, kind="buyer")
    reader = await api_key(client, market.buyer, market.buyer_org, ["catalog:read"])
    writer = await api_key(client, market.buyer, market.buyer_org, ["orders:write"])
    before = await row_counts(db)
    assert_problem(await post_order(client, reader, offer["id"], market.buyer_org), 403, "forbidden")
    # A key is confined to its org, even where its user is a member of another.
    assert_problem(await post_order(client, writer, offer["id"], second_org), 404, "not-found")
    assert await row_counts(db) == before
    placed = await post_order(client, writer, offer["id"], market.buyer_org)
    assert placed.status_code == 201, placed.text
    # What the key's org ordered is visible through it; the other org's orders are not.
    other = await order_ok(client, market.buyer, offer["id"], second_org)
    listed = ids(await client.get("/api/v1/orders", headers=writer.headers))
    assert placed.json()["id"] in listed
    assert other["id"] not in listed
    assert_problem(await client.get(f"/api/v1/orders/{other['id']}", headers=writer.headers), 404)
    assert_problem(await client.get(f"/api/v1/entitlements/{other['entitlement_id']}", headers=writer.headers), 404)


async def test_order_and_entitlement_actions_need_the_orders_scope_and_a_role_that_acts(
    client: Client, db: asyncpg.Connection, people: People, market: Market
) -> None:
    """Deciding and cancelling orders and changing entitlements are writes: a key needs ``orders:write`` (and
    its own org), and the buyer's auditors, who see the order, do not act on it."""
    manual = await make_offer(client, market.provider, market.product, approval="manual")
    automatic = await make_offer(client, market.provider, market.product)

    async def events() -> int:
        await sequence_audit(db)
        count: int = await db.fetchval(
            "SELECT count(*) FROM audit_events WHERE target_type IN ('order', 'entitlement')"
        )
        return count

    pending = await order_ok(client, market.buyer, manual["id"], market.buyer_org)
    entitlement_id = (await order_ok(client, market.buyer, automatic["id"], market.buyer_org))["entitlement_id"]
    reason = {"reason": "checking the narrow key"}
    before = (await events(), await order_status(db, pending["id"]))
    for scopes in (["catalog:read"], ["audit:read"], ["catalog:write", "downloads"]):
        provider_key = await api_key(client, market.provider, market.provider_org, scopes)
        buyer_key = await api_key(client, market.buyer, market.buyer_org, scopes)
        for path, body in (
            (f"/api/v1/orders/{pending['id']}/approve", {}),
            (f"/api/v1/orders/{pending['id']}/reject", reason),
        ):
            assert_problem(await client.post(path, json=body, headers=provider_key.headers), 403, "forbidden")
        for action in ("suspend", "revoke"):
            refused = await client.post(
                f"/api/v1/entitlements/{entitlement_id}/{action}", json=reason, headers=provider_key.headers
            )
            assert_problem(refused, 403, "forbidden")
        cancel = await client.post(f"/api/v1/orders/{pending['id']}/cancel", json={}, headers=buyer_key.headers)
        assert_problem(cancel, 403, "forbidden")
    auditor = await add_member(client, people, market.buyer, market.buyer_org, "auditor")
    assert (await client.get(f"/api/v1/orders/{pending['id']}", headers=auditor.headers)).status_code == 200
    cancel = await client.post(f"/api/v1/orders/{pending['id']}/cancel", json={}, headers=auditor.headers)
    assert_problem(cancel, 403, "forbidden")
    assert (await events(), await order_status(db, pending["id"])) == before
    entitlement = await client.get(f"/api/v1/entitlements/{entitlement_id}", headers=market.buyer.headers)
    assert entitlement.json()["status"] == "active"

    # With the scope, the same actions go through.
    writer = await api_key(client, market.provider, market.provider_org, ["orders:write"])
    suspended = await client.post(f"/api/v1/entitlements/{entitlement_id}/suspend", json=reason, headers=writer.headers)
    assert suspended.status_code == 200, suspended.text
    buyer_writer = await api_key(client, market.buyer, market.buyer_org, ["orders:write"])
    cancelled = await client.post(f"/api/v1/orders/{pending['id']}/cancel", json={}, headers=buyer_writer.headers)
    assert cancelled.status_code == 200, cancelled.text
    assert await order_status(db, pending["id"]) == "cancelled"


async def test_order_and_entitlement_lists_page_through_everything(client: Client, market: Market) -> None:
    offers = [await make_offer(client, market.provider, market.product) for _ in range(5)]
    placed = {(await order_ok(client, market.buyer, offer["id"], market.buyer_org))["id"] for offer in offers}

    async def walk(path: str) -> list[str]:
        seen: list[str] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 2, "product": market.product}
            if cursor:
                params["cursor"] = cursor
            page = await client.get(path, params=params, headers=market.buyer.headers)
            assert page.status_code == 200, page.text
            assert len(page.json()["items"]) <= 2
            seen += [item["id"] for item in page.json()["items"]]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                return seen

    orders = await walk("/api/v1/orders")
    assert len(orders) == len(set(orders))
    assert placed <= set(orders)
    entitlements = await walk("/api/v1/entitlements")
    assert len(entitlements) == len(set(entitlements)) >= 5
    for path in ("/api/v1/orders", "/api/v1/entitlements"):
        assert_problem(
            await client.get(path, params={"cursor": "not a cursor"}, headers=market.buyer.headers),
            400,
            "invalid-cursor",
        )


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/api/v1/orders", "pending_approval, awaiting_payment, fulfilled, rejected, cancelled, expired"),
        ("/api/v1/entitlements", "active, suspended, revoked, expired"),
    ],
)
@pytest.mark.parametrize("status", ["nope", "", "FULFILLED", "Active"])
async def test_unknown_status_filters_are_refused(
    client: Client, market: Market, path: str, allowed: str, status: str
) -> None:
    response = await client.get(path, params={"status": status}, headers=market.buyer.headers)
    problem = assert_problem(response, 422, "validation-error")
    assert [e["field"] for e in problem["errors"]] == ["status"]
    assert f"expected one of {allowed}" in problem["errors"][0]["message"]
    assert f"'{status}'" in problem["detail"]


async def test_status_filters_in_the_openapi_schema_list_their_values(client: Client) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    for path, values in (
        ("/api/v1/orders", ["pending_approval", "awaiting_payment", "fulfilled", "rejected", "cancelled", "expired"]),
        ("/api/v1/entitlements", ["active", "suspended", "revoked", "expired"]),
    ):
        (status,) = [p for p in schema["paths"][path]["get"]["parameters"] if p["name"] == "status"]
        assert status["in"] == "query"
        assert status["schema"]["enum"] == [*values, None], status


# --- revocation and suspension ---------------------------------------------------------------------------


async def test_revoke_suspend_and_reinstate(
    client: Client, db: asyncpg.Connection, people: People, market: Market, platform_admin: Account
) -> None:
    offer = await make_offer(client, market.provider, market.product)
    order = await order_ok(client, market.buyer, offer["id"], market.buyer_org)
    entitlement_id = order["entitlement_id"]
    base = f"/api/v1/entitlements/{entitlement_id}"
    provider_member = await add_member(client, people, market.provider, market.provider_org, "member")
    outsider = await people.new()
    other_provider = await people.new()
    await make_org(client, other_provider, kind="provider")
    reason = {"reason": "licence audit pending"}

    for action in ("suspend", "revoke", "reinstate"):
        assert_problem(await client.post(f"{base}/{action}", json=reason, headers=market.buyer.headers), 403)
        assert_problem(await client.post(f"{base}/{action}", json=reason, headers=provider_member.headers), 403)
        assert_problem(await client.post(f"{base}/{action}", json=reason, headers=outsider.headers), 404)
        assert_problem(await client.post(f"{base}/{action}", json=reason, headers=other_provider.headers), 404)
        assert_problem(await client.post(f"{base}/{action}", json={"reason": ""}, headers=market.provider.headers), 422)
    for action in ("suspend", "revoke"):
        blank = await client.post(f"{base}/{action}", json={"reason": "  \n "}, headers=market.provider.headers)
        assert_problem(blank, 422)
    assert await db.fetchval("SELECT status FROM entitlements WHERE id = $1", uuid.UUID(entitlement_id)) == "active"

    suspended = await client.post(f"{base}/suspend", json=reason, headers=market.provider.headers)
    assert suspended.status_code == 200, suspended.text
    assert suspended.json()["status"] == "suspended"
    seen = (await client.get(base, headers=market.buyer.headers)).json()
    assert seen["status"] == "suspended"
    assert seen["status_reason"] == "licence audit pending"
    assert_problem(await client.post(f"{base}/suspend", json=reason, headers=market.provider.headers), 409)

    reinstated = await client.post(f"{base}/reinstate", json={"reason": "audit done"}, headers=market.provider.headers)
    assert reinstated.status_code == 200, reinstated.text
    assert reinstated.json()["status"] == "active"
    assert reinstated.json()["status_reason"] is None

    revoked = await client.post(f"{base}/revoke", json={"reason": "breach of terms"}, headers=market.provider.headers)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["status"] == "revoked"
    assert revoked.json()["status_reason"] == "breach of terms"
    assert await db.fetchval("SELECT revoked_at FROM entitlements WHERE id = $1", uuid.UUID(entitlement_id))
    for action in ("reinstate", "suspend", "revoke"):
        assert_problem(await client.post(f"{base}/{action}", json=reason, headers=market.provider.headers), 409)
    assert (await client.get(base, headers=market.buyer.headers)).json()["status"] == "revoked"

    # A platform admin may revoke any entitlement.
    another = await order_ok(client, market.buyer, offer["id"], market.buyer_org)
    by_admin = await client.post(
        f"/api/v1/entitlements/{another['entitlement_id']}/revoke",
        json={"reason": "takedown"},
        headers=platform_admin.headers,
    )
    assert by_admin.status_code == 200, by_admin.text
    assert by_admin.json()["status"] == "revoked"


# --- bad order input -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BadOrder:
    id: str
    status: int
    type: str | None = None
    purpose: str = "research"
    offer: str = "offer"  # "offer", "unknown", "archived", "not-a-uuid"
    as_provider: bool = False  # the provider orders for its own org
    buyer_org: str | None = None  # None: the buyer's org
    key: str | None = "valid-key-0001"  # None: no Idempotency-Key header
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


BAD_ORDERS = [
    BadOrder("own product", 403, "forbidden", as_provider=True),
    BadOrder("missing idempotency key", 400, key=None),
    BadOrder("empty idempotency key", 400, key=""),
    BadOrder("short idempotency key", 400, key="abc"),
    BadOrder("purpose not in offer", 422, "purpose-not-permitted", purpose="commercial_model_release"),
    BadOrder("unknown purpose", 422, "validation-error", purpose="mind_reading"),
    BadOrder("unknown offer", 404, "not-found", offer="unknown"),
    BadOrder("archived offer", 404, "not-found", offer="archived"),
    BadOrder("offer id not a uuid", 422, offer="not-a-uuid"),
    BadOrder("buyer org not mine", 404, "not-found", buyer_org="provider"),
    BadOrder("buyer org unknown", 404, "not-found", buyer_org="no-such-org-zzz"),
    BadOrder("unknown field", 422, extra={"discount": 5}),
]


@dataclasses.dataclass(frozen=True)
class Shop:
    market: Market
    offer: str
    archived: str


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def shop(client: Client, people: People, reviewer: Account) -> Shop:
    market = await open_market(client, people, reviewer)
    offer = await make_offer(client, market.provider, market.product, purposes=["research", "evaluation"])
    archived = await make_offer(client, market.provider, market.product)
    response = await client.patch(
        f"/api/v1/products/{market.product}/offers/{archived['id']}",
        json={"archived": True},
        headers=market.provider.headers,
    )
    assert response.status_code == 200, response.text
    return Shop(market, offer["id"], archived["id"])


@pytest.mark.parametrize("case", BAD_ORDERS, ids=[c.id for c in BAD_ORDERS])
async def test_bad_order_input_changes_nothing(
    client: Client, db: asyncpg.Connection, shop: Shop, case: BadOrder
) -> None:
    market = shop.market
    offer = {"offer": shop.offer, "unknown": str(uuid.uuid4()), "archived": shop.archived, "not-a-uuid": "12"}[
        case.offer
    ]
    account = market.provider if case.as_provider else market.buyer
    buyer_org = {None: market.buyer_org, "provider": market.provider_org}.get(case.buyer_org, case.buyer_org)
    if case.as_provider:
        buyer_org = market.provider_org
    headers = dict(account.headers)
    if case.key is not None:
        headers["Idempotency-Key"] = f"{case.key}-{uuid.uuid4().hex}" if len(case.key) >= 8 else case.key
    body = {"offer_id": offer, "buyer_org": buyer_org, "purpose": case.purpose, **case.extra}
    before = await row_counts(db)
    problem = assert_problem(await client.post("/api/v1/orders", json=body, headers=headers), case.status, case.type)
    if case.type == "purpose-not-permitted":
        assert problem["permitted_purposes"] == ["research", "evaluation"]
        assert case.purpose in problem["detail"]
    assert await row_counts(db) == before


# --- transparency ----------------------------------------------------------------------------------------


async def test_transparency_counts_decisions(client: Client, db: asyncpg.Connection, market: Market) -> None:
    path = f"/api/v1/products/{market.product}/offers/transparency"
    empty = await client.get(path)
    assert empty.status_code == 200, empty.text
    assert empty.json() == {
        "product": market.product,
        "requests": 0,
        "decided": 0,
        "approved": 0,
        "rejected": 0,
        "pending": 0,
        "approval_rate": None,
        "median_hours_to_decision": None,
    }
    manual = await make_offer(client, market.provider, market.product, approval="manual")
    automatic = await make_offer(client, market.provider, market.product)
    yes = await order_ok(client, market.buyer, manual["id"], market.buyer_org)
    no = await order_ok(client, market.buyer, manual["id"], market.buyer_org)
    await order_ok(client, market.buyer, manual["id"], market.buyer_org)  # left pending
    await order_ok(client, market.buyer, automatic["id"], market.buyer_org)  # not an access request
    approved = await client.post(f"/api/v1/orders/{yes['id']}/approve", json={}, headers=market.provider.headers)
    assert approved.status_code == 200, approved.text
    rejected = await client.post(
        f"/api/v1/orders/{no['id']}/reject", json={"reason": "not a fit"}, headers=market.provider.headers
    )
    assert rejected.status_code == 200, rejected.text
    # Ten and twenty hours to decide: a median of fifteen.
    for order, hours in ((yes, 10), (no, 20)):
        await db.execute(
            "UPDATE orders SET created_at = decided_at - make_interval(hours => $2) WHERE id = $1",
            uuid.UUID(order["id"]),
            hours,
        )

    numbers = await client.get(path)
    assert numbers.status_code == 200, numbers.text
    assert numbers.json() == {
        "product": market.product,
        "requests": 3,
        "decided": 2,
        "approved": 1,
        "rejected": 1,
        "pending": 1,
        "approval_rate": 0.5,
        "median_hours_to_decision": 15.0,
    }
    assert_problem(await client.get("/api/v1/products/no-such-product-zzz/offers/transparency"), 404)


async def test_offers_page_through_everything(client: Client, market: Market) -> None:
    for _ in range(3):
        await make_offer(client, market.provider, market.product)
    path = f"/api/v1/products/{market.product}/offers"
    everything = await client.get(path, params={"limit": 100}, headers=market.buyer.headers)
    assert everything.status_code == 200, everything.text
    expected = [offer["id"] for offer in everything.json()["items"]]
    assert len(expected) >= 3
    walked: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get(path, params=params, headers=market.buyer.headers)).json()
        assert len(page["items"]) <= 2
        walked += [offer["id"] for offer in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert walked == expected
    for garbage in ("zzz", "", "MXwy"):
        refused = await client.get(path, params={"cursor": garbage}, headers=market.buyer.headers)
        assert_problem(refused, 400, "invalid-cursor")
