"""Uploads straight to the object store, verified on the server before a file counts.

The provider's bytes never pass through the API: it gets presigned URLs for a staging object, and on
``complete`` the server checks size and SHA-256, then keeps the content once under its digest.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import unicodedata
import uuid

from sqlalchemy import exists, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.audit.service import AuditContext
from app.auth.principal import Principal
from app.db import CommitThenRaise, utcnow
from app.errors import ProblemError, conflict, invalid, not_found
from app.objectstore import ObjectRefused, ObjectStore
from catalog.inspection import triggers
from catalog.models import Blob, Product, ProductVersion, VersionFile
from catalog.paths import misleading, path_key
from catalog.service import require_draft, version_for_writing

MIB = 1024 * 1024
MIN_PART_SIZE = 8 * MIB
MAX_PARTS = 10_000
# Upload URLs live for the maximum an S3 presigned URL may (one hour): parts of large files take a while.
UPLOAD_URL_SECONDS = 3600
_FORBIDDEN_CHARS = {"\\", "\x00"}
# Where ``corpora pull`` keeps its receipts inside the output directory: a file there could never be pulled.
STATE_DIR = ".corpora"
_DRIVE = re.compile(r"[A-Za-z]:")
# RFC 6838 type and subtype names, then RFC 9110 parameters (``; charset=utf-8``): a token or a quoted string.
_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[\t !#-\[\]-~]|\\[\t -~])*"'
MEDIA_TYPE = re.compile(rf"{_NAME}/{_NAME}(?:[ \t]*;[ \t]*{_TCHARS}=(?:{_TCHARS}|{_QUOTED}))*")


def staging_key(file_id: uuid.UUID) -> str:
    return f"staging/{file_id}"


def blob_key(sha256: str) -> str:
    return f"blobs/sha256/{sha256[:2]}/{sha256}"


def check_path(path: str) -> str:
    """A relative POSIX path inside the version, in NFC, refused when it could escape it or be ambiguous."""
    path = unicodedata.normalize("NFC", path)
    if path != path.strip() or not path:
        raise invalid("path", "must not be empty or start or end with spaces")
    if path.startswith("/"):
        raise invalid("path", "must be relative to the version, not absolute")
    if any(c in _FORBIDDEN_CHARS or ord(c) < 0x20 or c == "\x7f" for c in path):
        raise invalid("path", "must not contain backslashes, NUL or control characters")
    if _DRIVE.match(path):
        raise invalid("path", "must be relative to the version, not start with a drive letter such as 'C:'")
    segments = path.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        raise invalid("path", "must not contain empty, '.' or '..' segments")
    if segments[0].lower() == STATE_DIR:
        raise invalid("path", f"must not be under {STATE_DIR}/, where `corpora pull` keeps its receipts")
    if len(path.encode()) > 1024:
        raise invalid("path", "must be at most 1024 bytes")
    if (problem := misleading(path)) is not None:
        raise invalid("path", problem)
    return path


def check_media_type(media_type: str) -> str:
    """``type/subtype`` (RFC 6838), optionally with parameters such as ``; charset=utf-8`` (RFC 9110)."""
    if MEDIA_TYPE.fullmatch(media_type) is None:
        raise invalid(
            "media_type",
            "must be a media type such as text/csv or text/plain; charset=utf-8 (type/subtype, then parameters)",
        )
    return media_type


def part_size_for(size: int) -> int:
    """At least 8 MiB, whole MiB, and never more than 10,000 parts."""
    return max(MIN_PART_SIZE, math.ceil(size / MAX_PARTS / MIB) * MIB)


@dataclasses.dataclass(slots=True)
class Plan:
    file: VersionFile
    expires_at: dt.datetime
    url: str | None = None
    part_urls: list[tuple[int, str]] | None = None
    uploaded_parts: list[tuple[int, str, int]] | None = None
    # The org already stores this content: completing without uploading verifies the file.
    stored: bool = False


async def _org_stores(session: AsyncSession, org_id: uuid.UUID, file: VersionFile) -> bool:
    """Whether a verified file of the org's own versions has this content. Only the org's own files count, so
    the answer never tells whether another org holds the same bytes."""
    return bool(
        await session.scalar(
            select(
                exists().where(
                    VersionFile.sha256 == file.sha256,
                    VersionFile.size == file.size,
                    VersionFile.status == "verified",
                    VersionFile.version_id == ProductVersion.id,
                    ProductVersion.product_id == Product.id,
                    Product.org_id == org_id,
                )
            )
        )
    )


async def _plan_urls(store: ObjectStore, file: VersionFile, *, stored: bool) -> Plan:
    expires_at = utcnow() + dt.timedelta(seconds=UPLOAD_URL_SECONDS)
    key = staging_key(file.id)
    if file.upload_id is None:
        return Plan(file, expires_at, url=await store.presigned_put(key, UPLOAD_URL_SECONDS), stored=stored)
    assert file.part_size is not None
    count = max(1, math.ceil(file.size / file.part_size))
    urls = [
        (number, await store.presigned_part(key, file.upload_id, number, UPLOAD_URL_SECONDS))
        for number in range(1, count + 1)
    ]
    uploaded = await store.uploaded_parts(key, file.upload_id)
    return Plan(file, expires_at, part_urls=urls, uploaded_parts=uploaded, stored=stored)


async def plan_upload(
    session: AsyncSession,
    context: AuditContext,
    principal: Principal,
    store: ObjectStore,
    slug: str,
    version: str,
    *,
    path: str,
    size: int,
    sha256: str,
    media_type: str,
) -> Plan:
    """Register a file and hand out where to upload it.

    Asking again for a pending file with the same content resumes it: the same upload, fresh URLs and
    the parts the object store already has. When the org already stores the content in a verified file, the
    plan says so (``stored``) and the file can be completed without sending its bytes again.
    """
    product, row = await version_for_writing(session, principal, slug, version, shared=True)
    require_draft(row)
    path = check_path(path)
    media_type = check_media_type(media_type)
    existing = await session.scalar(
        select(VersionFile).where(VersionFile.version_id == row.id, VersionFile.path_key == path_key(path))
    )
    if existing is not None and existing.path != path:
        raise conflict(
            f"'{path}' and '{existing.path}' of version {version} differ only in case or Unicode form: on a "
            "buyer's disk one would overwrite the other; rename one",
            "path-exists",
        )
    if existing is not None:
        if existing.status == "pending" and (existing.sha256, existing.size) == (sha256, size):
            return await _plan_urls(store, existing, stored=await _org_stores(session, product.org_id, existing))
        raise conflict(f"'{path}' is already in version {version}; delete it first to replace it", "path-exists")
    file = VersionFile(id=uuid.uuid4(), version_id=row.id, path=path, size=size, sha256=sha256, media_type=media_type)
    stored = await _org_stores(session, product.org_id, file)
    if size > MIN_PART_SIZE:
        file.part_size = part_size_for(size)
        file.upload_id = await store.create_multipart(staging_key(file.id), media_type)
    session.add(file)
    try:
        await session.flush()
    except IntegrityError:  # the same path, registered concurrently
        raise conflict(f"'{path}' is already in version {version}", "path-exists") from None
    await audit.record(
        session,
        context,
        "file.upload_started",
        org_id=product.org_id,
        target_type="file",
        target_id=file.id,
        details={"version": f"{slug}@{version}", "path": path, "size": size, "sha256": sha256},
    )
    return await _plan_urls(store, file, stored=stored)


async def _reject(
    session: AsyncSession,
    context: AuditContext,
    store: ObjectStore,
    file: VersionFile,
    org_id: uuid.UUID,
    version_ref: str,
    error: ProblemError,
) -> CommitThenRaise:
    """Delete the uploaded bytes and the file, record why, and answer with ``error`` once committed."""
    await store.delete(staging_key(file.id))
    await session.delete(file)
    await session.flush()
    await audit.record(
        session,
        context,
        "file.rejected",
        org_id=org_id,
        target_type="file",
        target_id=file.id,
        details={"version": version_ref, "path": file.path, "reason": error.type},
    )
    return CommitThenRaise(error)


async def complete_upload(
    session: AsyncSession,
    context: AuditContext,
    principal: Principal,
    store: ObjectStore,
    slug: str,
    version: str,
    file_id: uuid.UUID,
    *,
    parts: list[tuple[int, str]] | None,
) -> VersionFile:
    product, row = await version_for_writing(session, principal, slug, version, shared=True)
    file = await session.scalar(
        select(VersionFile).where(VersionFile.id == file_id, VersionFile.version_id == row.id).with_for_update()
    )
    if file is None:
        raise not_found("file")
    if file.status == "verified":
        return file
    require_draft(row)
    key = staging_key(file.id)
    if not parts and await _completes_from_store(session, store, product.org_id, file):
        return await _verified(session, context, slug, version, file, product.org_id, reused=True)
    if file.upload_id is not None:
        if not parts:
            raise invalid("parts", "a multipart upload is completed with the part numbers and ETags of its parts")
        expected = max(1, math.ceil(file.size / (file.part_size or MIN_PART_SIZE)))
        numbers = sorted(number for number, _ in parts)
        if numbers != list(range(1, expected + 1)):
            raise invalid("parts", f"expected parts 1..{expected}, each once")
        if await store.size_of(key) is None:
            try:
                await store.complete_multipart(key, file.upload_id, parts)
            except ObjectRefused as exc:
                raise ProblemError(
                    422,
                    "upload-incomplete",
                    "Upload incomplete",
                    f"the object store refused to assemble the parts ({exc}); upload every part, then complete",
                ) from None
    staged: tuple[int, str] | None
    assembled = await store.size_of(key) if file.upload_id is not None else None
    if assembled is not None and assembled != file.size:
        staged = (assembled, "")  # assembled at the wrong size: refused without reading it
    else:
        staged = await store.sha256_of(key)
    if staged is None:
        raise ProblemError(
            409, "upload-missing", "Nothing uploaded yet", "upload the bytes to the URL of the plan, then complete"
        )
    stored_size, digest = staged
    if stored_size != file.size:
        raise await _reject(
            session,
            context,
            store,
            file,
            product.org_id,
            f"{slug}@{version}",
            ProblemError(
                422,
                "size-mismatch",
                "Size mismatch",
                f"declared {file.size} bytes but {stored_size} were uploaded; the upload was discarded",
            ),
        )
    if digest != file.sha256:
        raise await _reject(
            session,
            context,
            store,
            file,
            product.org_id,
            f"{slug}@{version}",
            ProblemError(
                422,
                "checksum-mismatch",
                "Checksum mismatch",
                f"declared sha256 {file.sha256} but the uploaded bytes hash to {digest}; the upload was discarded",
            ),
        )
    await _store_blob(session, store, key, file)
    return await _verified(session, context, slug, version, file, product.org_id, reused=False)


async def _completes_from_store(
    session: AsyncSession, store: ObjectStore, org_id: uuid.UUID, file: VersionFile
) -> bool:
    """Nothing was uploaded, and the org already stores this content (its blob is in the object store)."""
    if not await _org_stores(session, org_id, file):
        return False
    if file.upload_id is None and await store.size_of(staging_key(file.id)) is not None:
        return False
    if await store.size_of(blob_key(file.sha256)) != file.size:
        return False
    if file.upload_id is not None:
        await store.abort_multipart(staging_key(file.id), file.upload_id)
    return True


async def _verified(
    session: AsyncSession,
    context: AuditContext,
    slug: str,
    version: str,
    file: VersionFile,
    org_id: uuid.UUID,
    *,
    reused: bool,
) -> VersionFile:
    file.status, file.verified_at, file.upload_id = "verified", utcnow(), None
    await session.flush()
    details: dict[str, object] = {"version": f"{slug}@{version}", "path": file.path, "size": file.size}
    details |= {"sha256": file.sha256, "reused": reused}
    await audit.record(
        session, context, "file.verified", org_id=org_id, target_type="file", target_id=file.id, details=details
    )
    await triggers.profile_when_verified(session, file.version_id)
    return file


async def _store_blob(session: AsyncSession, store: ObjectStore, staged: str, file: VersionFile) -> None:
    """Keep the content once under its digest; an existing blob is never overwritten."""
    inserted = await session.scalar(
        insert(Blob)
        .values(sha256=file.sha256, size=file.size)
        .on_conflict_do_nothing(index_elements=[Blob.sha256])
        .returning(Blob.sha256)
    )
    await keep_blob(store, staged, file, new=inserted is not None)


async def keep_blob(store: ObjectStore, staged: str, file: VersionFile, *, new: bool) -> None:
    """A staged upload becomes the content-addressed blob (unless that exists already), then goes."""
    target = blob_key(file.sha256)
    if new or await store.size_of(target) is None:
        await store.copy(staged, target)
    await store.delete(staged)


async def delete_file(
    session: AsyncSession,
    context: AuditContext,
    principal: Principal,
    store: ObjectStore,
    slug: str,
    version: str,
    file_id: uuid.UUID,
) -> None:
    """Remove a file from a draft version (its blob stays for other versions; the janitor sweeps orphans)."""
    product, row = await version_for_writing(session, principal, slug, version, shared=True)
    require_draft(row)
    file = await session.scalar(select(VersionFile).where(VersionFile.id == file_id, VersionFile.version_id == row.id))
    if file is None:
        raise not_found("file")
    if file.upload_id is not None:
        await store.abort_multipart(staging_key(file.id), file.upload_id)
    await store.delete(staging_key(file.id))
    await session.delete(file)
    await session.flush()
    await audit.record(
        session,
        context,
        "file.deleted",
        org_id=product.org_id,
        target_type="file",
        target_id=file.id,
        details={"version": f"{slug}@{version}", "path": file.path},
    )
