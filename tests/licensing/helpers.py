"""A published product, an offer and a buyer holding an entitlement: the starting point of download tests."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient

from tests.catalog.helpers import make_product, make_version, upload
from tests.conftest import Account, grant_platform_role, make_org, sign_up


@dataclasses.dataclass
class Market:
    provider: Account
    provider_org: str
    product: str
    buyer: Account
    buyer_org: str
    entitlement_id: str
    files: dict[str, bytes]


async def publish(
    client: AsyncTestClient[Any], db: asyncpg.Connection, owner: Account, slug: str, version: str = "1.0.0"
) -> None:
    response = await client.post(f"/api/v1/products/{slug}/versions/{version}/publish", headers=owner.headers)
    assert response.status_code == 200, response.text
    if response.json()["state"] == "in_review":
        reviewer = await grant_platform_role(client, db, await sign_up(client), "reviewer")
        approved = await client.post(
            f"/api/v1/products/{slug}/versions/{version}/review", json={"decision": "approve"}, headers=reviewer.headers
        )
        assert approved.status_code == 200, approved.text


async def market(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection,
    *,
    files: dict[str, bytes] | None = None,
    downloads: int | None = 10,
    bytes_limit: int | None = None,
    purposes: tuple[str, ...] = ("research", "evaluation"),
    versions: str = "all",
    licence: str = "CC-BY-4.0",
) -> Market:
    files = files or {"data/a.txt": b"alpha " * 1000, "data/b.txt": b"beta " * 2000}
    provider = await sign_up(client)
    provider_org = await make_org(client, provider, kind="provider")
    slug = await make_product(client, provider, provider_org)
    await make_version(client, provider, slug, licence=licence)
    for path, content in files.items():
        done = await upload(client, provider, slug, "1.0.0", path, content)
        assert done.status_code == 200, done.text
    await publish(client, db, provider, slug)
    offer = await client.post(
        f"/api/v1/products/{slug}/offers",
        json={
            "name": "research access",
            "licence_id": licence,
            "price": {"amount": 0, "currency": "EUR"},
            "term_days": 30,
            "quota": {"downloads": downloads, "bytes": bytes_limit},
            "versions": versions,
            "approval": "automatic",
            "purposes": list(purposes),
        },
        headers=provider.headers,
    )
    assert offer.status_code == 201, offer.text
    buyer = await sign_up(client)
    buyer_org = await make_org(client, buyer, kind="buyer")
    order = await client.post(
        "/api/v1/orders",
        json={"offer_id": offer.json()["id"], "buyer_org": buyer_org, "purpose": purposes[0]},
        headers={**buyer.headers, "Idempotency-Key": f"order-{uuid.uuid4().hex}"},
    )
    assert order.status_code == 201, order.text
    assert order.json()["status"] == "fulfilled"
    return Market(provider, provider_org, slug, buyer, buyer_org, order.json()["entitlement_id"], files)


def download_body(m: Market, path: str, purpose: str = "research", version: str = "1.0.0") -> dict[str, Any]:
    return {
        "entitlement_id": m.entitlement_id,
        "product": m.product,
        "version": version,
        "path": path,
        "purpose": purpose,
    }
