"""The inbox and signed webhooks, against a real local HTTP receiver."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.notifications.models import EventType
from app.notifications.service import publish
from tests.accounts.test_access import assert_problem, key_headers, member_of, new_key
from tests.conftest import Account, make_org, sign_up
from tests.webhook_helpers import Receiver, Worker, create_webhook, verify

Client = AsyncTestClient[Litestar]


async def org_id(db: asyncpg.Connection, slug: str) -> uuid.UUID:
    found: uuid.UUID = await db.fetchval("SELECT id FROM organizations WHERE slug = $1", slug)
    return found


async def publish_now(worker: Worker, org: uuid.UUID, event: EventType, data: dict[str, Any]) -> None:
    async with worker.sessionmaker() as session, session.begin():
        await publish(session, org, event, data)


async def deliveries(client: Client, account: Account, webhook: dict[str, Any]) -> list[dict[str, Any]]:
    response = await client.get(f"/api/v1/webhooks/{webhook['id']}/deliveries", headers=account.headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def make_due(db: asyncpg.Connection) -> None:
    """Time passes: every scheduled retry becomes due."""
    await db.execute("UPDATE procrastinate_jobs SET scheduled_at = now() WHERE status = 'todo'")


async def test_webhook_secret_is_shown_once_and_deliveries_are_signed(
    hooks_client: Client, worker: Worker, receiver: Receiver, db: asyncpg.Connection
) -> None:
    owner = await sign_up(hooks_client)
    org = await make_org(hooks_client, owner)
    url = receiver.url
    created = await create_webhook(hooks_client, owner, org, url, ["order.approved", "order.created"])
    assert created["secret"].startswith("whsec_")
    assert set(created) >= {"id", "org", "url", "events", "secret"}
    assert (created["org"], created["url"], sorted(created["events"])) == (
        org,
        url,
        ["order.approved", "order.created"],
    )
    listed = await hooks_client.get(f"/api/v1/webhooks?org={org}", headers=owner.headers)
    assert listed.status_code == 200
    assert [w["id"] for w in listed.json()["items"]] == [created["id"]]
    assert "secret" not in listed.text

    await publish_now(worker, await org_id(db, org), EventType.ORDER_APPROVED, {"order_id": "o-1"})
    await publish_now(worker, await org_id(db, org), EventType.VERSION_PUBLISHED, {"version": "not subscribed"})
    await worker.run()

    [received] = receiver.to(url)
    verify(created["secret"], received)
    body = received.json()
    assert body["type"] == "order.approved"
    assert body["data"] == {"order_id": "o-1"}
    dt.datetime.fromisoformat(body["timestamp"])
    assert received.headers["webhook-id"].startswith("msg_")
    assert received.headers["content-type"] == "application/json"

    [delivery] = await deliveries(hooks_client, owner, created)
    assert delivery["event_type"] == "order.approved"
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("succeeded", 1, 200)
    assert delivery["webhook_id"] == received.headers["webhook-id"]

    inbox = await hooks_client.get(f"/api/v1/notifications?org={org}", headers=owner.headers)
    assert inbox.status_code == 200
    assert [n["type"] for n in inbox.json()["items"]] == ["version.published", "order.approved"]  # newest first
    assert set(inbox.json()["items"][0]) == {"id", "type", "created_at", "data"}


async def test_rolled_back_change_sends_nothing(
    hooks_client: Client, worker: Worker, receiver: Receiver, db: asyncpg.Connection
) -> None:
    owner = await sign_up(hooks_client)
    org = await make_org(hooks_client, owner)
    url = receiver.url
    await create_webhook(hooks_client, owner, org, url, ["order.created"])

    async def failing_change() -> None:
        async with worker.sessionmaker() as session, session.begin():
            await publish(session, await org_id(db, org), EventType.ORDER_CREATED, {"order_id": "never"})
            raise RuntimeError("the change fails")

    with pytest.raises(RuntimeError):
        await failing_change()
    await worker.run()
    assert receiver.to(url) == []
    inbox = await hooks_client.get(f"/api/v1/notifications?org={org}", headers=owner.headers)
    assert inbox.json()["items"] == []


async def test_no_event_reaches_another_org(
    hooks_client: Client, worker: Worker, receiver: Receiver, db: asyncpg.Connection
) -> None:
    alice, bob = await sign_up(hooks_client), await sign_up(hooks_client)
    org_a, org_b = await make_org(hooks_client, alice), await make_org(hooks_client, bob)
    url_a, url_b = receiver.url, receiver.url
    await create_webhook(hooks_client, alice, org_a, url_a, list(EventType))
    await create_webhook(hooks_client, bob, org_b, url_b, list(EventType))

    await publish_now(worker, await org_id(db, org_a), EventType.ORDER_FULFILLED, {"order_id": "a"})
    await worker.run()
    assert len(receiver.to(url_a)) == 1
    assert receiver.to(url_b) == []
    b_inbox = await hooks_client.get(f"/api/v1/notifications?org={org_b}", headers=bob.headers)
    assert b_inbox.json()["items"] == []
    # Bob cannot read Alice's inbox, nor see or change her webhooks.
    assert_problem(await hooks_client.get(f"/api/v1/notifications?org={org_a}", headers=bob.headers), 404)
    assert_problem(await hooks_client.get(f"/api/v1/webhooks?org={org_a}", headers=bob.headers), 404)
    [hook_a] = (await hooks_client.get(f"/api/v1/webhooks?org={org_a}", headers=alice.headers)).json()["items"]
    assert_problem(await hooks_client.delete(f"/api/v1/webhooks/{hook_a['id']}", headers=bob.headers), 404)
    assert_problem(await hooks_client.get(f"/api/v1/webhooks/{hook_a['id']}/deliveries", headers=bob.headers), 404)


async def test_failed_delivery_is_retried_and_redelivered_with_the_same_webhook_id(
    hooks_client: Client, worker: Worker, receiver: Receiver, db: asyncpg.Connection
) -> None:
    owner = await sign_up(hooks_client)
    org = await make_org(hooks_client, owner)
    url = receiver.url
    hook = await create_webhook(hooks_client, owner, org, url, ["entitlement.revoked"])
    receiver.statuses.extend([500])

    await publish_now(worker, await org_id(db, org), EventType.ENTITLEMENT_REVOKED, {"entitlement_id": "e"})
    await worker.run()
    [delivery] = await deliveries(hooks_client, owner, hook)
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("pending", 1, 500)
    wait = dt.datetime.fromisoformat(delivery["next_attempt_at"]) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(seconds=10) < wait <= dt.timedelta(minutes=1)  # the first retry within a minute
    await worker.run()
    assert len(receiver.to(url)) == 1  # not due yet

    await make_due(db)
    await worker.run()
    [delivery] = await deliveries(hooks_client, owner, hook)
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("succeeded", 2, 200)

    redelivered = await hooks_client.post(
        f"/api/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}/redeliver", headers=owner.headers
    )
    assert redelivered.status_code == 202, redelivered.text
    await worker.run()
    requests = receiver.to(url)
    assert len(requests) == 3
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    assert len({r.body for r in requests}) == 1
    for request in requests:
        verify(hook["secret"], request)
    detail = await hooks_client.get(f"/api/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}", headers=owner.headers)
    assert [(a["status_code"], a["manual"]) for a in detail.json()["log"]] == [(500, False), (200, False), (200, True)]


async def test_endpoint_failing_for_a_day_is_disabled_and_its_org_told(
    hooks_client: Client, worker: Worker, receiver: Receiver, db: asyncpg.Connection
) -> None:
    owner = await sign_up(hooks_client)
    org = await make_org(hooks_client, owner)
    url = receiver.url
    hook = await create_webhook(hooks_client, owner, org, url, ["quota.threshold"])
    receiver.statuses.extend([503, 503])
    await publish_now(worker, await org_id(db, org), EventType.QUOTA_THRESHOLD, {"entitlement_id": "e"})
    await worker.run()
    # A day later: the delivery is out of its retry window, and the endpoint never succeeded since.
    await db.execute(
        "UPDATE webhook_deliveries SET created_at = created_at - interval '1 day' WHERE endpoint_id = $1",
        uuid.UUID(hook["id"]),
    )
    await db.execute(
        "UPDATE webhook_endpoints SET failing_since = failing_since - interval '1 day' WHERE id = $1",
        uuid.UUID(hook["id"]),
    )
    await make_due(db)
    await worker.run()

    [delivery] = await deliveries(hooks_client, owner, hook)
    assert (delivery["status"], delivery["attempts"]) == ("failed", 2)
    endpoint = (await hooks_client.get(f"/api/v1/webhooks/{hook['id']}", headers=owner.headers)).json()
    assert endpoint["disabled_at"] is not None
    inbox = (await hooks_client.get(f"/api/v1/notifications?org={org}", headers=owner.headers)).json()["items"]
    assert inbox[0]["type"] == "webhook.disabled"
    assert inbox[0]["data"]["webhook_id"] == hook["id"]

    # Disabled: new events are not delivered, redelivery asks to enable first.
    await publish_now(worker, await org_id(db, org), EventType.QUOTA_THRESHOLD, {"entitlement_id": "f"})
    await worker.run()
    assert len(receiver.to(url)) == 2
    assert_problem(
        await hooks_client.post(
            f"/api/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}/redeliver", headers=owner.headers
        ),
        409,
        "webhook-disabled",
    )
    enabled = await hooks_client.post(f"/api/v1/webhooks/{hook['id']}/enable", headers=owner.headers)
    assert enabled.json()["disabled_at"] is None
    await hooks_client.post(
        f"/api/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}/redeliver", headers=owner.headers
    )
    await worker.run()
    assert len(receiver.to(url)) == 3
    [delivery] = await deliveries(hooks_client, owner, hook)
    assert delivery["status"] == "succeeded"


async def test_deleted_webhook_receives_nothing_more(
    hooks_client: Client, worker: Worker, receiver: Receiver, db: asyncpg.Connection
) -> None:
    owner = await sign_up(hooks_client)
    org = await make_org(hooks_client, owner)
    url = receiver.url
    hook = await create_webhook(hooks_client, owner, org, url, ["order.created"])
    await publish_now(worker, await org_id(db, org), EventType.ORDER_CREATED, {"order_id": "before"})
    await worker.run()
    assert len(receiver.to(url)) == 1
    assert (await hooks_client.delete(f"/api/v1/webhooks/{hook['id']}", headers=owner.headers)).status_code == 204
    await publish_now(worker, await org_id(db, org), EventType.ORDER_CREATED, {"order_id": "x"})
    await worker.run()
    assert len(receiver.to(url)) == 1
    listed = await hooks_client.get(f"/api/v1/webhooks?org={org}", headers=owner.headers)
    assert listed.json()["items"] == []
    assert_problem(await hooks_client.get(f"/api/v1/webhooks/{hook['id']}", headers=owner.headers), 404)

    # Its delivery log stays readable, to its organisation's admins only, and nothing is sent again.
    log = await hooks_client.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=owner.headers)
    assert log.status_code == 200, log.text
    [delivered] = log.json()["items"]
    assert (delivered["status"], delivered["last_status_code"]) == ("succeeded", 200)
    one = f"/api/v1/webhooks/{hook['id']}/deliveries/{delivered['id']}"
    assert (await hooks_client.get(one, headers=owner.headers)).status_code == 200
    assert_problem(await hooks_client.post(f"{one}/redeliver", headers=owner.headers), 404)
    outsider = await sign_up(hooks_client)
    assert_problem(await hooks_client.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=outsider.headers), 404)


async def test_only_owners_and_admins_with_org_admin_keys_manage_webhooks(
    hooks_client: Client, receiver: Receiver
) -> None:
    owner = await sign_up(hooks_client)
    org = await make_org(hooks_client, owner)
    member = await member_of(hooks_client, owner, org, "member")
    admin = await member_of(hooks_client, owner, org, "admin")
    outsider = await sign_up(hooks_client)
    assert_problem(
        await hooks_client.post(
            "/api/v1/webhooks",
            json={"org": org, "url": receiver.url, "events": ["order.created"]},
            headers=member.headers,
        ),
        403,
    )
    assert_problem(
        await hooks_client.post(
            "/api/v1/webhooks",
            json={"org": org, "url": receiver.url, "events": ["order.created"]},
            headers=outsider.headers,
        ),
        404,
    )
    await create_webhook(hooks_client, admin, org, receiver.url, ["order.created"])
    weak = await new_key(hooks_client, owner, org, ["catalog:read"])
    strong = await new_key(hooks_client, owner, org, ["org:admin"])
    assert_problem(await hooks_client.get(f"/api/v1/webhooks?org={org}", headers=key_headers(weak["key"])), 403)
    assert (
        await hooks_client.get(f"/api/v1/webhooks?org={org}", headers=key_headers(strong["key"]))
    ).status_code == 200
    # Members read the inbox; others do not learn the org exists.
    assert (await hooks_client.get(f"/api/v1/notifications?org={org}", headers=member.headers)).status_code == 200
    assert_problem(await hooks_client.get(f"/api/v1/notifications?org={org}", headers=outsider.headers), 404)
    assert_problem(await hooks_client.get("/api/v1/notifications?org=no-such-org", headers=owner.headers), 404)


async def test_inbox_pages_with_a_cursor_newest_first(
    hooks_client: Client, worker: Worker, db: asyncpg.Connection
) -> None:
    owner = await sign_up(hooks_client)
    org = await make_org(hooks_client, owner)
    for n in range(5):
        await publish_now(worker, await org_id(db, org), EventType.ORDER_CREATED, {"n": n})
    seen: list[int] = []
    cursor = None
    while True:
        query = f"/api/v1/notifications?org={org}&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await hooks_client.get(query, headers=owner.headers)).json()
        seen += [item["data"]["n"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [4, 3, 2, 1, 0]
    assert_problem(
        await hooks_client.get(f"/api/v1/notifications?org={org}&cursor=nonsense", headers=owner.headers),
        400,
        "invalid-cursor",
    )


async def test_event_with_a_once_key_is_told_once(worker: Worker, hooks_client: Client, db: asyncpg.Connection) -> None:
    owner = await sign_up(hooks_client)
    org = await make_org(hooks_client, owner)
    for _ in range(2):
        async with worker.sessionmaker() as session, session.begin():
            await publish(session, await org_id(db, org), EventType.QUOTA_THRESHOLD, {"q": 1}, once_key="quota:e:1")
    inbox = (await hooks_client.get(f"/api/v1/notifications?org={org}", headers=owner.headers)).json()["items"]
    assert len(inbox) == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.1.2.3/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://user:secret@example.com/hook",
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "http:///nohost",
    ],
)
async def test_private_and_unsafe_webhook_urls_are_refused(client: Client, url: str) -> None:
    """The default settings (CORPORA_EGRESS_ALLOW_PRIVATE unset) refuse these with 422 and store nothing."""
    owner = await sign_up(client)
    org = await make_org(client, owner)
    body = assert_problem(
        await client.post(
            "/api/v1/webhooks", json={"org": org, "url": url, "events": ["order.created"]}, headers=owner.headers
        ),
        422,
    )
    assert body["errors"][0]["field"] == "url"
    assert (await client.get(f"/api/v1/webhooks?org={org}", headers=owner.headers)).json()["items"] == []
