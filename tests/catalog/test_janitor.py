"""The storage janitor: abandoned uploads and orphan blobs go, verified files and their blobs stay."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest_asyncio
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import create_engine
from app.objectstore import ObjectStore
from app.settings import Settings
from catalog.janitor import ADVISORY_LOCK_KEY, sweep
from catalog.uploads import blob_key, staging_key
from tests.catalog.helpers import make_product, make_version, upload
from tests.conftest import make_org, sequence_audit, sign_up

DAY = dt.timedelta(days=1)


@pytest_asyncio.fixture(loop_scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """An engine on the tests' event loop (the app's own engine lives on the test client's loop)."""
    engine = create_engine(settings.database_url or "", pool_size=2)
    yield engine
    await engine.dispose()


async def test_abandoned_upload_and_orphan_blob_are_swept_verified_files_stay(
    client: AsyncTestClient[Any], db: asyncpg.Connection, app: Litestar, engine: AsyncEngine
) -> None:
    store: ObjectStore = app.state.object_store
    owner = await sign_up(client)
    org = await make_org(client, owner, kind="provider")
    slug = await make_product(client, owner, org)
    await make_version(client, owner, slug)

    # A verified file, small and multipart, with their blobs.
    kept_small = os.urandom(1000)
    kept_large = os.urandom(9 * 1024 * 1024)
    for path, content in [("kept/small.bin", kept_small), ("kept/large.bin", kept_large)]:
        done = await upload(client, owner, slug, "1.0.0", path, content)
        assert done.status_code == 200, done.text

    # A multipart upload with one part sent and never completed.
    content = os.urandom(17 * 1024 * 1024)
    planned = await client.post(
        f"/api/v1/products/{slug}/versions/1.0.0/files",
        json={"path": "abandoned.bin", "size": len(content), "sha256": hashlib.sha256(content).hexdigest()},
        headers=owner.headers,
    )
    assert planned.status_code == 201, planned.text
    plan = planned.json()
    file_id = uuid.UUID(plan["file_id"])
    upload_id = plan["upload"]["upload_id"]
    part_size = plan["upload"]["part_size"]
    async with httpx.AsyncClient(timeout=60) as s3:
        put = await s3.put(plan["upload"]["parts"][0]["url"], content=content[:part_size])
        assert put.status_code == 200, put.text
    # A small pending upload whose bytes arrived but that was never completed.
    small = b"never completed"
    planned = await client.post(
        f"/api/v1/products/{slug}/versions/1.0.0/files",
        json={"path": "abandoned.txt", "size": len(small), "sha256": hashlib.sha256(small).hexdigest()},
        headers=owner.headers,
    )
    small_plan = planned.json()
    small_id = uuid.UUID(small_plan["file_id"])
    async with httpx.AsyncClient(timeout=60) as s3:
        assert (await s3.put(small_plan["upload"]["url"], content=small)).status_code == 200
    # An object under blobs/ that no row describes (a blob of a failed or removed upload).
    orphan = hashlib.sha256(os.urandom(32)).hexdigest()
    await store.put_bytes(blob_key(orphan), b"orphaned content")

    staged = staging_key(file_id)
    assert any(key == staged and uid == upload_id for key, uid, _ in await store.multipart_uploads(staged))

    # Young: with the default max age nothing of this test is touched.
    report = await sweep(engine, store, max_age=DAY, wait=True)
    assert report.ran
    assert await db.fetchval("SELECT count(*) FROM version_files WHERE id = ANY($1::uuid[])", [file_id, small_id]) == 2
    assert await store.size_of(blob_key(orphan)) is not None

    # The uploads were planned two days ago: abandoned.
    await db.execute(
        "UPDATE version_files SET created_at = now() - interval '2 days' WHERE id = ANY($1::uuid[])",
        [file_id, small_id],
    )
    report = await sweep(engine, store, max_age=DAY, wait=True)
    assert report.ran
    assert await db.fetchval("SELECT count(*) FROM version_files WHERE id = ANY($1::uuid[])", [file_id, small_id]) == 0
    assert not [u for u in await store.multipart_uploads(staged) if u[1] == upload_id]
    assert await store.size_of(staged) is None
    assert await store.size_of(staging_key(small_id)) is None
    await sequence_audit(db)
    events = await db.fetch(
        "SELECT actor, target_id, details FROM audit_events WHERE action = 'file.abandoned' AND target_id = ANY($1)",
        [str(file_id), str(small_id)],
    )
    assert sorted(e["target_id"] for e in events) == sorted([str(file_id), str(small_id)])
    assert {e["actor"] for e in events} == {"system"}
    # The orphan blob is younger than a day: still there.
    assert await store.size_of(blob_key(orphan)) is not None

    # Everything older than "now": the orphan blob goes, the verified files and their blobs stay.
    report = await sweep(engine, store, max_age=dt.timedelta(0), wait=True)
    assert report.ran
    assert report.deleted_blobs >= 1
    assert await store.size_of(blob_key(orphan)) is None
    version = (await client.get(f"/api/v1/products/{slug}/versions/1.0.0", headers=owner.headers)).json()
    assert [f["path"] for f in version["files"]] == ["kept/large.bin", "kept/small.bin"]
    assert version["pending_files"] == []
    for content in (kept_small, kept_large):
        sha = hashlib.sha256(content).hexdigest()
        assert await store.size_of(blob_key(sha)) == len(content)
        assert await db.fetchval("SELECT size FROM blobs WHERE sha256 = $1", sha) == len(content)

    # The abandoned path can be uploaded again from scratch.
    done = await upload(client, owner, slug, "1.0.0", "abandoned.txt", small)
    assert done.status_code == 200, done.text


async def test_sweeps_in_several_processes_take_turns(app: Litestar, engine: AsyncEngine) -> None:
    store: ObjectStore = app.state.object_store
    async with engine.connect() as other:
        assert await other.scalar(select(func.pg_try_advisory_lock(ADVISORY_LOCK_KEY)))
        try:
            skipped = await sweep(engine, store, max_age=DAY)
            assert not skipped.ran
            assert "skipped" in skipped.describe()
        finally:
            await other.execute(select(func.pg_advisory_unlock(ADVISORY_LOCK_KEY)))
    assert (await sweep(engine, store, max_age=DAY, wait=True)).ran
