"""Model flags on real PostgreSQL and SeaweedFS, with webhooks to a real local receiver: an upheld takedown flags
the model manifests that record the withdrawn content, and only those; the manifest itself never changes."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from typing import Any

import asyncpg
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.accounts.test_access import assert_problem
from tests.catalog.helpers import make_version, upload
from tests.conftest import grant_platform_role, sequence_audit, sign_up
from tests.licensing.helpers import Market, download_body, market, publish
from tests.licensing.test_models import canonical_digest, item, model
from tests.licensing.test_takedowns import ONLY_NEW, ONLY_OLD, SHARED, SHARED_SHA, claim, decide, file_takedown, inbox
from tests.webhook_helpers import Receiver, Worker, create_webhook, verify

Client = AsyncTestClient[Litestar]


async def trained(client: Client, m: Market, paths: list[str], version: str = "1.0.0") -> dict[str, Any]:
    """A model of the buyer's org trained on ``version`` after downloading ``paths`` of it."""
    for path in paths:
        granted = await client.post(
            "/api/v1/downloads", json=download_body(m, path, "pretraining", version), headers=m.buyer.headers
        )
        assert granted.status_code == 201, granted.text
    body = model(m.buyer_org, item(m.entitlement_id, m.product, "pretraining", version))
    created = await client.post("/api/v1/models", json=body, headers=m.buyer.headers)
    assert created.status_code == 201, created.text
    manifest: dict[str, Any] = created.json()
    assert manifest["flags"] == []
    return manifest


async def stored(db: asyncpg.Connection, model_id: str) -> tuple[Any, ...]:
    row = await db.fetchrow("SELECT document, manifest_digest FROM model_manifests WHERE id = $1", uuid.UUID(model_id))
    assert row is not None
    return json.loads(row["document"]), row["manifest_digest"]


async def market_with_new_version(client: Client, db: asyncpg.Connection) -> Market:
    """1.0.0 holds SHARED and ONLY_OLD; 1.1.0 holds ONLY_NEW alone. The buyer may pretrain on every version."""
    m = await market(
        client, db, files={"data/shared.txt": SHARED, "data/old.txt": ONLY_OLD}, downloads=50, purposes=("pretraining",)
    )
    await make_version(client, m.provider, m.product, "1.1.0")
    done = await upload(client, m.provider, m.product, "1.1.0", "data/new.txt", ONLY_NEW)
    assert done.status_code == 200, done.text
    await publish(client, db, m.provider, m.product, "1.1.0")
    return m


async def test_an_upheld_takedown_flags_the_models_trained_on_the_content_and_no_other(
    hooks_client: Client, worker: Worker, receiver: Receiver, db: asyncpg.Connection
) -> None:
    client = hooks_client
    m = await market_with_new_version(client, db)
    # Another provider's product holds the same content: the provider's decision does not reach it.
    elsewhere = await market(client, db, files={"same/shared.txt": SHARED}, purposes=("pretraining",))
    hook = await create_webhook(client, m.buyer, m.buyer_org, receiver.url, ["model.flagged"])

    # The same version, recorded before the content was downloaded under the entitlement: its files lack it.
    without_it = await trained(client, m, ["data/old.txt"])
    flagged = await trained(client, m, ["data/shared.txt", "data/old.txt"])
    newer = await trained(client, m, ["data/new.txt"], "1.1.0")
    other_product = await trained(client, elsewhere, ["same/shared.txt"])
    before = await stored(db, flagged["id"])

    claimant = await sign_up(client)
    takedown_id = await file_takedown(client, claimant, claim(m, sha256=[SHARED_SHA]))
    decided = await decide(client, m.provider, takedown_id, "uphold")
    assert decided.status_code == 200, decided.text
    assert decided.json()["models_flagged"] == 1

    read = await client.get(f"/api/v1/models/{flagged['id']}", headers=m.buyer.headers)
    assert read.status_code == 200, read.text
    [flag] = read.json()["flags"]
    assert flag["takedown_id"] == takedown_id
    assert flag["sha256"] == [SHARED_SHA] == [hashlib.sha256(SHARED).hexdigest()]
    assert dt.datetime.fromisoformat(flag["flagged_at"]).tzinfo is not None
    # The manifest as recorded is unchanged: every other field, its stored document and its digest.
    assert {k: v for k, v in read.json().items() if k != "flags"} == {k: v for k, v in flagged.items() if k != "flags"}
    assert await stored(db, flagged["id"]) == before
    assert canonical_digest({**read.json(), "flags": []}) == flagged["manifest_digest"]

    listed = await client.get("/api/v1/models", params={"org": m.buyer_org}, headers=m.buyer.headers)
    flags_of = {i["id"]: i["flags"] for i in listed.json()["items"]}
    assert flags_of == {flagged["id"]: [flag], without_it["id"]: [], newer["id"]: []}
    alone = await client.get(f"/api/v1/models/{other_product['id']}", headers=elsewhere.buyer.headers)
    assert alone.json()["flags"] == []
    rows = await db.fetch("SELECT manifest_id FROM model_flags WHERE takedown_id = $1", uuid.UUID(takedown_id))
    assert [str(r["manifest_id"]) for r in rows] == [flagged["id"]]

    # The model's org is told in its inbox and by webhook; the event is audited against the model.
    told = [n for n in await inbox(client, m.buyer, m.buyer_org) if n["type"] == "model.flagged"]
    assert [n["data"] for n in told] == [
        {
            "model_id": flagged["id"],
            "name": flagged["name"],
            "version": flagged["version"],
            "takedown_id": takedown_id,
            "sha256": [SHARED_SHA],
        }
    ]
    await worker.run()
    (delivered,) = receiver.to(hook["url"])
    verify(hook["secret"], delivered)
    assert delivered.json()["type"] == "model.flagged"
    assert delivered.json()["data"]["model_id"] == flagged["id"]
    await sequence_audit(db)
    events = await db.fetch(
        "SELECT e.details, o.slug FROM audit_events e JOIN organizations o ON o.id = e.org_id "
        "WHERE e.action = 'model.flagged' AND e.target_type = 'model' AND e.target_id = $1",
        flagged["id"],
    )
    assert [(json.loads(e["details"])["takedown_id"], e["slug"]) for e in events] == [(takedown_id, m.buyer_org)]

    # Another org sees neither the model nor its flags.
    for outsider in (elsewhere.buyer, m.provider, claimant):
        assert_problem(await client.get(f"/api/v1/models/{flagged['id']}", headers=outsider.headers), 404)
        listing = await client.get("/api/v1/models", headers=outsider.headers)
        assert flagged["id"] not in [i["id"] for i in listing.json()["items"]]

    # The count is the provider's and the platform staff's; the claimant and the affected buyer see as before.
    url = f"/api/v1/takedowns/{takedown_id}"
    auditor = await grant_platform_role(client, db, await sign_up(client), "auditor")
    for staff in (m.provider, auditor):
        assert (await client.get(url, headers=staff.headers)).json()["models_flagged"] == 1
    for viewer in (claimant, m.buyer):
        seen = await client.get(url, headers=viewer.headers)
        assert seen.status_code == 200, seen.text
        assert "models_flagged" not in seen.json()
    listed_takedowns = await client.get("/api/v1/takedowns", params={"org": m.buyer_org}, headers=m.buyer.headers)
    assert ["models_flagged" in t for t in listed_takedowns.json()["items"]] == [False]


async def test_a_dismissed_takedown_flags_nothing(client: Client, db: asyncpg.Connection) -> None:
    m = await market_with_new_version(client, db)
    trained_on_it = await trained(client, m, ["data/shared.txt"])
    takedown_id = await file_takedown(client, await sign_up(client), claim(m, version="1.0.0"))
    decided = await decide(client, m.provider, takedown_id, "dismiss")
    assert decided.status_code == 200, decided.text
    assert decided.json()["models_flagged"] == 0
    read = await client.get(f"/api/v1/models/{trained_on_it['id']}", headers=m.buyer.headers)
    assert read.json() == trained_on_it
    assert await db.fetchval("SELECT count(*) FROM model_flags WHERE takedown_id = $1", uuid.UUID(takedown_id)) == 0
    assert [n for n in await inbox(client, m.buyer, m.buyer_org) if n["type"] == "model.flagged"] == []
    await sequence_audit(db)
    flagged_events = await db.fetchval(
        "SELECT count(*) FROM audit_events WHERE action = 'model.flagged' AND target_id = $1", trained_on_it["id"]
    )
    assert flagged_events == 0
