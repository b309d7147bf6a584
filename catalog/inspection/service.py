"""Inspection services: the version profile, the masked preview, sample reviews and the opt-out evidence."""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from typing import Any

import anyio
import jwt
import msgspec
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import access
from app.audit import service as audit
from app.audit.service import AuditContext
from app.auth.keys import ALGORITHM, KeyRing
from app.auth.principal import Principal
from app.db import utcnow
from app.errors import ProblemError, conflict, forbidden, invalid, not_found
from app.objectstore import ObjectStore
from catalog.inspection import sampling
from catalog.inspection.models import THRESHOLDS, FileProfileRow, OptOutEvidence, SampleItem, SampleReview
from catalog.inspection.schemas import (
    EvidenceOut,
    FileProfileOut,
    ProfileOut,
    RobotsOut,
    SampleDrawnOut,
    SampleItemOut,
    SampleOut,
    TdmRepOut,
    Totals,
    Verdict,
)
from catalog.inspection.tasks import range_reader
from catalog.models import Product, ProductVersion, VersionFile
from catalog.service import version_for_reading
from catalog.uploads import blob_key

PREVIEW_LIMIT = 20
SAMPLE_JWS_TYPE = "corpora-sample-review+jwt"


def _file_status(row: FileProfileRow | None) -> str:
    if row is None:
        return "pending"
    if row.finished_at is not None:
        return "done"
    if row.failed_at is not None:
        return "failed"
    return "running" if row.started_at is not None else "pending"


async def version_profile(session: AsyncSession, principal: Principal | None, slug: str, version: str) -> ProfileOut:
    _, _, row, _ = await version_for_reading(session, principal, slug, version)
    found = await session.execute(
        select(VersionFile, FileProfileRow)
        .outerjoin(FileProfileRow, FileProfileRow.file_id == VersionFile.id)
        .where(VersionFile.version_id == row.id, VersionFile.status == "verified")
        .order_by(VersionFile.path)
    )
    files: list[FileProfileOut] = []
    for file, profile_row in found:
        status = _file_status(profile_row)
        if status == "done" and profile_row is not None and profile_row.profile is not None:
            out = msgspec.convert({**profile_row.profile, "status": "done"}, FileProfileOut)
        else:
            out = FileProfileOut(path=file.path, status=status, bytes=file.size)  # type: ignore[arg-type]
            out.error = profile_row.error if profile_row is not None else None
        files.append(out)
    statuses = {f.status for f in files}
    overall = next((s for s in ("failed", "running", "pending") if s in statuses), "done" if files else "pending")
    pii: dict[str, int] = {}
    for f in files:
        for kind, count in f.pii.items():
            pii[kind] = pii.get(kind, 0) + count
    totals = Totals(
        records=sum(f.records or 0 for f in files),
        tokens=sum(f.tokens or 0 for f in files),
        bytes=sum(f.bytes for f in files),
        pii=pii,
    )
    return ProfileOut(product=slug, version=version, status=overall, files=files, totals=totals)  # type: ignore[arg-type]


async def _verified_file(session: AsyncSession, version_id: uuid.UUID, path: str) -> VersionFile:
    file = await session.scalar(
        select(VersionFile).where(
            VersionFile.version_id == version_id, VersionFile.path == path, VersionFile.status == "verified"
        )
    )
    if file is None:
        raise not_found(f"file '{path}'")
    return file


async def preview(
    session: AsyncSession,
    context: AuditContext,
    principal: Principal,
    store: ObjectStore,
    slug: str,
    version: str,
    path: str,
    limit: int,
) -> tuple[str, list[Any]]:
    """The first ``limit`` records of a file with personal data masked, when the provider enabled previews.
    Charged to no quota; recorded as ``version.previewed``."""
    product, _, row, role = await version_for_reading(session, principal, slug, version)
    if not product.preview and role is None and not access.platform_allows(principal, "catalog.read"):
        raise not_found(f"a preview of '{slug}'")  # the provider offers none: there is nothing to see
    file = await _verified_file(session, row.id, path)
    reader = range_reader(store, blob_key(file.sha256), file.size)
    fmt, records = await anyio.to_thread.run_sync(sampling.first_records, reader, file.path, limit)
    await audit.record(
        session,
        context,
        "version.previewed",
        org_id=product.org_id,
        target_type="version",
        target_id=f"{slug}@{version}",
        details={"path": path, "records": len(records)},
    )
    return fmt, [sampling.masked(r) for r in records]


async def _version_for_reviewer(
    session: AsyncSession, principal: Principal, slug: str, version: str
) -> tuple[Product, ProductVersion]:
    product = await session.scalar(select(Product).where(Product.slug == slug))
    row = None
    if product is not None:
        row = await session.scalar(
            select(ProductVersion).where(ProductVersion.product_id == product.id, ProductVersion.version == version)
        )
    if product is None or row is None:
        raise not_found(f"version {version} of '{slug}'")
    if await access.role_in(session, principal, product.org_id) is not None:
        raise forbidden("a reviewer never reviews a version of an organisation they belong to")
    return product, row


def _source_file(file: VersionFile, profile: dict[str, Any]) -> sampling.SourceFile:
    offsets = tuple((int(record), int(offset)) for record, offset in profile.get("record_offsets", ()))
    return sampling.SourceFile(file.path, file.sha256, int(profile.get("records", 0)), offsets)


async def draw_sample(
    session: AsyncSession,
    context: AuditContext,
    principal: Principal,
    store: ObjectStore,
    slug: str,
    version: str,
    *,
    size: int,
    kind: str,
    seed: int | None,
) -> SampleDrawnOut:
    product, row = await _version_for_reviewer(session, principal, slug, version)
    found = (
        await session.execute(
            select(VersionFile, FileProfileRow)
            .outerjoin(FileProfileRow, FileProfileRow.file_id == VersionFile.id)
            .where(VersionFile.version_id == row.id, VersionFile.status == "verified")
            .order_by(VersionFile.path)
        )
    ).all()
    if not found or any(p is None or p.finished_at is None for _, p in found):
        raise conflict("the version's files are not all profiled yet; draw the sample once they are", "profile-pending")
    files = [(f, _source_file(f, p.profile or {})) for f, p in found]
    total = sum(s.records for _, s in files)
    if size > total:
        raise invalid("size", f"the version holds {total} records")
    seed = secrets.randbelow(2**63) if seed is None else seed
    sizes = {s.sha256: f.size for f, s in files}

    def open_file(source: sampling.SourceFile) -> Any:
        return range_reader(store, blob_key(source.sha256), sizes[source.sha256])

    drawn = await anyio.to_thread.run_sync(sampling.draw, [s for _, s in files], size, seed, open_file)
    sample = SampleReview(
        version_id=row.id, kind=kind, size=size, seed=seed, threshold=THRESHOLDS[kind], drawn_by=principal.user_id
    )
    session.add(sample)
    await session.flush()
    session.add_all(
        SampleItem(
            sample_id=sample.id,
            index=d.index,
            path=d.path,
            sha256=d.sha256,
            record_index=d.record_index,
            record_sha256=d.record_sha256,
        )
        for d in drawn
    )
    await session.flush()
    await audit.record(
        session,
        context,
        "sample.drawn",
        org_id=product.org_id,
        target_type="sample",
        target_id=sample.id,
        details={"version": f"{slug}@{version}", "kind": kind, "size": size, "seed": seed},
    )
    return SampleDrawnOut(
        id=sample.id,
        product=slug,
        version=version,
        kind=kind,
        size=size,
        seed=seed,
        threshold=sample.threshold,
        items=[SampleItemOut(d.index, d.path, d.record_index, d.record) for d in drawn],
    )


async def _sample(
    session: AsyncSession, principal: Principal, sample_id: uuid.UUID, *, lock: bool = False
) -> tuple[SampleReview, Product, ProductVersion]:
    query = (
        select(SampleReview, Product, ProductVersion)
        .join(ProductVersion, ProductVersion.id == SampleReview.version_id)
        .join(Product, Product.id == ProductVersion.product_id)
        .where(SampleReview.id == sample_id)
    )
    found = (await session.execute(query.with_for_update(of=SampleReview) if lock else query)).one_or_none()
    if found is None:
        raise not_found("sample")
    sample, product, version = found
    role = await access.role_in(session, principal, product.org_id)
    if role is None and not access.platform_allows(principal, "samples.read"):
        raise not_found("sample")
    return sample, product, version


async def sample_out(
    session: AsyncSession, sample: SampleReview, product: Product, version: ProductVersion
) -> SampleOut:
    judged = await session.scalar(
        select(func.count()).where(SampleItem.sample_id == sample.id, SampleItem.judged_at.is_not(None))
    )
    return SampleOut(
        id=sample.id,
        product=product.slug,
        version=version.version,
        kind=sample.kind,
        size=sample.size,
        seed=sample.seed,
        judged=judged or 0,
        pass_rate=sample.pass_rate,
        threshold=sample.threshold,
        passed=sample.passed,
        created_at=sample.created_at,
        finished_at=sample.finished_at,
        record=sample.jws,
    )


async def read_sample(session: AsyncSession, principal: Principal, sample_id: uuid.UUID) -> SampleOut:
    return await sample_out(session, *await _sample(session, principal, sample_id))


def _timestamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


async def judge(
    session: AsyncSession,
    context: AuditContext,
    principal: Principal,
    keyring: KeyRing,
    issuer: str,
    sample_id: uuid.UUID,
    verdicts: list[Verdict],
) -> SampleOut:
    """Record verdicts (a later verdict for an item replaces an earlier one); once every item is judged, the
    result is computed and signed, and the sample is closed."""
    sample, product, version = await _sample(session, principal, sample_id, lock=True)
    if await access.role_in(session, principal, product.org_id) is not None:
        raise forbidden("a reviewer never reviews a version of an organisation they belong to")
    if sample.finished_at is not None:
        raise conflict("every item of this sample is judged and its result signed", "sample-finished")
    for verdict in verdicts:
        if verdict.index >= sample.size:
            raise invalid("verdicts", f"index {verdict.index} is not in the sample (0 to {sample.size - 1})")
        if not verdict.ok and verdict.category is None:
            raise invalid("verdicts", f"item {verdict.index} is not ok: name the category of the problem")
    now = utcnow()
    for verdict in verdicts:
        await session.execute(
            update(SampleItem)
            .where(SampleItem.sample_id == sample.id, SampleItem.index == verdict.index)
            .values(ok=verdict.ok, category=None if verdict.ok else verdict.category, judged_at=now)
        )
    await audit.record(
        session,
        context,
        "sample.judged",
        org_id=product.org_id,
        target_type="sample",
        target_id=sample.id,
        details={
            "version": f"{product.slug}@{version.version}",
            "verdicts": len(verdicts),
            "not_ok": sum(not v.ok for v in verdicts),
        },
    )
    items = (
        await session.scalars(select(SampleItem).where(SampleItem.sample_id == sample.id).order_by(SampleItem.index))
    ).all()
    if all(item.judged_at is not None for item in items):
        passing = sum(1 for item in items if item.ok)
        sample.pass_rate = round(passing / sample.size, 6)
        sample.passed = passing >= sample.threshold * sample.size
        sample.finished_at = now
        sample.jws = sign_result(keyring, issuer, sample, product, version, items, principal.user_id)
        await session.flush()
        await audit.record(
            session,
            context,
            "sample.finished",
            org_id=product.org_id,
            target_type="sample",
            target_id=sample.id,
            details={
                "version": f"{product.slug}@{version.version}",
                "pass_rate": sample.pass_rate,
                "passed": sample.passed,
                "threshold": sample.threshold,
            },
        )
    return await sample_out(session, sample, product, version)


def sign_result(
    keyring: KeyRing,
    issuer: str,
    sample: SampleReview,
    product: Product,
    version: ProductVersion,
    items: Any,
    reviewer: uuid.UUID,
) -> str:
    assert sample.finished_at is not None
    key = keyring.active
    payload = {
        "iss": issuer,
        "sample": str(sample.id),
        "product": product.slug,
        "version": version.version,
        "kind": sample.kind,
        "size": sample.size,
        "seed": sample.seed,
        "threshold": sample.threshold,
        "pass_rate": sample.pass_rate,
        "passed": sample.passed,
        "reviewer": str(reviewer),
        "finished_at": _timestamp(sample.finished_at),
        "items": [
            {
                "index": i.index,
                "path": i.path,
                "sha256": i.sha256,
                "record_index": i.record_index,
                "record_sha256": i.record_sha256,
                "ok": i.ok,
                "category": i.category,
            }
            for i in items
        ],
    }
    return jwt.encode(payload, key.private, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": SAMPLE_JWS_TYPE})


async def require_passed_sample(session: AsyncSession, slug: str, version: str) -> None:
    """409 unless a sample review of the version passed (``CORPORA_REVIEW_REQUIRES_SAMPLE``)."""
    passed = await session.scalar(
        select(SampleReview.id)
        .join(ProductVersion, ProductVersion.id == SampleReview.version_id)
        .join(Product, Product.id == ProductVersion.product_id)
        .where(Product.slug == slug, ProductVersion.version == version, SampleReview.passed.is_(True))
        .limit(1)
    )
    if passed is None:
        raise ProblemError(409, "sample-required", "Conflict", "approval needs a passed sample review of this version")


def _declared(provenance: dict[str, Any] | None, index: int) -> Any:
    sources = (provenance or {}).get("sources", [])
    return sources[index].get("opt_out_evidence") if index < len(sources) else None


async def opt_out_evidence(
    session: AsyncSession, principal: Principal | None, slug: str, version: str
) -> list[EvidenceOut]:
    _, _, row, _ = await version_for_reading(session, principal, slug, version)
    rows = (
        await session.scalars(
            select(OptOutEvidence).where(OptOutEvidence.version_id == row.id).order_by(OptOutEvidence.source_index)
        )
    ).all()
    return [
        EvidenceOut(
            source=e.source,
            url=e.url,
            fetched_at=e.fetched_at,
            robots_txt=RobotsOut(e.robots_status, e.robots_sha256, list(e.robots_disallows)),
            tdmrep=TdmRepOut(e.tdmrep_status, e.tdmrep_sha256, e.tdm_reserved, e.tdm_header),
            reserved_for_ai=e.reserved_for_ai,
            declared=_declared(row.provenance, e.source_index),
            warning=(
                f"{e.url} reserves text and data mining or disallows AI crawlers; a declared crawl of it may not "
                "respect its rights holder's opt-out"
                if e.reserved_for_ai
                else None
            ),
            error=e.error,
        )
        for e in rows
    ]
