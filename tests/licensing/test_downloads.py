"""Metered download grants: presigned delivery, receipts, quotas under concurrency, refusals, refreshes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from typing import Any

import asyncpg
import httpx
import jwt
from litestar.testing import AsyncTestClient

from tests.conftest import sequence_audit, sign_up
from tests.licensing.helpers import download_body, market


async def test_presigned_download_with_verifiable_receipt(client: AsyncTestClient[Any], db: asyncpg.Connection) -> None:
    m = await market(client, db)
    granted = await client.post("/api/v1/downloads", json=download_body(m, "data/a.txt"), headers=m.buyer.headers)
    assert granted.status_code == 201, granted.text
    body = granted.json()
    content = m.files["data/a.txt"]
    assert body["mode"] == "presigned"
    assert body["size"] == len(content)
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert "X-Amz-Expires=300" in body["url"]
    async with httpx.AsyncClient() as s3:
        fetched = await s3.get(body["url"])
    assert fetched.status_code == 200
    assert fetched.content == content
    assert 'filename="a.txt"' in fetched.headers.get("content-disposition", "")

    jwks = (await client.get("/.well-known/jwks.json")).json()
    header = jwt.get_unverified_header(body["receipt"])
    jwk = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    claims = jwt.decode(body["receipt"], jwt.PyJWK(jwk), algorithms=["EdDSA"])
    assert claims["download_id"] == body["download_id"]
    assert claims["sha256"] == body["sha256"]
    assert claims["purpose"] == "research"
    # The receipt names its audit event by the digest of the event's content (the event joins the log after
    # the grant commits); recomputed here from the sequenced event's fields.
    await sequence_audit(db)
    event = await db.fetchrow(
        "SELECT actor, org_id, action, target_type, target_id, request_id, client_addr, details::text AS details"
        " FROM audit_events WHERE action = 'download.granted' AND target_id = $1",
        body["download_id"],
    )
    assert event is not None
    head = [str(v) if isinstance(v, uuid.UUID) else v for k, v in event.items() if k != "details"]
    encoded = "[" + ",".join(json.dumps(v, ensure_ascii=False) for v in head) + "," + event["details"] + "]"
    assert claims["audit_event_hash"] == hashlib.sha256(encoded.encode()).hexdigest()

    entitlement = (await client.get(f"/api/v1/entitlements/{m.entitlement_id}", headers=m.buyer.headers)).json()
    assert entitlement["quota"]["downloads_used"] == 1
    assert entitlement["quota"]["bytes_used"] == len(content)


async def test_grants_stop_at_the_download_quota(client: AsyncTestClient[Any], db: asyncpg.Connection) -> None:
    """Exhausting the quota refuses further grants and charges nothing for them.

    The same limit under real concurrency, across two server processes, is in test_download_concurrency.py.
    """
    m = await market(client, db, downloads=10)
    size = len(m.files["data/a.txt"])
    statuses = []
    for _ in range(13):
        response = await client.post("/api/v1/downloads", json=download_body(m, "data/a.txt"), headers=m.buyer.headers)
        statuses.append(response.status_code)
    assert statuses == [201] * 10 + [429] * 3
    assert not client.app.state.charge_turn.locked()  # granted and refused alike gave their turn back
    refused = response.json()
    assert refused["type"] == "quota-exceeded"
    assert refused["downloads_remaining"] == 0
    row = await db.fetchrow("SELECT downloads_used, bytes_used FROM entitlements WHERE id = $1::uuid", m.entitlement_id)
    assert (row["downloads_used"], row["bytes_used"]) == (10, 10 * size)
    assert (
        await db.fetchval("SELECT count(*) FROM download_grants WHERE entitlement_id = $1::uuid", m.entitlement_id)
        == 10
    )
    await sequence_audit(db)
    events = await db.fetchval(
        "SELECT count(*) FROM audit_events WHERE action = 'download.granted' AND details->>'entitlement_id' = $1",
        m.entitlement_id,
    )
    assert events == 10


async def test_byte_quota_refuses_without_charging(client: AsyncTestClient[Any], db: asyncpg.Connection) -> None:
    m = await market(client, db, downloads=None, bytes_limit=7000)
    first = await client.post("/api/v1/downloads", json=download_body(m, "data/a.txt"), headers=m.buyer.headers)
    assert first.status_code == 201  # 6000 bytes
    second = await client.post("/api/v1/downloads", json=download_body(m, "data/b.txt"), headers=m.buyer.headers)
    assert second.status_code == 429
    assert second.json()["bytes_remaining"] == 1000
    row = await db.fetchrow("SELECT downloads_used, bytes_used FROM entitlements WHERE id = $1::uuid", m.entitlement_id)
    assert (row["downloads_used"], row["bytes_used"]) == (1, 6000)


async def test_refusals(client: AsyncTestClient[Any], db: asyncpg.Connection) -> None:
    m = await market(client, db, purposes=("research",))
    headers = m.buyer.headers
    other = await sign_up(client)
    # Another org's entitlement does not exist for the caller.
    theirs = await client.post("/api/v1/downloads", json=download_body(m, "data/a.txt"), headers=other.headers)
    assert theirs.status_code == 404
    missing = await client.post("/api/v1/downloads", json=download_body(m, "data/nope.txt"), headers=headers)
    assert missing.status_code == 404
    purpose = await client.post(
        "/api/v1/downloads", json=download_body(m, "data/a.txt", "pretraining"), headers=headers
    )
    assert purpose.status_code == 403
    assert purpose.json()["type"] == "purpose-not-permitted"
    unknown_version = await client.post(
        "/api/v1/downloads", json=download_body(m, "data/a.txt", version="9.9.9"), headers=headers
    )
    assert unknown_version.status_code == 404
    bad_purpose = await client.post(
        "/api/v1/downloads", json=download_body(m, "data/a.txt", "sightseeing"), headers=headers
    )
    assert bad_purpose.status_code == 422
    # Revoked: refused at the next grant.
    revoked = await client.post(
        f"/api/v1/entitlements/{m.entitlement_id}/revoke", json={"reason": "licence breach"}, headers=m.provider.headers
    )
    assert revoked.status_code == 200, revoked.text
    after = await client.post("/api/v1/downloads", json=download_body(m, "data/a.txt"), headers=headers)
    assert after.status_code == 403
    assert after.json()["type"] == "entitlement-inactive"
    used = await db.fetchval("SELECT downloads_used FROM entitlements WHERE id = $1::uuid", m.entitlement_id)
    assert used == 0


async def test_expired_entitlement_and_withdrawn_version_are_refused(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    m = await market(client, db)
    await db.execute(
        "UPDATE entitlements SET valid_from = now() - interval '40 days', valid_until = now() - interval '1 day' "
        "WHERE id = $1::uuid",
        m.entitlement_id,
    )
    expired = await client.post("/api/v1/downloads", json=download_body(m, "data/a.txt"), headers=m.buyer.headers)
    assert expired.status_code == 403
    assert (await client.get(f"/api/v1/entitlements/{m.entitlement_id}", headers=m.buyer.headers)).json()[
        "status"
    ] == "expired"

    m = await market(client, db)
    withdrawn = await client.post(
        f"/api/v1/products/{m.product}/versions/1.0.0/withdraw", json={"reason": "takedown"}, headers=m.provider.headers
    )
    assert withdrawn.status_code == 200, withdrawn.text
    refused = await client.post("/api/v1/downloads", json=download_body(m, "data/a.txt"), headers=m.buyer.headers)
    assert refused.status_code == 403
    assert refused.json()["type"] == "version-withdrawn"


async def test_refresh_charges_nothing_and_manifest_grants_a_set(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    m = await market(client, db)
    manifest = await client.post(
        "/api/v1/downloads/manifest",
        json={
            "entitlement_id": m.entitlement_id,
            "product": m.product,
            "version": "1.0.0",
            "purpose": "research",
            "include": ["data/*.txt"],
        },
        headers=m.buyer.headers,
    )
    assert manifest.status_code == 201, manifest.text
    items = manifest.json()["items"]
    assert sorted(i["path"] for i in items) == ["data/a.txt", "data/b.txt"]
    assert {i["manifest_digest"] for i in items} == {manifest.json()["manifest_digest"]}
    used = await db.fetchrow(
        "SELECT downloads_used, bytes_used FROM entitlements WHERE id = $1::uuid", m.entitlement_id
    )
    refreshed = await client.post(
        "/api/v1/downloads/refresh", json={"download_ids": [i["download_id"] for i in items]}, headers=m.buyer.headers
    )
    assert refreshed.status_code == 200, refreshed.text
    assert [i["download_id"] for i in refreshed.json()["items"]] == [i["download_id"] for i in items]
    again = await db.fetchrow(
        "SELECT downloads_used, bytes_used FROM entitlements WHERE id = $1::uuid", m.entitlement_id
    )
    assert again == used
    # Someone else cannot refresh the buyer's grant.
    other = await sign_up(client)
    stolen = await client.post(f"/api/v1/downloads/{items[0]['download_id']}/refresh", headers=other.headers)
    assert stolen.status_code == 404


async def test_tampered_and_expired_presigned_urls_are_refused_by_the_object_store(
    client: AsyncTestClient[Any], db: asyncpg.Connection, app: Any
) -> None:
    m = await market(client, db)
    body = (await client.post("/api/v1/downloads", json=download_body(m, "data/a.txt"), headers=m.buyer.headers)).json()
    other = (
        await client.post("/api/v1/downloads", json=download_body(m, "data/b.txt"), headers=m.buyer.headers)
    ).json()
    tampered_key = body["url"].replace(body["sha256"], other["sha256"])
    tampered_expiry = body["url"].replace("X-Amz-Expires=300", "X-Amz-Expires=3600")
    async with httpx.AsyncClient() as s3:
        assert (await s3.get(tampered_key)).status_code == 403
        assert (await s3.get(tampered_expiry)).status_code == 403
        short = await app.state.object_store.presigned_get(f"blobs/sha256/{body['sha256'][:2]}/{body['sha256']}", 1)
        assert (await s3.get(short)).status_code == 200
        await asyncio.sleep(2.2)
        assert (await s3.get(short)).status_code == 403


async def test_convenience_path_redirects_to_a_fresh_url(client: AsyncTestClient[Any], db: asyncpg.Connection) -> None:
    m = await market(client, db)
    response = await client.get(
        f"/api/v1/products/{m.product}/versions/1.0.0/files/data/b.txt",
        params={"entitlement_id": m.entitlement_id, "purpose": "research"},
        headers=m.buyer.headers,
        follow_redirects=False,
    )
    assert response.status_code == 307, response.text
    async with httpx.AsyncClient() as s3:
        assert (await s3.get(response.headers["location"])).content == m.files["data/b.txt"]
    assert uuid.UUID(response.headers["x-corpora-download-id"])
    unknown = await client.get(
        f"/api/v1/products/{m.product}/versions/1.0.0/files/data/b.txt",
        params={"entitlement_id": m.entitlement_id, "purpose": "world_domination"},
        headers=m.buyer.headers,
        follow_redirects=False,
    )
    assert unknown.status_code == 422, unknown.text  # not a use at all, as POST /downloads answers
    assert [e["field"] for e in unknown.json()["errors"]] == ["purpose"]


async def test_a_resume_through_the_convenience_path_charges_nothing_new(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    """``curl -L -C -`` sends ``Range`` to the convenience path: the caller's grant of that file is refreshed."""
    m = await market(client, db)
    content = m.files["data/b.txt"]
    where = f"/api/v1/products/{m.product}/versions/1.0.0/files/data/b.txt"
    params = {"entitlement_id": m.entitlement_id, "purpose": "research"}

    async def quota() -> tuple[int, int]:
        row = await db.fetchrow(
            "SELECT downloads_used, bytes_used FROM entitlements WHERE id = $1::uuid", m.entitlement_id
        )
        return row["downloads_used"], row["bytes_used"]

    first = await client.get(where, params=params, headers=m.buyer.headers, follow_redirects=False)
    assert first.status_code == 307
    assert await quota() == (1, len(content))

    resumed = await client.get(
        where, params=params, headers={**m.buyer.headers, "Range": "bytes=100-"}, follow_redirects=False
    )
    assert resumed.status_code == 307, resumed.text
    assert resumed.headers["x-corpora-download-id"] == first.headers["x-corpora-download-id"]
    async with httpx.AsyncClient() as s3:
        rest = await s3.get(resumed.headers["location"], headers={"Range": "bytes=100-"})
    assert rest.status_code == 206
    assert rest.content == content[100:]
    assert await quota() == (1, len(content))
    await sequence_audit(db)
    events = await db.fetch(
        "SELECT action FROM audit_events WHERE target_id = $1 ORDER BY seq", first.headers["x-corpora-download-id"]
    )
    assert [e["action"] for e in events] == ["download.granted", "download.refreshed"]

    # Without Range it is a new grant, charged.
    again = await client.get(where, params=params, headers=m.buyer.headers, follow_redirects=False)
    assert again.headers["x-corpora-download-id"] != first.headers["x-corpora-download-id"]
    assert await quota() == (2, 2 * len(content))

    # Another member of the buyer org resuming gets a grant of their own, charged.
    colleague = await sign_up(client)
    added = await client.post(
        f"/api/v1/orgs/{m.buyer_org}/members",
        json={"email": colleague.email, "role": "member"},
        headers=m.buyer.headers,
    )
    assert added.status_code == 201, added.text
    theirs = await client.get(
        where, params=params, headers={**colleague.headers, "Range": "bytes=100-"}, follow_redirects=False
    )
    assert theirs.status_code == 307, theirs.text
    assert theirs.headers["x-corpora-download-id"] not in {
        first.headers["x-corpora-download-id"],
        again.headers["x-corpora-download-id"],
    }
    assert await quota() == (3, 3 * len(content))


async def test_a_manifest_of_exact_paths_grants_just_those(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    m = await market(client, db, files={"data/a.txt": b"alpha", "data/[b].txt": b"beta", "data/c.txt": b"gamma"})
    body = {"entitlement_id": m.entitlement_id, "product": m.product, "version": "1.0.0", "purpose": "research"}

    async def used() -> tuple[int, int]:
        row = await db.fetchrow(
            "SELECT downloads_used, bytes_used FROM entitlements WHERE id = $1::uuid", m.entitlement_id
        )
        return row["downloads_used"], row["bytes_used"]

    # Paths are names, not globs: "[b]" is the file so called.
    granted = await client.post(
        "/api/v1/downloads/manifest", json={**body, "paths": ["data/[b].txt", "data/a.txt"]}, headers=m.buyer.headers
    )
    assert granted.status_code == 201, granted.text
    assert sorted(i["path"] for i in granted.json()["items"]) == ["data/[b].txt", "data/a.txt"]
    assert await used() == (2, len(b"alpha") + len(b"beta"))

    # A path the version lacks, or paths beside globs, refuse the whole request and charge nothing.
    unknown = await client.post(
        "/api/v1/downloads/manifest", json={**body, "paths": ["data/c.txt", "data/nope.txt"]}, headers=m.buyer.headers
    )
    assert unknown.status_code == 404, unknown.text
    both = await client.post(
        "/api/v1/downloads/manifest",
        json={**body, "paths": ["data/c.txt"], "include": ["data/*"]},
        headers=m.buyer.headers,
    )
    assert both.status_code == 422, both.text
    too_many = await client.post(
        "/api/v1/downloads/manifest", json={**body, "paths": [f"f{n}" for n in range(1001)]}, headers=m.buyer.headers
    )
    assert too_many.status_code in (413, 422), too_many.text
    assert await used() == (2, len(b"alpha") + len(b"beta"))
