"""Access decided in one place: API keys act for their own organisation only, orders need a published product,
scopes name what a key reads, reviewers never decide their own organisation's versions, membership management
(the last owner stays, exactly, under concurrency), key listings without secrets, and one current entitlement
per organisation and offer."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest_asyncio
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.settings import Settings
from tests.catalog.helpers import make_product, make_version, upload
from tests.conftest import Account, grant_platform_role, make_org, sequence_audit, sign_up
from tests.licensing.test_licensing import assert_problem, live_client, make_offer, post_order

Client = AsyncTestClient[Litestar]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def live(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with live_client(settings) as client:
        yield client


def in_a_day() -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()


async def new_key(client: Client, account: Account, org: str, scopes: list[str]) -> dict[str, str]:
    response = await client.post(
        "/api/v1/api-keys",
        json={"name": "k", "org": org, "scopes": scopes, "expires_at": in_a_day()},
        headers=account.headers,
    )
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['key']}"}


async def add_member(client: Client, owner: Account, org: str, role: str) -> Account:
    account = await sign_up(client)
    response = await client.post(
        f"/api/v1/orgs/{org}/members", json={"email": account.email, "role": role}, headers=owner.headers
    )
    assert response.status_code == 201, response.text
    return account


async def in_review(client: Client, owner: Account, org: str) -> str:
    """A product whose version 1.0.0 waits for a platform reviewer."""
    slug = await make_product(client, owner, org)
    await make_version(client, owner, slug)
    done = await upload(client, owner, slug, "1.0.0", "data/a.jsonl", b'{"text": "a"}\n' * 10)
    assert done.status_code == 200, done.text
    submitted = await client.post(f"/api/v1/products/{slug}/versions/1.0.0/publish", headers=owner.headers)
    assert submitted.status_code == 200, submitted.text
    assert submitted.json()["state"] == "in_review"
    return slug


async def test_a_key_for_one_org_cannot_order_another_orgs_unpublished_product(
    client: Client, db: asyncpg.Connection
) -> None:
    """The reproduced gap: a user owning provider P and belonging to buyer B orders P's never-published product
    for B through a key of B."""
    user = await sign_up(client)
    provider = await make_org(client, user, kind="provider")
    buyer = await make_org(client, user, kind="buyer")
    draft = await make_product(client, user, provider)
    offer = await make_offer(client, user, draft)
    key = await new_key(client, user, buyer, ["orders:write"])

    body = {"offer_id": offer["id"], "buyer_org": buyer, "purpose": "research"}
    through_key = await client.post(
        "/api/v1/orders", json=body, headers={**key, "Idempotency-Key": f"gap-{uuid.uuid4().hex}"}
    )
    assert_problem(through_key, 404, "not-found")
    # Signed in, the user sees the draft (they own P) but nobody orders a product that is not published.
    signed_in = await post_order(client, user, offer["id"], buyer)
    assert_problem(signed_in, 409, "not-published")
    orders = await db.fetchval("SELECT count(*) FROM orders WHERE offer_id = $1", uuid.UUID(offer["id"]))
    entitlements = await db.fetchval("SELECT count(*) FROM entitlements WHERE offer_id = $1", uuid.UUID(offer["id"]))
    assert (orders, entitlements) == (0, 0)


async def test_keys_read_orders_and_members_only_with_their_scopes(client: Client, db: asyncpg.Connection) -> None:
    provider = await sign_up(client)
    provider_org = await make_org(client, provider, kind="provider")
    reviewer = await grant_platform_role(client, db, await sign_up(client), "reviewer")
    slug = await _published(client, provider, provider_org, reviewer)
    offer = await make_offer(client, provider, slug)
    buyer = await sign_up(client)
    buyer_org = await make_org(client, buyer, kind="buyer")
    other_org = await make_org(client, buyer, kind="buyer")
    mine = (await post_order(client, buyer, offer["id"], buyer_org)).json()
    theirs = (await post_order(client, buyer, offer["id"], other_org)).json()

    catalog_key = await new_key(client, buyer, buyer_org, ["catalog:read"])
    for path in ("/api/v1/orders", "/api/v1/entitlements", f"/api/v1/orgs/{buyer_org}/members"):
        assert_problem(await client.get(path, headers=catalog_key), 403, "forbidden")
    # Without org:admin, the organisation reads without its members.
    assert (await client.get(f"/api/v1/orgs/{buyer_org}", headers=catalog_key)).json()["members"] is None

    orders_key = await new_key(client, buyer, buyer_org, ["orders:read"])
    listed = await client.get("/api/v1/orders", headers=orders_key)
    assert listed.status_code == 200, listed.text
    assert {o["id"] for o in listed.json()["items"]} == {mine["id"]}  # not the other org's, though the user's
    entitlements = await client.get("/api/v1/entitlements", headers=orders_key)
    assert {e["id"] for e in entitlements.json()["items"]} == {mine["entitlement_id"]}
    assert_problem(await client.get(f"/api/v1/orders/{theirs['id']}", headers=orders_key), 404)
    assert_problem(await client.get(f"/api/v1/entitlements/{theirs['entitlement_id']}", headers=orders_key), 404)
    # Reading is not acting: orders:read places no order.
    another = await make_offer(client, provider, slug)
    refused = await client.post(
        "/api/v1/orders",
        json={"offer_id": another["id"], "buyer_org": buyer_org, "purpose": "research"},
        headers={**orders_key, "Idempotency-Key": f"read-{uuid.uuid4().hex}"},
    )
    assert_problem(refused, 403, "forbidden")
    # The scope is offered at key creation.
    admin_key = await new_key(client, buyer, buyer_org, ["org:admin"])
    members = await client.get(f"/api/v1/orgs/{buyer_org}/members", headers=admin_key)
    assert [m["email"] for m in members.json()["items"]] == [buyer.email]


async def _published(client: Client, owner: Account, org: str, reviewer: Account) -> str:
    slug = await in_review(client, owner, org)
    approved = await client.post(
        f"/api/v1/products/{slug}/versions/1.0.0/review", json={"decision": "approve"}, headers=reviewer.headers
    )
    assert approved.status_code == 200, approved.text
    return slug


async def test_reviewers_queue_and_separation_of_duties(client: Client, db: asyncpg.Connection) -> None:
    provider = await sign_up(client)
    org = await make_org(client, provider, kind="provider")
    first = await in_review(client, provider, org)
    second = await in_review(client, provider, org)
    insider = await grant_platform_role(client, db, await add_member(client, provider, org, "member"), "reviewer")
    outsider = await grant_platform_role(client, db, await sign_up(client), "reviewer")

    queue = await client.get("/api/v1/reviews", params={"limit": 100}, headers=outsider.headers)
    assert queue.status_code == 200, queue.text
    ours = [(i["product"], i["version"], i["org"]) for i in queue.json()["items"] if i["org"] == org]
    assert ours == [(first, "1.0.0", org), (second, "1.0.0", org)]  # oldest first
    times = [i["submitted_at"] for i in queue.json()["items"]]
    assert times == sorted(times)
    assert_problem(await client.get("/api/v1/reviews", headers=provider.headers), 403, "forbidden")
    assert_problem(await client.get("/api/v1/reviews"), 401)

    review = f"/api/v1/products/{first}/versions/1.0.0/review"
    refused = await client.post(review, json={"decision": "approve"}, headers=insider.headers)
    assert_problem(refused, 403, "forbidden")
    state = await db.fetchval(
        "SELECT v.state FROM product_versions v JOIN products p ON p.id = v.product_id WHERE p.slug = $1", first
    )
    assert state == "in_review"
    approved = await client.post(review, json={"decision": "approve"}, headers=outsider.headers)
    assert approved.status_code == 200, approved.text
    listed = await client.get("/api/v1/products", params={"org": org})
    assert {p["slug"]: p["latest_version"] for p in listed.json()["items"]} == {first: "1.0.0"}
    later = await client.get("/api/v1/reviews", params={"limit": 100}, headers=outsider.headers)
    assert first not in {i["product"] for i in later.json()["items"]}


async def test_members_are_listed_changed_and_removed_and_the_last_owner_stays(
    client: Client, db: asyncpg.Connection
) -> None:
    owner = await sign_up(client)
    org = await make_org(client, owner, kind="buyer")
    elsewhere = await make_org(client, owner, kind="provider")
    admin = await add_member(client, owner, org, "admin")
    member = await add_member(client, owner, org, "member")
    stranger = await sign_up(client)

    mine = await client.get("/api/v1/orgs", headers=owner.headers)
    assert {(o["slug"], o["role"]) for o in mine.json()["items"]} >= {(org, "owner"), (elsewhere, "owner")}
    assert {o["kind"] for o in mine.json()["items"] if o["slug"] == org} == {"buyer"}
    key = await new_key(client, owner, org, ["catalog:read"])
    assert [o["slug"] for o in (await client.get("/api/v1/orgs", headers=key)).json()["items"]] == [org]

    members = await client.get(f"/api/v1/orgs/{org}/members", headers=member.headers)
    assert members.status_code == 200, members.text
    assert {(m["email"], m["role"]) for m in members.json()["items"]} == {
        (owner.email, "owner"),
        (admin.email, "admin"),
        (member.email, "member"),
    }
    assert set(members.json()["items"][0]) == {"user_id", "email", "display_name", "role"}
    assert_problem(await client.get(f"/api/v1/orgs/{org}/members", headers=stranger.headers), 404)

    path = f"/api/v1/orgs/{org}/members"
    promoted = await client.patch(f"{path}/{member.id}", json={"role": "auditor"}, headers=admin.headers)
    assert promoted.status_code == 200, promoted.text
    assert promoted.json() == {
        "user_id": member.id,
        "email": member.email,
        "display_name": member.email.split("@")[0],
        "role": "auditor",
    }
    # Members do not manage membership; admins do not touch owners; nobody changes a stranger.
    assert_problem(await client.patch(f"{path}/{admin.id}", json={"role": "member"}, headers=member.headers), 403)
    assert_problem(await client.patch(f"{path}/{owner.id}", json={"role": "admin"}, headers=admin.headers), 403)
    assert_problem(await client.patch(f"{path}/{admin.id}", json={"role": "owner"}, headers=admin.headers), 403)
    assert_problem(await client.delete(f"{path}/{stranger.id}", headers=owner.headers), 404)
    assert_problem(await client.patch(f"{path}/{owner.id}", json={"role": "boss"}, headers=owner.headers), 422)
    # The last owner can be neither demoted nor removed.
    assert_problem(
        await client.patch(f"{path}/{owner.id}", json={"role": "admin"}, headers=owner.headers), 409, "last-owner"
    )
    assert_problem(await client.delete(f"{path}/{owner.id}", headers=owner.headers), 409, "last-owner")
    # A removed member's keys for the org stop working.
    member_key = await new_key(client, member, org, ["catalog:read"])
    assert (await client.get("/api/v1/orgs", headers=member_key)).status_code == 200
    removed = await client.delete(f"{path}/{member.id}", headers=admin.headers)
    assert removed.status_code == 204, removed.text
    assert_problem(await client.get("/api/v1/orgs", headers=member_key), 401)
    roles = await db.fetch(
        "SELECT u.email, m.role FROM memberships m JOIN users u ON u.id = m.user_id "
        "JOIN organizations o ON o.id = m.org_id WHERE o.slug = $1",
        org,
    )
    assert {(r["email"], r["role"]) for r in roles} == {(owner.email, "owner"), (admin.email, "admin")}
    await sequence_audit(db)
    events = await db.fetch(
        "SELECT action FROM audit_events e JOIN organizations o ON o.id = e.org_id WHERE o.slug = $1 "
        "AND action IN ('org.member_role_changed', 'org.member_removed') ORDER BY seq",
        org,
    )
    assert [e["action"] for e in events] == ["org.member_role_changed", "org.member_removed"]


async def test_two_owners_demoting_each_other_at_once_leave_one_owner(
    client: Client, live: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    for _ in range(3):
        first = await sign_up(client)
        org = await make_org(client, first)
        second = await add_member(client, first, org, "owner")
        path = f"/api/v1/orgs/{org}/members"
        answers = await asyncio.gather(
            live.patch(f"{path}/{second.id}", json={"role": "member"}, headers=first.headers),
            live.patch(f"{path}/{first.id}", json={"role": "member"}, headers=second.headers),
        )
        # The loser is refused either as the last owner's demotion (409) or, when the winner committed first,
        # because the loser is no longer an owner (403).
        assert sorted(a.status_code for a in answers) in ([200, 403], [200, 409]), [a.text for a in answers]
        owners = await db.fetchval(
            "SELECT count(*) FROM memberships m JOIN organizations o ON o.id = m.org_id "
            "WHERE o.slug = $1 AND m.role = 'owner'",
            org,
        )
        assert owners == 1


async def test_api_keys_are_listed_without_secrets_and_record_their_last_use(client: Client) -> None:
    owner = await sign_up(client)
    org = await make_org(client, owner, kind="buyer")
    other = await make_org(client, owner, kind="buyer")
    admin = await add_member(client, owner, org, "admin")
    member = await add_member(client, owner, org, "member")
    created = await client.post(
        "/api/v1/api-keys",
        json={"name": "ci", "org": org, "scopes": ["orders:read"], "expires_at": in_a_day()},
        headers=member.headers,
    )
    secret = created.json()["key"]
    await new_key(client, owner, other, ["catalog:read"])

    listed = await client.get("/api/v1/api-keys", params={"org": org}, headers=admin.headers)
    assert listed.status_code == 200, listed.text
    (item,) = listed.json()["items"]  # an admin sees every key of the org
    assert set(item) == {"id", "name", "org", "scopes", "expires_at", "created_at", "last_used_at"}
    assert (item["id"], item["org"], item["scopes"], item["last_used_at"]) == (
        created.json()["id"],
        org,
        ["orders:read"],
        None,
    )
    assert secret not in listed.text
    assert [k["org"] for k in (await client.get("/api/v1/api-keys", headers=member.headers)).json()["items"]] == [org]
    assert {k["org"] for k in (await client.get("/api/v1/api-keys", headers=owner.headers)).json()["items"]} == {
        org,
        other,
    }

    assert (await client.get("/api/v1/orders", headers={"Authorization": f"Bearer {secret}"})).status_code == 200
    used = (await client.get("/api/v1/api-keys", params={"org": org}, headers=admin.headers)).json()["items"][0]
    assert used["last_used_at"] is not None
    # Kept to the minute: another use right away writes nothing.
    assert (await client.get("/api/v1/orders", headers={"Authorization": f"Bearer {secret}"})).status_code == 200
    again = (await client.get("/api/v1/api-keys", params={"org": org}, headers=admin.headers)).json()["items"][0]
    assert again["last_used_at"] == used["last_used_at"]
    # Keys cannot list keys.
    assert_problem(await client.get("/api/v1/api-keys", headers={"Authorization": f"Bearer {secret}"}), 403)


async def test_many_simultaneous_orders_of_a_free_offer_grant_one_entitlement(
    client: Client, live: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    provider = await sign_up(client)
    provider_org = await make_org(client, provider, kind="provider")
    reviewer = await grant_platform_role(client, db, await sign_up(client), "reviewer")
    slug = await _published(client, provider, provider_org, reviewer)
    offer = await make_offer(client, provider, slug)
    buyer = await sign_up(client)
    buyer_org = await make_org(client, buyer, kind="buyer")

    keys = [f"race-{uuid.uuid4().hex}" for _ in range(8)]
    answers = await asyncio.gather(*(post_order(live, buyer, offer["id"], buyer_org, key=k) for k in keys))
    codes = sorted(a.status_code for a in answers)
    assert codes == [201] + [409] * 7, [a.text for a in answers]
    (granted,) = [a.json() for a in answers if a.status_code == 201]
    for refused in (a for a in answers if a.status_code == 409):
        assert refused.json()["type"] == "already-entitled"
        assert refused.json()["entitlement_id"] == granted["entitlement_id"]
    count = await db.fetchval("SELECT count(*) FROM entitlements WHERE offer_id = $1", uuid.UUID(offer["id"]))
    orders = await db.fetchval("SELECT count(*) FROM orders WHERE offer_id = $1", uuid.UUID(offer["id"]))
    assert (count, orders) == (1, 1)
    # The winner's retry still answers as before.
    winner = keys[[a.status_code for a in answers].index(201)]
    replay = await post_order(client, buyer, offer["id"], buyer_org, key=winner)
    assert replay.status_code == 200
    assert replay.json()["id"] == granted["id"]
    # Ended, it makes room for a new one.
    await db.execute(
        "UPDATE entitlements SET valid_from = now() - interval '31 days', valid_until = now() - interval '1 day' "
        "WHERE id = $1",
        uuid.UUID(granted["entitlement_id"]),
    )
    renewed = await post_order(client, buyer, offer["id"], buyer_org)
    assert renewed.status_code == 201, renewed.text
    ended = await db.fetchval("SELECT status FROM entitlements WHERE id = $1", uuid.UUID(granted["entitlement_id"]))
    assert ended == "expired"
