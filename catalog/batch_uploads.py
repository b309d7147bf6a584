"""Uploads of many files at once: one request plans up to 1,000 files (``catalog.schemas.MAX_BATCH``), one
completes them.

Pushing a corpus of many small files one file at a time costs a plan, a PUT and a completion per file, and the
completion several more trips to the object store (read back, copy to the content-addressed key, delete the
staged copy). Here a batch plans and completes many files in one transaction each, and, when the
object store enforces the SHA-256 signed into a presigned URL (``ObjectStore.checks_puts``), a file up to
``MIN_PART_SIZE`` is PUT straight to its content-addressed key: its completion is one read of exactly the
object version the client uploaded (named by the ``x-amz-version-id`` the store answered the PUT with), and
nothing is copied or deleted.

Each item has its own outcome: a bad item (path, media type, checksum, missing upload) is reported with its
problem and changes nothing for the others; the batch as a whole is refused only for what concerns every item
(the version is not visible, not a draft, or the caller may not write to it). Every file still gets its audit
events (``file.upload_started``, ``file.verified`` or ``file.rejected``), all in the request's transaction.

What the plan says never depends on other organisations: ``stored`` only for content a verified file of the
caller's own organisation has, and a completion without an upload of its own counts only that content.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import BigInteger, String, Uuid, any_, bindparam, delete, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.selectable import TableValuedAlias
from sqlalchemy.types import TypeEngine

from app.audit import service as audit
from app.audit.service import AuditContext
from app.auth.principal import Principal
from app.db import utcnow
from app.errors import ProblemError, conflict, not_found
from app.objectstore import ObjectStore
from catalog.inspection import triggers
from catalog.models import Blob, Product, ProductVersion, VersionFile
from catalog.service import require_draft, version_for_writing
from catalog.uploads import (
    MIN_PART_SIZE,
    UPLOAD_URL_SECONDS,
    blob_key,
    check_media_type,
    check_path,
    keep_blob,
    staging_key,
)

# Object-store requests one batch runs at once.
STORE_CONCURRENCY = 16
# The object store stamps versions in whole seconds, by its own clock, which may be a little behind ours.
CLOCK_SLACK = dt.timedelta(seconds=5)

T = TypeVar("T")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True, slots=True)
class FileSpec:
    path: str
    size: int
    sha256: str
    media_type: str


@dataclasses.dataclass(slots=True)
class PlanItem:
    """``status``: ``upload`` (PUT to ``url``, then complete), ``stored`` (the organisation stores this content:
    complete without sending it), ``verified`` (already in the version with this content) or ``refused``."""

    path: str
    status: str
    file: VersionFile | None = None
    url: str | None = None
    direct: bool = False  # the URL is the content-addressed key: completing names the version the PUT created
    expires_at: dt.datetime | None = None
    problem: ProblemError | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class CompleteSpec:
    file_id: uuid.UUID
    version_id: str | None = None  # the object version a direct PUT created (its ``x-amz-version-id``)


@dataclasses.dataclass(slots=True)
class CompleteItem:
    file_id: uuid.UUID
    file: VersionFile | None = None
    problem: ProblemError | None = None


async def _each(items: Sequence[T], fn: Callable[[T], Awaitable[R]]) -> list[R]:
    """``fn`` of every item, at most ``STORE_CONCURRENCY`` at once, in order."""
    slots = asyncio.Semaphore(STORE_CONCURRENCY)

    async def one(item: T) -> R:
        async with slots:
            return await fn(item)

    return list(await asyncio.gather(*(one(item) for item in items)))


async def _stored_by_org(session: AsyncSession, org_id: uuid.UUID, keys: set[tuple[str, int]]) -> set[tuple[str, int]]:
    """Which (sha256, size) a verified file of the organisation's own versions has: never another org's.

    The files with these digests are found first, by the digest's index, and only then checked for their
    organisation: starting from the organisation's versions scanned every file of each, so a push slowed down
    with every batch the version already held."""
    if not keys:
        return set()
    candidates = (
        select(VersionFile.version_id, VersionFile.sha256, VersionFile.size)
        .where(
            VersionFile.sha256 == any_(bindparam("digests", sorted({sha for sha, _ in keys}), type_=ARRAY(String))),
            VersionFile.status == "verified",
        )
        .cte("candidates")
        .prefix_with("MATERIALIZED")
    )
    rows = await session.execute(
        select(candidates.c.sha256, candidates.c.size)
        .join(ProductVersion, ProductVersion.id == candidates.c.version_id)
        .join(Product, Product.id == ProductVersion.product_id)
        .where(Product.org_id == org_id)
        .distinct()
    )
    return {(sha, size) for sha, size in rows if (sha, size) in keys}


def _listed(name: str, values: Sequence[Any], kind: type[TypeEngine[Any]]) -> TableValuedAlias:
    """The values as a table of one column ``name`` (``unnest`` of one array parameter), to join rather than to
    compare with ``IN``. With hundreds of values, a version that grew faster than the table's statistics got a plan
    that scanned all its files and compared each with every value: a push slowed down with every batch."""
    return func.unnest(bindparam(f"{name}s", list(values), type_=ARRAY(kind))).table_valued(name).render_derived()


# One statement over two arrays, compiled once: a VALUES row per blob was compiled anew for every batch size.
_BLOB_ROWS = (
    func.unnest(bindparam("sha256s", type_=ARRAY(String)), bindparam("sizes", type_=ARRAY(BigInteger)))
    .table_valued("sha256", "size")
    .render_derived()
)
_NEW_BLOBS = (
    insert(Blob)
    .from_select([Blob.sha256, Blob.size], select(_BLOB_ROWS.c.sha256, _BLOB_ROWS.c.size))
    .on_conflict_do_nothing(index_elements=[Blob.sha256])
    .returning(Blob.sha256)
)


def _checked(spec: FileSpec) -> ProblemError | None:
    try:
        check_path(spec.path)
        check_media_type(spec.media_type)
    except ProblemError as problem:
        return problem
    if spec.size > MIN_PART_SIZE:
        return ProblemError(
            422,
            "too-large-for-batch",
            "Too large for a batch",
            f"files above {MIN_PART_SIZE} bytes are uploaded in parts: plan them with POST …/files",
        )
    return None


async def plan_batch(
    session: AsyncSession,
    context: AuditContext,
    principal: Principal,
    store: ObjectStore,
    slug: str,
    version: str,
    specs: Sequence[FileSpec],
) -> list[PlanItem]:
    """Register the files and hand out where to upload each; a pending file with the same content is resumed
    (a fresh URL), one already verified with the same content is reported as such."""
    product, row = await version_for_writing(session, principal, slug, version, shared=True)
    require_draft(row)
    items: list[PlanItem] = []
    seen: set[str] = set()
    for spec in specs:
        problem = _checked(spec)
        if problem is None and spec.path in seen:
            problem = conflict(f"'{spec.path}' is named twice in this batch", "path-exists")
        seen.add(spec.path)
        items.append(PlanItem(spec.path, "refused" if problem else "upload", problem=problem))
    wanted = {spec.path: spec for spec, item in zip(specs, items, strict=True) if item.problem is None}
    paths = _listed("path", list(wanted), String)
    existing = {
        f.path: f
        for f in await session.scalars(
            select(VersionFile).join(paths, VersionFile.path == paths.c.path).where(VersionFile.version_id == row.id)
        )
    }
    new: list[VersionFile] = []
    for item in items:
        wanted_spec = wanted.get(item.path)
        if item.problem is not None or wanted_spec is None:
            continue
        spec = wanted_spec
        there = existing.get(item.path)
        if there is None:
            item.file = VersionFile(
                id=uuid.uuid4(),
                version_id=row.id,
                path=spec.path,
                size=spec.size,
                sha256=spec.sha256,
                media_type=spec.media_type,
            )
            new.append(item.file)
        elif (there.sha256, there.size) != (spec.sha256, spec.size):
            item.status = "refused"
            item.problem = conflict(
                f"'{spec.path}' is already in version {version}; delete it first to replace it", "path-exists"
            )
        else:
            item.file = there
            item.status = "verified" if there.status == "verified" else "upload"
    if new:
        session.add_all(new)
        try:
            await session.flush()
        except IntegrityError:  # a path registered concurrently: the client plans again
            raise conflict(f"a path of this batch was added to version {version} meanwhile", "path-exists") from None
        await audit.record_many(
            session,
            context,
            [
                audit.Event(
                    "file.upload_started",
                    org_id=product.org_id,
                    target_type="file",
                    target_id=f.id,
                    details={"version": f"{slug}@{version}", "path": f.path, "size": f.size, "sha256": f.sha256},
                )
                for f in new
            ],
        )
    todo = [item for item in items if item.status == "upload" and item.file is not None]
    stored = await _stored_by_org(session, product.org_id, {(i.file.sha256, i.file.size) for i in todo if i.file})
    direct = bool(todo) and await store.checks_puts()
    expires_at = utcnow() + dt.timedelta(seconds=UPLOAD_URL_SECONDS)
    for item in todo:
        file = item.file
        assert file is not None
        item.expires_at = expires_at
        if (file.sha256, file.size) in stored:
            item.status = "stored"
        elif direct:
            item.direct = True
            item.url = await store.presigned_checked_put(blob_key(file.sha256), file.sha256, UPLOAD_URL_SECONDS)
        else:
            item.url = await store.presigned_put(staging_key(file.id), UPLOAD_URL_SECONDS)
    return items


def _missing() -> ProblemError:
    return ProblemError(
        409, "upload-missing", "Nothing uploaded yet", "upload the bytes to the URL of the plan, then complete"
    )


async def complete_batch(
    session: AsyncSession,
    context: AuditContext,
    principal: Principal,
    store: ObjectStore,
    slug: str,
    version: str,
    specs: Sequence[CompleteSpec],
) -> list[CompleteItem]:
    """Verify size and SHA-256 of each file's upload and count the good ones, in one transaction.

    Per item: already verified → verified again (idempotent); named an object version (a direct PUT) → that
    version is read once and must match; no upload of its own but the organisation stores the content → verified
    without bytes; else its staged upload (``POST …/files`` plans) is verified as ``…/complete`` does. A mismatch
    discards that upload and the pending file (``file.rejected``); a missing upload changes nothing."""
    product, row = await version_for_writing(session, principal, slug, version, shared=True)
    ids = list(dict.fromkeys(spec.file_id for spec in specs))
    listed = _listed("id", ids, Uuid)
    files = {
        f.id: f
        for f in await session.scalars(
            select(VersionFile)
            .join(listed, VersionFile.id == listed.c.id)
            .where(VersionFile.version_id == row.id)
            .with_for_update(of=VersionFile)
        )
    }
    items = [CompleteItem(spec.file_id) for spec in specs]
    todo: list[tuple[CompleteItem, VersionFile, str | None]] = []
    named: set[uuid.UUID] = set()
    for spec, item in zip(specs, items, strict=True):
        file = files.get(spec.file_id)
        if file is None:
            item.problem = not_found(f"file {spec.file_id}")
        elif file.status == "verified":
            item.file = file
        elif file.upload_id is not None:
            item.problem = ProblemError(
                422,
                "multipart-upload",
                "Multipart upload",
                "a file uploaded in parts is completed with its parts: POST …/files/{file_id}/complete",
            )
        elif spec.file_id in named:
            item.problem = conflict(f"file {spec.file_id} is named twice in this batch", "duplicate-item")
        else:
            named.add(spec.file_id)
            todo.append((item, file, spec.version_id))
    if not todo:
        return items
    require_draft(row)
    # Blob rows first: a janitor sweeping an orphan blob object holds its row while it deletes, so a read after
    # this insert sees what stays.
    contents = sorted({(f.sha256, f.size) for _, f, _ in todo})
    # On the session's connection: the ORM would take a dict of parameters to an insert for a row.
    inserted = await (await session.connection()).execute(
        _NEW_BLOBS, {"sha256s": [sha for sha, _ in contents], "sizes": [size for _, size in contents]}
    )
    new_blobs = set(inserted.scalars())
    stored = await _stored_by_org(session, product.org_id, {(f.sha256, f.size) for _, f, v in todo if v is None})
    named_versions = [(file, version_id) for _, file, version_id in todo if version_id is not None]
    digests = await store.version_digests([(blob_key(file.sha256), version_id) for file, version_id in named_versions])
    found_by_file = {file.id: found for (file, _), found in zip(named_versions, digests, strict=True)}

    async def check(entry: tuple[CompleteItem, VersionFile, str | None]) -> tuple[tuple[int, str] | None, bool]:
        """(size, sha256) of what was uploaded or None, and whether nothing was uploaded (stored content)."""
        _, file, version_id = entry
        if version_id is not None:
            found = found_by_file[file.id]
            # Only a version written since the file was planned is its upload: naming an earlier one (another
            # organisation's, say) proves nothing about what this caller holds.
            if found is None or found[2] < file.created_at - CLOCK_SLACK:
                return None, False
            return found[:2], False
        if (file.sha256, file.size) in stored and await store.size_of(blob_key(file.sha256)) == file.size:
            return (file.size, file.sha256), True
        return await store.sha256_of(staging_key(file.id)), False

    outcomes = await _each(todo, check)
    verified: list[tuple[VersionFile, bool]] = []
    rejected: list[tuple[VersionFile, str]] = []
    kept: set[str] = set()  # digests with a verified direct version in this batch
    cleanup: list[Callable[[], Awaitable[None]]] = []
    for (item, file, version_id), (staged, reused) in zip(todo, outcomes, strict=True):
        if staged is None:
            item.problem = _missing()
            continue
        size, digest = staged
        problem = _mismatch(file, size, digest)
        key = blob_key(file.sha256) if version_id is not None else staging_key(file.id)
        if problem is not None:
            item.problem = problem
            rejected.append((file, problem.type))
            if version_id is not None:
                cleanup.append(partial(store.remove_version, key, version_id))
            else:
                cleanup.append(partial(store.delete, key))
            continue
        item.file = file
        verified.append((file, reused))
        if version_id is not None:
            # Identical content is kept once: the first new version of a new blob stays, any other goes.
            if file.sha256 in new_blobs and file.sha256 not in kept:
                kept.add(file.sha256)
            else:
                cleanup.append(partial(store.drop_duplicate, key, version_id))
        elif not reused:
            cleanup.append(partial(keep_blob, store, key, file, new=file.sha256 in new_blobs))
    await _each(cleanup, lambda fn: fn())
    unused = new_blobs - {f.sha256 for f, _ in verified}
    if unused:
        await session.execute(delete(Blob).where(Blob.sha256.in_(unused)))
    await _record(session, context, slug, version, product.org_id, verified, rejected)
    return items


def _mismatch(file: VersionFile, size: int, digest: str) -> ProblemError | None:
    if size != file.size:
        return ProblemError(
            422,
            "size-mismatch",
            "Size mismatch",
            f"declared {file.size} bytes but {size} were uploaded; the upload was discarded",
        )
    if digest != file.sha256:
        return ProblemError(
            422,
            "checksum-mismatch",
            "Checksum mismatch",
            f"declared sha256 {file.sha256} but the uploaded bytes hash to {digest}; the upload was discarded",
        )
    return None


async def _record(
    session: AsyncSession,
    context: AuditContext,
    slug: str,
    version: str,
    org_id: uuid.UUID,
    verified: list[tuple[VersionFile, bool]],
    rejected: list[tuple[VersionFile, str]],
) -> None:
    if verified:
        # One statement for the batch (the files loaded in the session take the values too), not one a file.
        listed = _listed("id", [file.id for file, _ in verified], Uuid)
        await session.execute(
            update(VersionFile)
            .where(VersionFile.id == listed.c.id)
            .values(status="verified", verified_at=utcnow(), upload_id=None)
            .execution_options(synchronize_session="fetch")
        )
    for file, _ in rejected:
        await session.delete(file)
    await session.flush()
    events = [
        audit.Event(
            "file.verified",
            org_id=org_id,
            target_type="file",
            target_id=file.id,
            details={
                "version": f"{slug}@{version}",
                "path": file.path,
                "size": file.size,
                "sha256": file.sha256,
                "reused": reused,
            },
        )
        for file, reused in verified
    ]
    events += [
        audit.Event(
            "file.rejected",
            org_id=org_id,
            target_type="file",
            target_id=file.id,
            details={"path": file.path, "reason": why},
        )
        for file, why in rejected
    ]
    await audit.record_many(session, context, events)
    if verified:
        await triggers.profile_when_verified(session, verified[0][0].version_id)
