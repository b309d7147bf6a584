"""Licensing and catalog events reach exactly the orgs they concern, in their inboxes and signed webhooks."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from typing import Any

import asyncpg
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.jobs import enqueue
from tests.catalog.helpers import make_product, make_version, upload
from tests.conftest import Account, make_org, sign_up
from tests.licensing.helpers import download_body, market, publish
from tests.webhook_helpers import Receiver, Worker, create_webhook, verify

Client = AsyncTestClient[Litestar]
EVERYTHING = [
    "order.created",
    "order.approved",
    "order.rejected",
    "order.fulfilled",
    "entitlement.revoked",
    "entitlement.expiring",
    "version.submitted",
    "version.published",
    "version.rejected",
    "quota.threshold",
]


async def inbox(client: Client, account: Account, org: str) -> list[dict[str, Any]]:
    response = await client.get(f"/api/v1/notifications?org={org}&limit=100", headers=account.headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def types_received(receiver: Receiver, url: str, secret: str) -> Counter[str]:
    received = receiver.to(url)
    for request in received:
        verify(secret, request)
    return Counter(request.json()["type"] for request in received)


async def test_order_version_and_entitlement_events_reach_the_orgs_concerned_only(
    hooks_client: Client, worker: Worker, receiver: Receiver, db: asyncpg.Connection
) -> None:
    provider = await sign_up(hooks_client)
    provider_org = await make_org(hooks_client, provider, kind="provider")
    buyer = await sign_up(hooks_client)
    buyer_org = await make_org(hooks_client, buyer, kind="buyer")
    bystander = await sign_up(hooks_client)
    bystander_org = await make_org(hooks_client, bystander)
    urls = {org: receiver.url for org in (provider_org, buyer_org, bystander_org)}
    hooks = {
        org: await create_webhook(hooks_client, account, org, urls[org], EVERYTHING)
        for org, account in [(provider_org, provider), (buyer_org, buyer), (bystander_org, bystander)]
    }

    slug = await make_product(hooks_client, provider, provider_org)
    await make_version(hooks_client, provider, slug)
    assert (await upload(hooks_client, provider, slug, "1.0.0", "a.txt", b"alpha")).status_code == 200
    await publish(hooks_client, db, provider, slug)  # submitted, then approved by a reviewer
    offer = await hooks_client.post(
        f"/api/v1/products/{slug}/offers",
        json={
            "name": "on request",
            "licence_id": "CC-BY-4.0",
            "price": {"amount": 0, "currency": "EUR"},
            "term_days": 30,
            "quota": {"downloads": 10, "bytes": None},
            "versions": "all",
            "approval": "manual",
            "purposes": ["research"],
        },
        headers=provider.headers,
    )
    assert offer.status_code == 201, offer.text
    order = await hooks_client.post(
        "/api/v1/orders",
        json={"offer_id": offer.json()["id"], "buyer_org": buyer_org, "purpose": "research"},
        headers={**buyer.headers, "Idempotency-Key": f"order-{uuid.uuid4().hex}"},
    )
    assert order.status_code == 201, order.text
    approved = await hooks_client.post(
        f"/api/v1/orders/{order.json()['id']}/approve", json={"reason": "welcome"}, headers=provider.headers
    )
    assert approved.status_code == 200, approved.text
    entitlement_id = (await hooks_client.get(f"/api/v1/orders/{order.json()['id']}", headers=buyer.headers)).json()[
        "entitlement_id"
    ]
    revoked = await hooks_client.post(
        f"/api/v1/entitlements/{entitlement_id}/revoke", json={"reason": "licence breach"}, headers=provider.headers
    )
    assert revoked.status_code == 200, revoked.text
    await worker.run()

    order_events = {"order.created": 1, "order.approved": 1, "order.fulfilled": 1, "entitlement.revoked": 1}
    assert types_received(receiver, urls[provider_org], hooks[provider_org]["secret"]) == Counter(
        {**order_events, "version.submitted": 1, "version.published": 1}
    )
    assert types_received(receiver, urls[buyer_org], hooks[buyer_org]["secret"]) == Counter(order_events)
    assert types_received(receiver, urls[bystander_org], hooks[bystander_org]["secret"]) == Counter()
    assert await inbox(hooks_client, bystander, bystander_org) == []

    buyer_inbox = await inbox(hooks_client, buyer, buyer_org)
    assert [n["type"] for n in buyer_inbox] == [
        "entitlement.revoked",
        "order.fulfilled",
        "order.approved",
        "order.created",
    ]
    fulfilled = buyer_inbox[1]["data"]
    assert fulfilled["entitlement_id"] == entitlement_id
    assert (fulfilled["buyer_org"], fulfilled["provider_org"], fulfilled["product"]) == (buyer_org, provider_org, slug)
    assert buyer_inbox[0]["data"]["reason"] == "licence breach"
    provider_types = [n["type"] for n in await inbox(hooks_client, provider, provider_org)]
    assert provider_types[-2:] == ["version.published", "version.submitted"]


async def test_rejected_version_and_order_are_told(
    hooks_client: Client, worker: Worker, receiver: Receiver, db: asyncpg.Connection
) -> None:
    from tests.conftest import grant_platform_role

    provider = await sign_up(hooks_client)
    provider_org = await make_org(hooks_client, provider, kind="provider")
    slug = await make_product(hooks_client, provider, provider_org)
    await make_version(hooks_client, provider, slug)
    assert (await upload(hooks_client, provider, slug, "1.0.0", "a.txt", b"alpha")).status_code == 200
    submitted = await hooks_client.post(f"/api/v1/products/{slug}/versions/1.0.0/publish", headers=provider.headers)
    assert submitted.json()["state"] == "in_review"
    reviewer = await grant_platform_role(hooks_client, db, await sign_up(hooks_client), "reviewer")
    rejected = await hooks_client.post(
        f"/api/v1/products/{slug}/versions/1.0.0/review",
        json={"decision": "reject", "reason": "provenance incomplete"},
        headers=reviewer.headers,
    )
    assert rejected.status_code == 200, rejected.text
    items = await inbox(hooks_client, provider, provider_org)
    assert [n["type"] for n in items] == ["version.rejected", "version.submitted"]
    assert items[0]["data"]["reason"] == "provenance incomplete"


async def test_quota_threshold_is_told_once_at_80_percent(
    hooks_client: Client, worker: Worker, receiver: Receiver, db: asyncpg.Connection
) -> None:
    files = {f"f{n}.txt": f"file {n}".encode() for n in range(5)}
    m = await market(hooks_client, db, files=files, downloads=5)
    url = receiver.url
    hook = await create_webhook(hooks_client, m.buyer, m.buyer_org, url, ["quota.threshold"])
    for n, path in enumerate(files):
        granted = await hooks_client.post("/api/v1/downloads", json=download_body(m, path), headers=m.buyer.headers)
        assert granted.status_code == 201, granted.text
        told = [x for x in await inbox(hooks_client, m.buyer, m.buyer_org) if x["type"] == "quota.threshold"]
        assert len(told) == (0 if n < 3 else 1), n  # the 4th download of 5 reaches 80 %
    await worker.run()
    [received] = receiver.to(url)
    verify(hook["secret"], received)
    data = received.json()["data"]
    assert (data["quota"], data["used"], data["limit"], data["entitlement_id"]) == ("downloads", 4, 5, m.entitlement_id)
    assert [x["type"] for x in await inbox(hooks_client, m.provider, m.provider_org)].count("quota.threshold") == 0


async def test_entitlement_expiring_is_told_a_week_ahead_once(
    hooks_client: Client, worker: Worker, db: asyncpg.Connection
) -> None:
    m = await market(hooks_client, db)
    later = await market(hooks_client, db)
    await db.execute(
        "UPDATE entitlements SET valid_until = now() + interval '3 days' WHERE id = $1", uuid.UUID(m.entitlement_id)
    )
    for _ in range(2):
        async with worker.sessionmaker() as session, session.begin():
            await enqueue(session, "licensing.expiring_notices", timestamp=int(dt.datetime.now(dt.UTC).timestamp()))
        await worker.run()
    told = [x for x in await inbox(hooks_client, m.buyer, m.buyer_org) if x["type"] == "entitlement.expiring"]
    assert len(told) == 1
    assert told[0]["data"]["entitlement_id"] == m.entitlement_id
    assert [x["type"] for x in await inbox(hooks_client, later.buyer, later.buyer_org)].count(
        "entitlement.expiring"
    ) == 0  # 30 days left
