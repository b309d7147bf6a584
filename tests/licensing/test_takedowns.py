"""Takedowns on real PostgreSQL and SeaweedFS, with webhooks to a real local receiver: content addressed by its
SHA-256 is withdrawn from every version that holds it, downloaders are named and asked to attest, and nobody else
sees or acts on a takedown."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest_asyncio
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.main import create_app
from app.settings import Settings
from catalog.uploads import blob_key
from tests.accounts.test_access import assert_problem, member_of
from tests.catalog.helpers import make_version, upload
from tests.conftest import Account, grant_platform_role, make_org, sequence_audit, sign_up
from tests.licensing.helpers import Market, download_body, market, publish
from tests.statements import counting_client
from tests.webhook_helpers import Receiver, Worker, create_webhook, verify

Client = AsyncTestClient[Litestar]

SHARED = b"a paragraph the rights holder owns\n" * 300
ONLY_OLD = b"content of 1.0.0 alone\n" * 200
ONLY_NEW = b"content of 1.1.0 alone\n" * 200
SHARED_SHA = hashlib.sha256(SHARED).hexdigest()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def proxy_client(loopback_settings: Settings, app: Litestar) -> AsyncIterator[Client]:
    """An app that delivers through its proxy endpoint and may send webhooks to the loopback receiver."""
    proxy_app = create_app(dataclasses.replace(loopback_settings, download_mode="proxy"), keyring=app.state.keyring)
    async with AsyncTestClient(app=proxy_app, base_url="http://testserver.local") as test_client:
        yield test_client


async def two_versions(client: Client, db: asyncpg.Connection) -> Market:
    """A product whose 1.0.0 and 1.1.0 both hold SHARED (under different paths), and a buyer of every version."""
    m = await market(client, db, files={"data/shared.txt": SHARED, "data/old.txt": ONLY_OLD}, downloads=50)
    await make_version(client, m.provider, m.product, "1.1.0")
    for path, content in {"data/copy-of-shared.txt": SHARED, "data/new.txt": ONLY_NEW}.items():
        done = await upload(client, m.provider, m.product, "1.1.0", path, content)
        assert done.status_code == 200, done.text
    await publish(client, db, m.provider, m.product, "1.1.0")
    return m


async def grant(client: Client, m: Market, path: str, version: str = "1.0.0") -> Any:
    return await client.post("/api/v1/downloads", json=download_body(m, path, version=version), headers=m.buyer.headers)


def claim(m: Market, **fields: Any) -> dict[str, Any]:
    return {
        "product": m.product,
        "reason": "copied from our archive without a licence",
        "claimant": {"name": "Rita Rights", "email": "rita@example.com", "rights_holder": "Example Wire"},
        **fields,
    }


async def file_takedown(client: Client, claimant: Account, body: dict[str, Any]) -> str:
    created = await client.post("/api/v1/takedowns", json=body, headers=claimant.headers)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "received"
    takedown_id: str = created.json()["id"]
    return takedown_id


async def decide(client: Client, who: Account, takedown_id: str, decision: str) -> Any:
    return await client.post(
        f"/api/v1/takedowns/{takedown_id}/decide", json={"decision": decision, "reason": "checked"}, headers=who.headers
    )


async def inbox(client: Client, account: Account, org: str) -> list[dict[str, Any]]:
    listed = await client.get("/api/v1/notifications", params={"org": org}, headers=account.headers)
    assert listed.status_code == 200, listed.text
    items: list[dict[str, Any]] = listed.json()["items"]
    return items


async def audited(db: asyncpg.Connection, takedown_id: str) -> list[tuple[str, str]]:
    await sequence_audit(db)
    rows = await db.fetch(
        "SELECT e.action, o.slug FROM audit_events e LEFT JOIN organizations o ON o.id = e.org_id "
        "WHERE e.target_type = 'takedown' AND e.target_id = $1 ORDER BY e.seq",
        takedown_id,
    )
    return [(row["action"], row["slug"]) for row in rows]


async def test_an_upheld_takedown_by_sha256_withdraws_every_copy_and_collects_the_downloaders_attestation(
    proxy_client: Client, hooks_client: Client, worker: Worker, receiver: Receiver, db: asyncpg.Connection
) -> None:
    client = proxy_client
    m = await two_versions(client, db)
    elsewhere = await market(client, db, files={"same/shared.txt": SHARED})  # another provider stores it too
    bystander = await market(client, db, files={"x.txt": b"x" * 100})
    provider_hook = await create_webhook(
        client, m.provider, m.provider_org, receiver.url, ["takedown.received", "takedown.upheld"]
    )
    buyer_hook = await create_webhook(client, m.buyer, m.buyer_org, receiver.url, ["takedown.upheld"])
    bystander_hook = await create_webhook(
        client, bystander.buyer, bystander.buyer_org, receiver.url, ["takedown.upheld"]
    )

    downloaded = await grant(client, m, "data/shared.txt")
    assert downloaded.status_code == 201, downloaded.text
    assert downloaded.json()["mode"] == "proxy"
    download_id = downloaded.json()["download_id"]
    content = await client.get(f"/api/v1/downloads/{download_id}/content", headers=m.buyer.headers)
    assert content.status_code == 200
    assert content.content == SHARED

    claimant = await sign_up(client)
    takedown_id = await file_takedown(client, claimant, claim(m, sha256=[SHARED_SHA]))
    assert (await inbox(client, m.provider, m.provider_org))[0]["type"] == "takedown.received"
    await worker.run()
    (received,) = receiver.to(provider_hook["url"])
    verify(provider_hook["secret"], received)
    assert received.json()["type"] == "takedown.received"
    assert received.json()["data"]["sha256"] == [SHARED_SHA]

    decided = await decide(client, m.provider, takedown_id, "uphold")
    assert decided.status_code == 200, decided.text
    body = decided.json()
    assert (body["status"], body["decision"], body["reach"]) == ("upheld", "uphold", "provider")
    assert body["sha256"] == [SHARED_SHA]
    (affected,) = body["affected"]
    assert (affected["org"], affected["entitlement_id"], affected["sha256"]) == (
        m.buyer_org,
        m.entitlement_id,
        [SHARED_SHA],
    )
    assert affected["last_downloaded_at"] is not None
    assert affected["attested_at"] is None
    assert body["attestations"] == {"required": 1, "received": 0}

    # New grants of the content are refused in both versions that hold it, presigned or proxied alike.
    for path, version in (("data/shared.txt", "1.0.0"), ("data/copy-of-shared.txt", "1.1.0")):
        refused = await grant(client, m, path, version)
        assert_problem(refused, 451, "taken-down")
        assert_problem(await grant(hooks_client, m, path, version), 451, "taken-down")
    assert (await grant(client, m, "data/old.txt")).status_code == 201
    manifest = await client.post(
        "/api/v1/downloads/manifest",
        json={k: v for k, v in download_body(m, "", version="1.1.0").items() if k != "path"},
        headers=m.buyer.headers,
    )
    assert manifest.status_code == 201, manifest.text
    assert [item["path"] for item in manifest.json()["items"]] == ["data/new.txt"]
    # The proxied download stops at once, and no fresh URL is issued for it.
    stopped = await client.get(f"/api/v1/downloads/{download_id}/content", headers=m.buyer.headers)
    assert_problem(stopped, 451, "taken-down")
    assert_problem(
        await client.post(f"/api/v1/downloads/{download_id}/refresh", headers=m.buyer.headers), 451, "taken-down"
    )
    # The provider decided: another provider's product holding the same bytes is not its to take down.
    assert (await grant(client, elsewhere, "same/shared.txt")).status_code == 201

    # The downloader is told and asked to attest; nobody else is.
    assert (await inbox(client, m.buyer, m.buyer_org))[0]["type"] == "takedown.upheld"
    assert [
        n for n in await inbox(client, bystander.buyer, bystander.buyer_org) if n["type"].startswith("takedown.")
    ] == []
    await worker.run()
    (upheld,) = receiver.to(buyer_hook["url"])
    verify(buyer_hook["secret"], upheld)
    assert upheld.json()["data"]["takedown_id"] == takedown_id
    assert upheld.json()["data"]["attestation_requested"] is True
    assert receiver.to(bystander_hook["url"]) == []
    assert [r.json()["type"] for r in receiver.to(provider_hook["url"])] == ["takedown.received", "takedown.upheld"]

    member = await member_of(client, m.buyer, m.buyer_org, "member")
    statement = {"org": m.buyer_org, "statement": "deleted from every store and backup"}
    attest_url = f"/api/v1/takedowns/{takedown_id}/attest"
    assert_problem(await client.post(attest_url, json=statement, headers=member.headers), 403)
    attested = await client.post(attest_url, json=statement, headers=m.buyer.headers)
    assert attested.status_code == 200, attested.text
    (row,) = attested.json()["affected"]
    assert row["attested_at"] is not None
    assert row["statement"] == statement["statement"]
    assert_problem(await client.post(attest_url, json=statement, headers=m.buyer.headers), 409, "already-attested")
    seen_by_provider = (await client.get(f"/api/v1/takedowns/{takedown_id}", headers=m.provider.headers)).json()
    assert seen_by_provider["attestations"] == {"required": 1, "received": 1}
    assert seen_by_provider["affected"][0]["attested_at"] is not None
    # The claimant follows the takedown without learning who had bought the content.
    seen_by_claimant = (await client.get(f"/api/v1/takedowns/{takedown_id}", headers=claimant.headers)).json()
    assert seen_by_claimant["affected"] == []
    assert seen_by_claimant["attestations"] == {"required": 1, "received": 1}

    # The stored object is kept for the record under legal hold, and every step is in the audit trail.
    store = client.app.state.object_store
    assert await store.size_of(blob_key(SHARED_SHA)) == len(SHARED)
    assert store.client.is_object_legal_hold_enabled(store.bucket, blob_key(SHARED_SHA))
    assert await audited(db, takedown_id) == [
        ("takedown.received", m.provider_org),
        ("takedown.upheld", m.provider_org),
        ("takedown.attestation_requested", m.buyer_org),
        ("takedown.content_held", m.provider_org),
        ("takedown.attested", m.buyer_org),
    ]


async def test_a_platform_admins_decision_withdraws_the_content_from_every_product(
    proxy_client: Client, db: asyncpg.Connection
) -> None:
    content = uuid.uuid4().bytes * 500
    m = await market(proxy_client, db, files={"a.bin": content})
    other = await market(proxy_client, db, files={"elsewhere/a.bin": content})
    admin = await grant_platform_role(proxy_client, db, await sign_up(proxy_client), "admin")
    takedown_id = await file_takedown(proxy_client, await sign_up(proxy_client), claim(m, paths=["a.bin"]))
    queue = await proxy_client.get("/api/v1/takedowns", params={"status": "received"}, headers=admin.headers)
    assert takedown_id in [t["id"] for t in queue.json()["items"]]
    decided = await decide(proxy_client, admin, takedown_id, "uphold")
    assert decided.status_code == 200, decided.text
    assert decided.json()["reach"] == "platform"
    upheld = await proxy_client.get("/api/v1/takedowns", params={"status": "upheld"}, headers=admin.headers)
    assert takedown_id in [t["id"] for t in upheld.json()["items"]]
    queue = await proxy_client.get("/api/v1/takedowns", params={"status": "received"}, headers=admin.headers)
    assert takedown_id not in [t["id"] for t in queue.json()["items"]]
    assert_problem(await grant(proxy_client, other, "elsewhere/a.bin"), 451, "taken-down")


async def test_a_dismissed_takedown_changes_nothing(
    proxy_client: Client, worker: Worker, db: asyncpg.Connection
) -> None:
    m = await two_versions(proxy_client, db)
    assert (await grant(proxy_client, m, "data/shared.txt")).status_code == 201
    takedown_id = await file_takedown(proxy_client, await sign_up(proxy_client), claim(m, version="1.0.0"))
    decided = await decide(proxy_client, m.provider, takedown_id, "dismiss")
    assert decided.status_code == 200, decided.text
    body = decided.json()
    assert (body["status"], body["reach"], body["affected"]) == ("dismissed", None, [])
    assert sorted(body["sha256"]) == sorted(hashlib.sha256(c).hexdigest() for c in (SHARED, ONLY_OLD))
    assert_problem(await decide(proxy_client, m.provider, takedown_id, "uphold"), 409, "already-decided")
    for path, version in (
        ("data/shared.txt", "1.0.0"),
        ("data/copy-of-shared.txt", "1.1.0"),
        ("data/old.txt", "1.0.0"),
    ):
        assert (await grant(proxy_client, m, path, version)).status_code == 201
    assert [n for n in await inbox(proxy_client, m.buyer, m.buyer_org) if n["type"].startswith("takedown.")] == []
    withdrawn = await db.fetchval(
        "SELECT count(*) FROM withdrawn_content WHERE takedown_id = $1", uuid.UUID(takedown_id)
    )
    assert withdrawn == 0
    assert await audited(db, takedown_id) == [
        ("takedown.received", m.provider_org),
        ("takedown.dismissed", m.provider_org),
    ]


async def test_another_org_can_neither_see_nor_decide_nor_attest(proxy_client: Client, db: asyncpg.Connection) -> None:
    client = proxy_client
    m = await market(client, db)
    assert (await grant(client, m, "data/a.txt")).status_code == 201
    claimant = await sign_up(client)
    takedown_id = await file_takedown(client, claimant, claim(m, paths=["data/a.txt"]))
    stranger = await sign_up(client)
    stranger_org = await make_org(client, stranger)
    url = f"/api/v1/takedowns/{takedown_id}"
    statement = {"org": stranger_org, "statement": "we never had it"}

    assert_problem(await client.get(url, headers=stranger.headers), 404)
    assert_problem(await decide(client, stranger, takedown_id, "uphold"), 404)
    assert_problem(await client.post(f"{url}/attest", json=statement, headers=stranger.headers), 404)
    assert_problem(await client.get("/api/v1/takedowns", params={"org": m.provider_org}, headers=stranger.headers), 404)
    listed = await client.get("/api/v1/takedowns", headers=stranger.headers)
    assert takedown_id not in [t["id"] for t in listed.json()["items"]]
    # Those who see it but may not decide: the claimant, a plain member of the provider; the buyer sees it only
    # once it is named as a downloader.
    assert_problem(await decide(client, claimant, takedown_id, "uphold"), 403)
    member = await member_of(client, m.provider, m.provider_org, "member")
    assert (await client.get(url, headers=member.headers)).status_code == 200
    assert_problem(await decide(client, member, takedown_id, "uphold"), 403)
    assert_problem(await client.get(url, headers=m.buyer.headers), 404)
    assert (await decide(client, m.provider, takedown_id, "uphold")).status_code == 200
    assert (await client.get(url, headers=m.buyer.headers)).status_code == 200
    assert_problem(await decide(client, m.buyer, takedown_id, "dismiss"), 403)
    # An org that is not named attests nothing, even the provider; another org's name is not the buyer's to use.
    provider_attests = {"org": m.provider_org, "statement": "n/a"}
    assert_problem(
        await client.post(f"{url}/attest", json=provider_attests, headers=m.provider.headers), 409, "not-affected"
    )
    assert_problem(await client.post(f"{url}/attest", json=provider_attests, headers=m.buyer.headers), 404)
    assert_problem(await client.get(url, headers=stranger.headers), 404)
    listed = await client.get("/api/v1/takedowns", params={"org": m.buyer_org}, headers=m.buyer.headers)
    assert [t["id"] for t in listed.json()["items"]] == [takedown_id]


async def test_unknown_content_is_refused_and_the_list_costs_the_same_for_many(
    proxy_client: Client, settings: Settings, db: asyncpg.Connection
) -> None:
    client = proxy_client
    m = await market(client, db)
    claimant = await sign_up(client)
    takedowns = "/api/v1/takedowns"
    assert_problem(
        await client.post(takedowns, json=claim(m, product="no-such-product"), headers=claimant.headers), 404
    )
    assert_problem(await client.post(takedowns, json=claim(m, version="9.9.9"), headers=claimant.headers), 404)
    assert_problem(await client.post(takedowns, json=claim(m, paths=["nope.txt"]), headers=claimant.headers), 422)
    assert_problem(await client.post(takedowns, json=claim(m, sha256=["0" * 64]), headers=claimant.headers), 422)
    assert_problem(await client.post(takedowns, json=claim(m), headers=claimant.headers), 422)
    assert_problem(await client.post(takedowns, json=claim(m, paths=["data/a.txt"])), 401)

    await file_takedown(client, claimant, claim(m, paths=["data/a.txt"]))
    async with counting_client(settings) as counter:
        _, one = await counter.count("GET", takedowns, params={"org": m.provider_org}, headers=m.provider.headers)
        for _ in range(5):
            await file_takedown(client, claimant, claim(m, paths=["data/b.txt"]))
        page, many = await counter.count("GET", takedowns, params={"org": m.provider_org}, headers=m.provider.headers)
    assert len(page.json()["items"]) == 6
    assert one == many
