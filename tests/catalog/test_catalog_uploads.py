"""Uploads straight to the object store, server-side verification, publishing and review."""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

import asyncpg
import httpx
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.settings import Settings
from catalog.uploads import blob_key
from tests.catalog.helpers import make_product, make_version, upload
from tests.conftest import grant_platform_role, make_org, sequence_audit, sign_up


async def test_single_and_multipart_upload_publish_and_review(
    client: AsyncTestClient[Any], db: asyncpg.Connection, app: Litestar
) -> None:
    owner = await sign_up(client)
    org = await make_org(client, owner, kind="provider")
    slug = await make_product(client, owner, org)
    await make_version(client, owner, slug)

    small = b"2026-01-02,ACME,filing\n" * 100
    large = os.urandom(17 * 1024 * 1024)  # three 8 MiB parts
    done = await upload(client, owner, slug, "1.0.0", "data/small.csv", small)
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "verified"
    done = await upload(client, owner, slug, "1.0.0", "data/large.bin", large)
    assert done.status_code == 200, done.text

    published = await client.post(f"/api/v1/products/{slug}/versions/1.0.0/publish", headers=owner.headers)
    assert published.status_code == 200, published.text
    assert published.json()["state"] == "in_review"

    # The provider cannot approve its own version; a platform reviewer can.
    refused = await client.post(
        f"/api/v1/products/{slug}/versions/1.0.0/review", json={"decision": "approve"}, headers=owner.headers
    )
    assert refused.status_code == 403
    reviewer = await grant_platform_role(client, db, await sign_up(client), "reviewer")
    approved = await client.post(
        f"/api/v1/products/{slug}/versions/1.0.0/review", json={"decision": "approve"}, headers=reviewer.headers
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["state"] == "published"

    anonymous = await client.get(f"/api/v1/products/{slug}/versions/1.0.0")
    assert anonymous.status_code == 200
    version = anonymous.json()
    assert version["files"] == [
        {
            "path": "data/large.bin",
            "size": len(large),
            "sha256": hashlib.sha256(large).hexdigest(),
            "media_type": "text/plain",
        },
        {
            "path": "data/small.csv",
            "size": len(small),
            "sha256": hashlib.sha256(small).hexdigest(),
            "media_type": "text/plain",
        },
    ]
    assert version["manifest_digest"].startswith("sha256:")
    store = app.state.object_store
    assert await store.size_of(blob_key(hashlib.sha256(large).hexdigest())) == len(large)

    # Published means frozen: no new files, and the database refuses even a direct change.
    late = await client.post(
        f"/api/v1/products/{slug}/versions/1.0.0/files",
        json={"path": "late.txt", "size": 1, "sha256": "0" * 64},
        headers=owner.headers,
    )
    assert late.status_code == 409
    try:
        await db.execute(
            "UPDATE product_versions SET changelog = 'rewritten' WHERE version = '1.0.0' AND product_id = "
            "(SELECT id FROM products WHERE slug = $1)",
            slug,
        )
        raise AssertionError("the database accepted a change to a published version")
    except asyncpg.exceptions.ObjectNotInPrerequisiteStateError:
        pass
    product = await client.get(f"/api/v1/products/{slug}")
    assert product.json()["status"] == "published"
    assert product.json()["latest_version"] == "1.0.0"


async def test_tampered_upload_is_rejected_and_its_object_deleted(
    client: AsyncTestClient[Any], db: asyncpg.Connection, app: Litestar, settings: Settings
) -> None:
    owner = await sign_up(client)
    org = await make_org(client, owner, kind="provider")
    slug = await make_product(client, owner, org)
    await make_version(client, owner, slug)
    content = b"honest bytes"
    rejected = await upload(
        client, owner, slug, "1.0.0", "x.txt", content, declared_sha256=hashlib.sha256(b"other bytes").hexdigest()
    )
    assert rejected.status_code == 422
    assert rejected.headers["content-type"].startswith("application/problem+json")
    assert rejected.json()["type"] == "checksum-mismatch"
    file_id = rejected.url.path.split("/")[-2]
    store = app.state.object_store
    assert await store.size_of(f"staging/{file_id}") is None
    # Gone for real: the bucket keeps versions, and no version of the rejected bytes is left behind.
    versions = await asyncio.to_thread(
        lambda: list(store.client.list_objects(store.bucket, prefix=f"staging/{file_id}", include_version=True))
    )
    assert versions == []
    assert await db.fetchval("SELECT count(*) FROM version_files WHERE id = $1::uuid", file_id) == 0

    # A size lie is caught too.
    sha = hashlib.sha256(content).hexdigest()
    planned = await client.post(
        f"/api/v1/products/{slug}/versions/1.0.0/files",
        json={"path": "y.txt", "size": len(content) + 1, "sha256": sha},
        headers=owner.headers,
    )
    plan = planned.json()
    async with httpx.AsyncClient() as s3:
        assert (await s3.put(plan["upload"]["url"], content=content)).status_code == 200
    # (A single upload's completion needs no body at all.)
    done = await client.post(
        f"/api/v1/products/{slug}/versions/1.0.0/files/{plan['file_id']}/complete", headers=owner.headers
    )
    assert done.status_code == 422
    assert done.json()["type"] == "size-mismatch"

    # Nothing verified, so nothing to publish.
    empty = await client.post(f"/api/v1/products/{slug}/versions/1.0.0/publish", headers=owner.headers)
    assert empty.status_code == 422
    assert empty.json()["type"] == "version-incomplete"


async def test_two_versions_sharing_a_file_store_it_once(client: AsyncTestClient[Any], db: asyncpg.Connection) -> None:
    owner = await sign_up(client)
    org = await make_org(client, owner, kind="provider")
    first = await make_product(client, owner, org)
    second = await make_product(client, owner, org)
    await make_version(client, owner, first)
    await make_version(client, owner, second, version="2.0.0")
    content = os.urandom(4096)
    assert (await upload(client, owner, first, "1.0.0", "a.bin", content)).status_code == 200
    assert (await upload(client, owner, second, "2.0.0", "b/c.bin", content)).status_code == 200
    sha = hashlib.sha256(content).hexdigest()
    assert await db.fetchval("SELECT count(*) FROM blobs WHERE sha256 = $1", sha) == 1
    assert await db.fetchval("SELECT count(*) FROM version_files WHERE sha256 = $1", sha) == 2


async def _plan(client: AsyncTestClient[Any], owner: Any, slug: str, path: str, content: bytes) -> dict[str, Any]:
    response = await client.post(
        f"/api/v1/products/{slug}/versions/1.0.0/files",
        json={
            "path": path,
            "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
            "media_type": "text/plain",
        },
        headers=owner.headers,
    )
    assert response.status_code == 201, response.text
    plan: dict[str, Any] = response.json()
    return plan


async def test_content_the_org_already_stores_completes_without_an_upload(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    owner = await sign_up(client)
    org = await make_org(client, owner, kind="provider")
    first, second = await make_product(client, owner, org), await make_product(client, owner, org)
    await make_version(client, owner, first)
    await make_version(client, owner, second)
    content = os.urandom(9 * 1024 * 1024)  # a multipart upload
    assert (await upload(client, owner, first, "1.0.0", "a.bin", content)).status_code == 200

    plan = await _plan(client, owner, second, "copy.bin", content)
    assert plan["stored"] is True
    done = await client.post(
        f"/api/v1/products/{second}/versions/1.0.0/files/{plan['file_id']}/complete", json={}, headers=owner.headers
    )
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "verified"
    await sequence_audit(db)
    reused = await db.fetchval(
        "SELECT details->>'reused' FROM audit_events WHERE action = 'file.verified' AND target_id = $1",
        plan["file_id"],
    )
    assert reused == "true"
    # New content is not stored: the plan says so, and completing before uploading is refused.
    fresh = await _plan(client, owner, second, "new.bin", os.urandom(100))
    assert fresh["stored"] is False


async def test_the_plan_never_reveals_what_another_org_stores(client: AsyncTestClient[Any]) -> None:
    content = os.urandom(2048)
    holder = await sign_up(client)
    holder_org = await make_org(client, holder, kind="provider")
    held = await make_product(client, holder, holder_org)
    await make_version(client, holder, held)
    assert (await upload(client, holder, held, "1.0.0", "x.bin", content)).status_code == 200

    prober = await sign_up(client)
    prober_org = await make_org(client, prober, kind="provider")
    probe = await make_product(client, prober, prober_org)
    await make_version(client, prober, probe)
    plan = await _plan(client, prober, probe, "x.bin", content)
    assert plan["stored"] is False
    early = await client.post(
        f"/api/v1/products/{probe}/versions/1.0.0/files/{plan['file_id']}/complete", json={}, headers=prober.headers
    )
    assert early.status_code == 409, early.text
    assert early.json()["type"].endswith("upload-missing")
