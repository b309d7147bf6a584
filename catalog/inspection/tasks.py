"""The inspection jobs: profiling stored files, fetching one crawled source's opt-out evidence."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from typing import IO, Any, cast

import anyio
import msgspec
import urllib3
from minio.error import S3Error
from sqlalchemy import select, update

from app.db import utcnow
from app.jobs import JobDeps, job
from app.objectstore import ObjectStore, ObjectStoreUnavailable
from catalog.inspection import optout, profiler
from catalog.inspection.formats import RangeReader
from catalog.inspection.models import FileProfileRow, OptOutEvidence
from catalog.inspection.triggers import OPT_OUT_TASK, PROFILE_TASK, SINGLE_PROFILE_TASK
from catalog.models import VersionFile
from catalog.uploads import blob_key

log = logging.getLogger("corpora.inspection")


def range_reader(store: ObjectStore, key: str, size: int) -> IO[bytes]:
    """A seekable file over the stored object (read in a worker thread, never on the event loop)."""

    def fetch(offset: int, length: int) -> bytes:
        # Told apart from the content's own errors (a corrupt gzip stream is an OSError too): only these retry.
        try:
            response = store.client.get_object(store.bucket, key, offset=offset, length=length)
            try:
                return response.read(decode_content=False)
            finally:
                response.close()
                response.release_conn()
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            raise ObjectStoreUnavailable(f"reading {key}: {exc}") from exc

    return cast(IO[bytes], RangeReader(fetch, size))


def _printable(message: str) -> str:
    """A parser's message may quote the file's bytes: kept as text PostgreSQL stores (no NUL, no control
    characters)."""
    return "".join(c if c.isprintable() else "\ufffd" for c in message)


@dataclasses.dataclass(frozen=True, slots=True)
class _Stored:
    file_id: uuid.UUID
    path: str
    size: int
    sha256: str


@job(PROFILE_TASK)
async def profile_files(deps: JobDeps, file_ids: list[str]) -> None:
    """Profile a batch of files (one large file, or many small ones): one transaction to start them and one to
    record what was found, rather than a job and three transactions per file, which cost small files more than
    profiling them."""
    async with deps.sessionmaker() as session, session.begin():
        rows = (
            await session.execute(
                select(FileProfileRow, VersionFile)
                .join(VersionFile, VersionFile.id == FileProfileRow.file_id)
                .where(
                    FileProfileRow.file_id.in_([uuid.UUID(f) for f in file_ids]), FileProfileRow.finished_at.is_(None)
                )
                .order_by(VersionFile.path)
                .with_for_update(of=FileProfileRow)
            )
        ).all()  # files removed from their draft, or finished by another attempt, are not here
        stored = [_Stored(file.id, file.path, file.size, file.sha256) for _, file in rows]
        for row, _ in rows:
            row.started_at, row.failed_at, row.error = utcnow(), None, None
    done: list[tuple[uuid.UUID, dict[str, Any]]] = []
    failed: list[tuple[uuid.UUID, str]] = []
    try:
        for file in stored:
            try:
                reader = range_reader(deps.store, blob_key(file.sha256), file.size)
                result = await anyio.to_thread.run_sync(profiler.profile, reader, file.path, file.size)
            except ObjectStoreUnavailable:
                raise  # the store is down or slow: retried with backoff (what was profiled is kept below)
            except Exception as exc:  # the content cannot be read as its format claims: recorded, not retried
                log.warning("profiling %s failed: %s", file.path, exc)
                failed.append((file.file_id, _printable(f"{type(exc).__name__}: {exc}")[:1000]))
            else:
                done.append((file.file_id, msgspec.to_builtins(result)))
    finally:
        if done or failed:
            async with deps.sessionmaker() as session, session.begin():
                now = utcnow()
                for file_id, found in done:
                    await session.execute(
                        update(FileProfileRow)
                        .where(FileProfileRow.file_id == file_id)
                        .values(finished_at=now, failed_at=None, error=None, profile=found)
                    )
                for file_id, error in failed:
                    failure = update(FileProfileRow).where(FileProfileRow.file_id == file_id)
                    await session.execute(failure.values(failed_at=now, error=error))


@job(SINGLE_PROFILE_TASK)
async def profile_file(deps: JobDeps, file_id: str) -> None:
    """A job queued by an earlier release, one per file."""
    await profile_files(deps, [file_id])


async def _keep(deps: JobDeps, fetched: optout.Fetched) -> None:
    """Store the exact bytes under their digest, under retention when the bucket has object lock."""
    if fetched.sha256 is None:
        return
    key = optout.evidence_key(fetched.sha256)
    if await deps.store.size_of(key) is not None:
        return
    days = deps.settings.audit_retention_days
    retain_until = utcnow() + dt.timedelta(days=days) if days else None
    try:
        await deps.store.put_bytes(key, fetched.body, "application/octet-stream", retain_until=retain_until)
    except S3Error as exc:
        if retain_until is None or exc.code not in ("InvalidRequest", "InvalidBucketState", "NotImplemented"):
            raise
        await deps.store.put_bytes(key, fetched.body, "application/octet-stream")


@job(OPT_OUT_TASK)
async def fetch_opt_out_evidence(deps: JobDeps, evidence_id: str) -> None:
    async with deps.sessionmaker() as session:
        row = await session.get(OptOutEvidence, uuid.UUID(evidence_id))
        if row is None or row.fetched_at is not None:
            return
        url = row.url
    site = optout.origin(url)
    robots = await optout.fetch(deps.egress, f"{site}/robots.txt")
    tdmrep = await optout.fetch(deps.egress, f"{site}/.well-known/tdmrep.json")
    page = await optout.fetch(deps.egress, url, method="HEAD")
    await _keep(deps, robots)
    await _keep(deps, tdmrep)
    disallows = optout.disallowed_crawlers(robots, url)
    reserved = optout.tdm_reserved(tdmrep, page.header, url)
    errors = [f"{what}: {f.error}" for what, f in (("robots.txt", robots), ("tdmrep.json", tdmrep)) if f.error]
    async with deps.sessionmaker() as session, session.begin():
        await session.execute(
            update(OptOutEvidence)
            .where(OptOutEvidence.id == uuid.UUID(evidence_id))
            .values(
                fetched_at=utcnow(),
                robots_status=robots.status,
                robots_sha256=robots.sha256,
                robots_disallows=disallows,
                tdmrep_status=tdmrep.status,
                tdmrep_sha256=tdmrep.sha256,
                tdm_header=(page.header or None) and page.header[:200],
                tdm_reserved=reserved,
                reserved_for_ai=None
                if robots.status is None and reserved is None
                else bool(reserved) or bool(disallows),
                error="; ".join(errors)[:1000] or None,
            )
        )
