"""The storage janitor: sweeps what unfinished uploads and removed files leave in the object store.

What it removes, and nothing else:

- **abandoned uploads**: a ``pending`` file of a draft version planned more than ``max_age`` ago. Its
  multipart upload is aborted, its staged object ``staging/<file_id>`` deleted, the row deleted, and a
  ``file.abandoned`` audit event written in the same transaction. An upload must therefore be completed
  within ``max_age`` of its first plan (``CORPORA_JANITOR_MAX_AGE_SECONDS``, 24 hours by default).
- **unreferenced staging**: multipart uploads and objects under ``staging/`` that no pending file row
  references (the row was rejected, deleted or never committed, or the file was verified and its staged
  copy outlived the move to its blob), once the object store says they are older than ``max_age``.
- **orphan blobs**: objects under ``blobs/sha256/`` older than ``max_age`` without a ``blobs`` row.

Verified files and blobs with a row are never touched. Rows the API is working on at the same moment are
skipped: an abandoned file is taken with ``FOR UPDATE SKIP LOCKED`` (``complete`` locks its row), and an
orphan blob is claimed by inserting its row speculatively (a concurrent ``complete`` inserting the same
row waits for the janitor's transaction, which deletes the object and rolls the row back, and then stores
the blob itself). Several processes may sweep at once: a PostgreSQL advisory lock lets one work and the
others skip.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import logging
import random
import uuid
from typing import Any

from minio.error import S3Error
from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.audit import service as audit
from app.db import utcnow
from app.objectstore import ObjectStore
from app.settings import Settings
from catalog.models import Blob, Product, ProductVersion, VersionFile
from catalog.uploads import blob_key, staging_key

log = logging.getLogger("corpora.janitor")

STAGING_PREFIX = "staging/"
BLOB_PREFIX = "blobs/sha256/"
# One advisory lock key for "sweeping storage", derived from a name so it cannot collide by accident.
ADVISORY_LOCK_KEY = int.from_bytes(hashlib.sha256(b"corpora.catalog.janitor").digest()[:8], "big", signed=True)
# How long the sweep waits for a row a request holds before leaving it for the next sweep.
LOCK_TIMEOUT = "5s"
BATCH = 1000  # blob digests looked up per query
_GONE = {"NoSuchUpload", "NoSuchKey", "NoSuchObject", "ResourceNotFound"}


@dataclasses.dataclass
class JanitorReport:
    """What one sweep did. ``ran`` is false when another process held the lock and this one skipped."""

    ran: bool = True
    max_age_seconds: float = 0
    abandoned_files: list[str] = dataclasses.field(default_factory=list)  # "<slug>@<version>:<path>"
    aborted_uploads: int = 0
    deleted_staged_objects: int = 0
    deleted_blobs: int = 0
    kept_young: int = 0  # unreferenced staged objects, uploads and blobs younger than max_age
    errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.abandoned_files or self.aborted_uploads or self.deleted_staged_objects or self.deleted_blobs)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        if not self.ran:
            return "another janitor is sweeping; skipped"
        text_ = (
            f"abandoned {len(self.abandoned_files)} file(s), aborted {self.aborted_uploads} multipart upload(s), "
            f"deleted {self.deleted_staged_objects} staged object(s) and {self.deleted_blobs} orphan blob(s)"
        )
        if self.errors:
            text_ += f"; {len(self.errors)} error(s), retried next sweep"
        return text_


def _file_id(key: str) -> uuid.UUID | None:
    """``staging/<uuid>`` → the file id; anything else under the prefix is not ours to judge."""
    try:
        return uuid.UUID(key.removeprefix(STAGING_PREFIX))
    except ValueError:
        return None


def _older(moment: dt.datetime | None, cutoff: dt.datetime) -> bool:
    """An object store timestamp before ``cutoff``; an unknown one counts as young (kept)."""
    if moment is None:
        return False
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment < cutoff


async def _abort(store: ObjectStore, key: str, upload_id: str) -> bool:
    """Abort a multipart upload; ``False`` when the object store no longer knows it."""
    try:
        await store.abort_multipart(key, upload_id)
    except S3Error as exc:
        if exc.code in _GONE:
            return False
        raise
    return True


async def _abandon(
    sessionmaker: async_sessionmaker[AsyncSession],
    store: ObjectStore,
    file_id: uuid.UUID,
    cutoff: dt.datetime,
    report: JanitorReport,
) -> None:
    """Abort, delete and forget one abandoned pending file, with its audit event, in one transaction."""
    async with sessionmaker() as session, session.begin():
        row = (
            await session.execute(
                select(VersionFile, ProductVersion.version, Product.slug, Product.org_id)
                .join(ProductVersion, ProductVersion.id == VersionFile.version_id)
                .join(Product, Product.id == ProductVersion.product_id)
                .where(
                    VersionFile.id == file_id,
                    VersionFile.status == "pending",
                    VersionFile.created_at < cutoff,
                    ProductVersion.state == "draft",
                )
                .with_for_update(of=VersionFile, skip_locked=True)
            )
        ).one_or_none()
        if row is None:
            return  # completed, deleted or being worked on meanwhile
        file, version, slug, org_id = row
        key = staging_key(file.id)
        if file.upload_id is not None and await _abort(store, key, file.upload_id):
            report.aborted_uploads += 1
        if await store.size_of(key) is not None:
            await store.delete(key)
            report.deleted_staged_objects += 1
        age = (utcnow() - file.created_at).total_seconds()
        await session.delete(file)
        await session.flush()
        await audit.record(
            session,
            audit.SYSTEM,
            "file.abandoned",
            org_id=org_id,
            target_type="file",
            target_id=file.id,
            details={
                "version": f"{slug}@{version}",
                "path": file.path,
                "size": file.size,
                "sha256": file.sha256,
                "age_seconds": int(age),
                "max_age_seconds": int(report.max_age_seconds),
            },
        )
    report.abandoned_files.append(f"{slug}@{version}:{file.path}")
    log.info("abandoned upload of %s@%s:%s (planned %.0fs ago)", slug, version, file.path, age)


async def _delete_orphan_blob(
    sessionmaker: async_sessionmaker[AsyncSession], store: ObjectStore, key: str, sha256: str
) -> bool:
    """Delete a blob object while holding a speculative row for its digest, then roll the row back.

    Inserting the row claims the digest: a ``complete`` storing the same content at the same moment waits on
    that insert, and once this transaction rolls back it inserts the row and copies the content itself.
    """
    async with sessionmaker() as session:
        try:
            await session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            claimed = await session.scalar(
                insert(Blob)
                .values(sha256=sha256, size=0)
                .on_conflict_do_nothing(index_elements=[Blob.sha256])
                .returning(Blob.sha256)
            )
            if claimed is None:
                return False  # a row exists (committed meanwhile): the blob is in use
            await store.delete(key)
            return True
        finally:
            await session.rollback()


async def _sweep(
    sessionmaker: async_sessionmaker[AsyncSession], store: ObjectStore, cutoff: dt.datetime, report: JanitorReport
) -> None:
    # 1. Abandoned pending files (their uploads and staged objects go with them).
    async with sessionmaker() as session:
        stale = list(
            await session.scalars(
                select(VersionFile.id)
                .join(ProductVersion, ProductVersion.id == VersionFile.version_id)
                .where(
                    VersionFile.status == "pending",
                    VersionFile.created_at < cutoff,
                    ProductVersion.state == "draft",
                )
                .order_by(VersionFile.created_at)
            )
        )
    for file_id in stale:
        try:
            await _abandon(sessionmaker, store, file_id, cutoff, report)
        except (S3Error, DBAPIError, OSError) as exc:
            report.errors.append(f"file {file_id}: {exc}")
            log.warning("could not abandon the upload of file %s: %s", file_id, exc)

    # 2. Staging that no pending row references.
    uploads = await store.multipart_uploads(STAGING_PREFIX)
    staged = await store.objects(STAGING_PREFIX)
    keys = [key for key, _, _ in uploads] + [key for key, _ in staged]
    ids = {file_id for file_id in map(_file_id, keys) if file_id is not None}
    pending: dict[uuid.UUID, str | None] = {}
    if ids:
        async with sessionmaker() as session:
            rows = await session.execute(
                select(VersionFile.id, VersionFile.upload_id).where(
                    VersionFile.id.in_(ids), VersionFile.status == "pending"
                )
            )
            pending = {row_id: row_upload for row_id, row_upload in rows}
    for key, upload_id, initiated in uploads:
        upload_of = _file_id(key)
        if upload_of is None:
            continue
        if upload_of in pending and pending[upload_of] == upload_id:
            continue  # the live upload of a pending file (young, or being completed right now)
        if not _older(initiated, cutoff):
            report.kept_young += 1
            continue
        try:
            if await _abort(store, key, upload_id):
                report.aborted_uploads += 1
        except S3Error as exc:
            report.errors.append(f"upload {upload_id} of {key}: {exc}")
    for key, modified in staged:
        staged_for = _file_id(key)
        if staged_for is None or staged_for in pending:
            continue
        if not _older(modified, cutoff):
            report.kept_young += 1
            continue
        try:
            await store.delete(key)
            report.deleted_staged_objects += 1
        except S3Error as exc:
            report.errors.append(f"{key}: {exc}")

    # 3. Blob objects without a blobs row.
    listed = [(key, modified) for key, modified in await store.objects(BLOB_PREFIX) if _is_blob_key(key)]
    for batch in (listed[i : i + BATCH] for i in range(0, len(listed), BATCH)):
        digests = [key.rsplit("/", 1)[-1] for key, _ in batch]
        async with sessionmaker() as session:
            known = set(await session.scalars(select(Blob.sha256).where(Blob.sha256.in_(digests))))
        for (key, modified), sha256 in zip(batch, digests, strict=True):
            if sha256 in known:
                continue
            if not _older(modified, cutoff):
                report.kept_young += 1
                continue
            try:
                if await _delete_orphan_blob(sessionmaker, store, key, sha256):
                    report.deleted_blobs += 1
            except (S3Error, DBAPIError, OSError) as exc:
                report.errors.append(f"{key}: {exc}")


def _is_blob_key(key: str) -> bool:
    """Only keys this service writes (``blobs/sha256/<2 hex>/<64 hex>``) are judged."""
    sha256 = key.rsplit("/", 1)[-1]
    return len(sha256) == 64 and all(c in "0123456789abcdef" for c in sha256) and blob_key(sha256) == key


async def sweep(
    engine: AsyncEngine,
    store: ObjectStore,
    *,
    max_age: dt.timedelta,
    wait: bool = False,
    now: dt.datetime | None = None,
) -> JanitorReport:
    """One sweep of abandoned uploads, unreferenced staging and orphan blobs older than ``max_age``.

    Holds a session-level advisory lock on a connection of its own for the whole sweep; without ``wait``
    it returns at once (``ran=False``) when another process holds it.
    """
    report = JanitorReport(max_age_seconds=max_age.total_seconds())
    cutoff = (now or utcnow()) - max_age
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    async with engine.connect() as lock:
        if wait:
            await lock.execute(select(func.pg_advisory_lock(ADVISORY_LOCK_KEY)))
        elif not await lock.scalar(select(func.pg_try_advisory_lock(ADVISORY_LOCK_KEY))):
            return dataclasses.replace(report, ran=False)
        await lock.commit()  # no transaction stays open while the sweep works
        try:
            await _sweep(sessionmaker, store, cutoff, report)
        finally:
            try:
                await lock.execute(select(func.pg_advisory_unlock(ADVISORY_LOCK_KEY)))
                await lock.commit()
            except Exception:
                await lock.invalidate()  # closing the connection releases the lock
                raise
    return report


async def run_janitor(settings: Settings, engine: AsyncEngine, store: ObjectStore) -> None:
    """Sweep every ``janitor_every_seconds`` (0: never) in the background of a server process.

    The first sweep comes after a random part of the interval (at most five minutes), so the processes of a
    deployment do not all start at once; whoever gets the lock sweeps, the others skip that round.
    """
    every = settings.janitor_every_seconds
    if every <= 0:
        return
    max_age = dt.timedelta(seconds=settings.janitor_max_age_seconds)
    delay = random.uniform(0.1, min(every, 300))  # noqa: S311 - spreading start times, not a secret
    while True:
        await asyncio.sleep(delay)
        delay = every
        try:
            report = await sweep(engine, store, max_age=max_age)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("storage sweep failed (%s: %s); retrying in %ds", type(exc).__name__, exc, every)
            continue
        if report.changed or report.errors:
            log.info("storage sweep: %s", report.describe())
