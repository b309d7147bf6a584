"""Batched uploads: many files planned and completed per request, PUT straight to their content-addressed key."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import logging
import os
import uuid
from typing import Any

import aiohttp
import asyncpg
import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.main import create_app
from app.objectstore import ObjectStore
from app.settings import Settings
from catalog.uploads import blob_key, staging_key
from tests.catalog.helpers import make_product, make_version
from tests.conftest import Account, make_org, sequence_audit, sign_up


def _spec(path: str, content: bytes) -> dict[str, Any]:
    return {"path": path, "size": len(content), "sha256": hashlib.sha256(content).hexdigest(), "media_type": "text/csv"}


async def _draft(client: AsyncTestClient[Any]) -> tuple[Account, str]:
    owner = await sign_up(client)
    org = await make_org(client, owner, kind="provider")
    slug = await make_product(client, owner, org)
    await make_version(client, owner, slug)
    return owner, slug


async def _plan(client: AsyncTestClient[Any], owner: Account, slug: str, files: list[dict[str, Any]]) -> httpx.Response:
    return await client.post(
        f"/api/v1/products/{slug}/versions/1.0.0/uploads", json={"files": files}, headers=owner.headers
    )


async def _complete(
    client: AsyncTestClient[Any], owner: Account, slug: str, files: list[dict[str, Any]]
) -> httpx.Response:
    return await client.post(
        f"/api/v1/products/{slug}/versions/1.0.0/uploads/complete", json={"files": files}, headers=owner.headers
    )


async def _put(upload: dict[str, Any], content: bytes) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as s3:
        return await s3.put(upload["url"], content=content, headers=upload["headers"])


async def _versions(app: Litestar, key: str) -> list[str | None]:
    store = app.state.object_store
    return list(store._versions(key))


async def test_a_batch_uploads_to_the_content_key_and_audits_every_file(
    client: AsyncTestClient[Any], db: asyncpg.Connection, app: Litestar
) -> None:
    owner, slug = await _draft(client)
    contents = {f"data/part-{n}.csv": os.urandom(1000 + n) for n in range(5)}
    contents["data/copy-of-0.csv"] = contents["data/part-0.csv"]  # the same content twice: stored once
    planned = await _plan(client, owner, slug, [_spec(p, c) for p, c in contents.items()])
    assert planned.status_code == 200, planned.text
    items = planned.json()["items"]
    assert [i["path"] for i in items] == list(contents)
    assert {i["status"] for i in items} == {"upload"}
    assert {i["upload"]["kind"] for i in items} == {"direct"}  # SeaweedFS enforces the signed SHA-256

    done = []
    for item in items:
        put = await _put(item["upload"], contents[item["path"]])
        assert put.status_code == 200, put.text
        done.append({"file_id": item["file_id"], "version_id": put.headers["x-amz-version-id"]})
    completed = await _complete(client, owner, slug, done)
    assert completed.status_code == 200, completed.text
    assert [(i["status"], i["path"]) for i in completed.json()["items"]] == [("verified", p) for p in contents]

    ids = [i["file_id"] for i in items]
    for action in ("file.upload_started", "file.verified"):
        await sequence_audit(db)
        count = await db.fetchval(
            "SELECT count(*) FROM audit_events WHERE action = $1 AND target_id = ANY($2::text[])", action, ids
        )
        assert count == len(contents), action
    version = (await client.get(f"/api/v1/products/{slug}/versions/1.0.0", headers=owner.headers)).json()
    assert {f["path"]: f["sha256"] for f in version["files"]} == {
        p: hashlib.sha256(c).hexdigest() for p, c in contents.items()
    }
    # Nothing staged, nothing copied: one object version per content.
    for content in set(contents.values()):
        assert len(await _versions(app, blob_key(hashlib.sha256(content).hexdigest()))) == 1
    for file_id in ids:
        assert await app.state.object_store.size_of(staging_key(uuid.UUID(file_id))) is None

    # Completing again is idempotent (no new event), and planning again finds the files verified.
    again = await _complete(client, owner, slug, done)
    assert {i["status"] for i in again.json()["items"]} == {"verified"}
    await sequence_audit(db)
    count = await db.fetchval(
        "SELECT count(*) FROM audit_events WHERE action = 'file.verified' AND target_id = ANY($1::text[])", ids
    )
    assert count == len(contents)
    replanned = await _plan(client, owner, slug, [_spec(p, c) for p, c in contents.items()])
    assert {i["status"] for i in replanned.json()["items"]} == {"verified"}


async def test_bad_items_are_refused_one_by_one_and_leave_nothing(
    client: AsyncTestClient[Any], db: asyncpg.Connection, app: Litestar
) -> None:
    owner, slug = await _draft(client)
    good, bad = os.urandom(2000), os.urandom(3000)
    planned = await _plan(
        client,
        owner,
        slug,
        [_spec("good.csv", good), _spec("../escape.csv", good), _spec("bad.csv", bad), _spec("good.csv", good)],
    )
    assert planned.status_code == 200, planned.text
    first, escape, second, twice = planned.json()["items"]
    assert first["status"] == second["status"] == "upload"
    assert (escape["status"], escape["problem"]["type"], escape["problem"]["status"]) == (
        "refused",
        "validation-error",
        422,
    )
    assert (twice["status"], twice["problem"]["type"]) == ("refused", "path-exists")

    # The object store refuses other bytes than the signed SHA-256 at the content key.
    refused = await _put(second["upload"], b"not the declared bytes")
    assert refused.status_code == 400, refused.text

    # A file planned one by one (a staged upload) with other bytes than declared: refused within the batch.
    single = await client.post(
        f"/api/v1/products/{slug}/versions/1.0.0/files", json=_spec("staged.csv", bad), headers=owner.headers
    )
    assert single.status_code == 201, single.text
    staged = single.json()
    assert (await _put(staged["upload"], b"x" * len(bad))).status_code == 200

    put = await _put(first["upload"], good)
    completed = await _complete(
        client,
        owner,
        slug,
        [
            {"file_id": first["file_id"], "version_id": put.headers["x-amz-version-id"]},
            {"file_id": second["file_id"], "version_id": "0" * 32},  # nothing uploaded under that version
            {"file_id": staged["file_id"]},
            {"file_id": str(uuid.uuid4())},
        ],
    )
    assert completed.status_code == 200, completed.text
    ok, missing, mismatch, unknown = completed.json()["items"]
    assert ok["status"] == "verified"
    assert (missing["status"], missing["problem"]["type"]) == ("refused", "upload-missing")
    assert (mismatch["status"], mismatch["problem"]["type"]) == ("refused", "checksum-mismatch")
    assert (unknown["status"], unknown["problem"]["type"]) == ("refused", "not-found")

    version = (await client.get(f"/api/v1/products/{slug}/versions/1.0.0", headers=owner.headers)).json()
    assert [f["path"] for f in version["files"]] == ["good.csv"]
    # The missing upload changed nothing (still pending); the mismatch left nothing: no file, no object, no blob.
    assert [f["path"] for f in version["pending_files"]] == ["bad.csv"]
    assert await app.state.object_store.size_of(staging_key(uuid.UUID(staged["file_id"]))) is None
    assert await db.fetchval("SELECT count(*) FROM blobs WHERE sha256 = $1", hashlib.sha256(bad).hexdigest()) == 0
    assert await db.fetchval("SELECT count(*) FROM version_files WHERE id = $1", uuid.UUID(staged["file_id"])) == 0
    await sequence_audit(db)
    reason = await db.fetchval(
        "SELECT details->>'reason' FROM audit_events WHERE action = 'file.rejected' AND target_id = $1",
        staged["file_id"],
    )
    assert reason == "checksum-mismatch"


async def test_another_orgs_version_is_not_found(client: AsyncTestClient[Any], db: asyncpg.Connection) -> None:
    owner, slug = await _draft(client)
    content = os.urandom(100)
    planned = (await _plan(client, owner, slug, [_spec("a.csv", content)])).json()["items"][0]
    stranger = await sign_up(client)
    await make_org(client, stranger, kind="provider")
    assert (await _plan(client, stranger, slug, [_spec("b.csv", content)])).status_code == 404
    refused = await _complete(client, stranger, slug, [{"file_id": planned["file_id"]}])
    assert refused.status_code == 404
    sha = hashlib.sha256(content).hexdigest()
    assert await db.fetchval("SELECT count(*) FROM version_files WHERE path = 'b.csv' AND sha256 = $1", sha) == 0


async def test_a_batch_above_the_limit_is_refused_whole(settings: Settings, db: asyncpg.Connection) -> None:
    # The tests' 64 KiB body limit would refuse 1,001 files before their count is looked at.
    app = create_app(dataclasses.replace(settings, max_body_bytes=1024 * 1024))
    async with AsyncTestClient(app=app, base_url="http://testserver.local") as client:
        owner, slug = await _draft(client)
        files = [{"path": f"f{n}", "size": 1, "sha256": "0" * 64} for n in range(1001)]
        refused = await _plan(client, owner, slug, files)
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert await db.fetchval("SELECT count(*) FROM version_files WHERE path = 'f0' AND sha256 = $1", "0" * 64) == 0
        assert (await _plan(client, owner, slug, files[:1000])).status_code == 200
        too_many = [{"file_id": str(uuid.uuid4())} for _ in range(1001)]
        assert (await _complete(client, owner, slug, too_many)).status_code == 422


async def test_content_another_org_stores_is_uploaded_and_kept_once(
    client: AsyncTestClient[Any], app: Litestar, db: asyncpg.Connection
) -> None:
    content = os.urandom(4096)
    first, first_slug = await _draft(client)
    item = (await _plan(client, first, first_slug, [_spec("a.csv", content)])).json()["items"][0]
    put = await _put(item["upload"], content)
    version_id = put.headers["x-amz-version-id"]
    done = await _complete(client, first, first_slug, [{"file_id": item["file_id"], "version_id": version_id}])
    assert done.json()["items"][0]["status"] == "verified"

    # Another org is told to upload (never that someone stores it), and cannot complete without uploading.
    second, second_slug = await _draft(client)
    theirs = (await _plan(client, second, second_slug, [_spec("b.csv", content)])).json()["items"][0]
    assert theirs["status"] == "upload"
    # Planned a minute after the first upload: its object version is not this file's upload, even when named.
    await db.execute(
        "UPDATE version_files SET created_at = now() + interval '1 minute' WHERE id = $1", uuid.UUID(theirs["file_id"])
    )
    for claim in ({"file_id": theirs["file_id"]}, {"file_id": theirs["file_id"], "version_id": version_id}):
        refused = await _complete(client, second, second_slug, [claim])
        assert refused.json()["items"][0]["problem"]["type"] == "upload-missing"
    await db.execute("UPDATE version_files SET created_at = now() WHERE id = $1", uuid.UUID(theirs["file_id"]))
    put = await _put(theirs["upload"], content)
    done = await _complete(
        client, second, second_slug, [{"file_id": theirs["file_id"], "version_id": put.headers["x-amz-version-id"]}]
    )
    assert done.json()["items"][0]["status"] == "verified"
    assert await _versions(app, blob_key(hashlib.sha256(content).hexdigest())) == [version_id]

    # The org that stores it is told so, and completes without sending it again.
    again = (await _plan(client, first, first_slug, [_spec("c.csv", content)])).json()["items"][0]
    assert again["status"] == "stored"
    assert "upload" not in again
    done = await _complete(client, first, first_slug, [{"file_id": again["file_id"]}])
    assert done.json()["items"][0]["status"] == "verified"


def _count_heads(store: ObjectStore) -> list[str]:
    """The methods of the requests the store's aiohttp session sends from now on, as aiohttp traces them."""
    sent: list[str] = []

    async def on_start(_session: object, _context: object, params: aiohttp.TraceRequestStartParams) -> None:
        sent.append(params.method)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    trace.freeze()
    store._http_session().trace_configs.append(trace)
    return sent


async def test_a_direct_upload_is_verified_by_the_checksum_the_store_recorded_without_reading_it_back(
    client: AsyncTestClient[Any], app: Litestar, caplog: pytest.LogCaptureFixture
) -> None:
    store = app.state.object_store
    content = os.urandom(3000)
    sha256 = hashlib.sha256(content).hexdigest()
    key = blob_key(sha256)
    url = await store.presigned_checked_put(key, sha256, 60)
    async with httpx.AsyncClient(timeout=60) as s3:
        put = await s3.put(url, content=content)
    assert put.status_code == 200, put.text
    # The HEAD goes out through aiohttp; a read-back would go through the SDK, over urllib3, which logs every
    # request it sends: '... "METHOD /path HTTP/1.1" …'. None may be sent.
    heads = _count_heads(store)
    with caplog.at_level(logging.DEBUG, logger="urllib3.connectionpool"):
        (found,) = await store.version_digests([(key, put.headers["x-amz-version-id"])])
    assert found is not None
    assert found[:2] == (len(content), sha256)
    sent = [m.split('"')[1].split()[0] for m in caplog.messages if m.count('"') >= 2 and " HTTP/1.1" in m]
    assert sent == [], caplog.messages
    assert heads == ["HEAD"]

    # A version the store recorded no checksum for is read and hashed instead.
    other = os.urandom(2000)
    staged = staging_key(uuid.uuid4())
    plain = store.client.put_object(store.bucket, staged, io.BytesIO(other), len(other))
    (found,) = await store.version_digests([(staged, plain.version_id)])
    assert found is not None
    assert found[:2] == (len(other), hashlib.sha256(other).hexdigest())
    assert await store.version_digests([(key, "0" * 32), (key, "not-a-version")]) == [None, None]


async def test_a_checked_put_with_a_checksum_header_of_other_bytes_is_refused(
    client: AsyncTestClient[Any], app: Litestar
) -> None:
    """The completion trusts the SHA-256 the store recorded for a direct upload: no header the uploader adds may
    make the store record (or check against) another checksum than the one signed into the URL."""
    store = app.state.object_store
    signed, other = os.urandom(500), os.urandom(500)
    key = blob_key(hashlib.sha256(signed).hexdigest())
    url = await store.presigned_checked_put(key, hashlib.sha256(signed).hexdigest(), 60)
    forged = {"x-amz-checksum-sha256": base64.b64encode(hashlib.sha256(other).digest()).decode()}
    async with httpx.AsyncClient(timeout=60) as s3:
        for headers in (forged, {**forged, "x-amz-sdk-checksum-algorithm": "SHA256"}, {}):
            put = await s3.put(url, content=other, headers=headers)
            assert 400 <= put.status_code < 500, (headers, put.status_code, put.text)
    assert await _versions(app, key) == []
