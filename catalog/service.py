"""Products and versions: creation, visibility, editing and the version lifecycle."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, or_, select, true, update
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app import pagination
from app.accounts import access
from app.accounts.models import Organization
from app.audit import service as audit
from app.audit.service import AuditContext
from app.auth.principal import Principal
from app.db import utcnow
from app.errors import ProblemError, conflict, forbidden, invalid, not_found
from app.notifications.events import VersionEvent
from app.notifications.models import EventType
from app.notifications.service import publish
from catalog import provenance_rules
from catalog.inspection import triggers
from catalog.models import SEMVER, Product, ProductVersion, VersionFile
from catalog.terms import product_terms

LICENCE_FOREIGN_KEY = "fk_product_versions_licence_id_licences"

# BCP 47 language tags as corpora use them: language, optional script, region and variants.
BCP47 = re.compile(
    r"^([a-zA-Z]{2,3})(-[a-zA-Z]{4})?(-(?:[a-zA-Z]{2}|\d{3}))?((?:-(?:[a-zA-Z\d]{5,8}|\d[a-zA-Z\d]{3}))*)$"
)


def normalise_language(tag: str) -> str:
    match = BCP47.match(tag)
    if match is None:
        raise invalid("languages", f"'{tag}' is not a BCP 47 language tag (for example en, zh-Hans, pt-BR)")
    language, script, region, variants = match.groups()
    out = language.lower()
    if script:
        out += "-" + script[1:].title()
    if region:
        out += "-" + region[1:].upper()
    return out + (variants or "").lower()


def _unknown_licence(exc: IntegrityError, licence_id: str | None) -> ProblemError | None:
    """The database refuses a licence id that is not in the licence catalogue (a foreign key)."""
    if LICENCE_FOREIGN_KEY in str(exc.orig):
        return invalid("licence_id", f"no licence '{licence_id}' in the catalogue; see GET /api/v1/licences")
    return None


def manifest_digest(files: Sequence[VersionFile]) -> str:
    """``sha256:`` of the canonical JSON manifest (path, size, sha256 of every file, sorted by path)."""
    entries = [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in sorted(files, key=lambda f: f.path)]
    encoded = json.dumps(entries, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return "sha256:" + hashlib.sha256(encoded).hexdigest()


# --- visibility -----------------------------------------------------------------------------------------


def visible_products(principal: Principal | None) -> ColumnElement[bool]:
    """Published products for everyone; drafts for their org's members and the platform's staff."""
    if principal is None:
        return Product.status == "published"
    if access.platform_allows(principal, "catalog.read"):
        return true()
    return or_(Product.status == "published", Product.org_id.in_(access.acting_org_ids(principal)))


def can_see_drafts(principal: Principal | None, product: Product, role: str | None) -> bool:
    return role is not None or access.platform_allows(principal, "catalog.read")


async def product_for_reading(
    session: AsyncSession, principal: Principal | None, slug: str
) -> tuple[Product, str, str | None]:
    """The product, its org slug and the caller's role in that org (``access.role_in``), in one statement; 404
    when not visible."""
    row = (
        await session.execute(
            select(Product, Organization.slug, access.role_column(principal, Product.org_id))
            .join(Organization, Organization.id == Product.org_id)
            .where(Product.slug == slug, visible_products(principal))
        )
    ).one_or_none()
    if row is None:
        raise not_found(f"product '{slug}'")
    return row[0], row[1], row[2]


async def product_for_writing(
    session: AsyncSession, principal: Principal, slug: str, *, lock: bool = False
) -> tuple[Product, str]:
    """The product if the caller may change it: 404 when not visible, 403 when visible but read-only."""
    product, org_slug, role = await product_for_reading(session, principal, slug)
    access.check_role(principal, role, "catalog.write", f"changing a product of '{org_slug}'")
    if lock:
        await session.execute(select(Product.id).where(Product.id == product.id).with_for_update())
    return product, org_slug


# --- products --------------------------------------------------------------------------------------------


async def create_product(
    session: AsyncSession, context: AuditContext, principal: Principal, *, org_slug: str, fields: dict[str, Any]
) -> tuple[Product, str]:
    org, _ = await access.org_for(session, principal, org_slug, "catalog.write", f"adding products to '{org_slug}'")
    if org.kind not in ("provider", "both"):
        raise forbidden(f"'{org_slug}' is a buyer organisation; only providers publish products")
    fields["languages"] = sorted({normalise_language(tag) for tag in fields["languages"]})
    fields["tags"] = list(dict.fromkeys(tag.strip().lower() for tag in fields["tags"] if tag.strip()))
    if await session.scalar(select(Product.id).where(Product.slug == fields["slug"])) is not None:
        raise conflict(f"the product slug '{fields['slug']}' is taken; choose another", "slug-taken")
    product = Product(
        org_id=org.id,
        status="draft",
        search_terms=product_terms(fields["title"], fields["summary"], fields["description"], fields["tags"]),
        **fields,
    )
    session.add(product)
    try:
        await session.flush()
    except IntegrityError:
        raise conflict(f"the product slug '{fields['slug']}' is taken; choose another", "slug-taken") from None
    await audit.record(
        session,
        context,
        "product.created",
        org_id=org.id,
        target_type="product",
        target_id=product.slug,
        details={"title": product.title, "access": product.access},
    )
    return product, org.slug


async def update_product(
    session: AsyncSession, context: AuditContext, principal: Principal, slug: str, changes: dict[str, Any]
) -> tuple[Product, str]:
    product, org_slug = await product_for_writing(session, principal, slug, lock=True)
    if "languages" in changes:
        changes["languages"] = sorted({normalise_language(tag) for tag in changes["languages"]})
    if "tags" in changes:
        changes["tags"] = list(dict.fromkeys(tag.strip().lower() for tag in changes["tags"] if tag.strip()))
    if changes.get("status") == "published" and product.status != "published":
        published = await session.scalar(
            select(ProductVersion.id).where(
                ProductVersion.product_id == product.id, ProductVersion.state.in_(("published", "deprecated"))
            )
        )
        if published is None:
            raise conflict("a product is listed once one of its versions is published", "no-published-version")
    for name, value in changes.items():
        setattr(product, name, value)
    product.search_terms = product_terms(product.title, product.summary, product.description, product.tags)
    product.updated_at = utcnow()
    await session.flush()
    await audit.record(
        session,
        context,
        "product.updated",
        org_id=product.org_id,
        target_type="product",
        target_id=product.slug,
        details={"fields": sorted(changes)},
    )
    return product, org_slug


# --- versions --------------------------------------------------------------------------------------------


# The columns that order versions are 32-bit integers.
MAX_VERSION_NUMBER = 2**31 - 1


def parse_semver(version: str) -> tuple[int, int, int, str | None]:
    match = SEMVER.match(version)
    if match is None:
        raise invalid("version", f"'{version}' is not a semantic version (MAJOR.MINOR.PATCH, e.g. 1.0.0)")
    major, minor, patch, prerelease, _build = match.groups()
    numbers = int(major), int(minor), int(patch)
    if max(numbers) > MAX_VERSION_NUMBER:
        raise invalid("version", f"'{version}': MAJOR, MINOR and PATCH may be at most {MAX_VERSION_NUMBER}")
    return *numbers, prerelease


async def create_version(
    session: AsyncSession,
    context: AuditContext,
    principal: Principal,
    slug: str,
    *,
    version: str,
    changelog: str,
    licence_id: str | None,
    provenance: dict[str, Any] | None,
) -> ProductVersion:
    product, _ = await product_for_writing(session, principal, slug, lock=True)
    major, minor, patch, prerelease = parse_semver(version)
    provenance = None if provenance is None else provenance_rules.validate_provenance(provenance)
    exists = await session.scalar(
        select(ProductVersion.id).where(ProductVersion.product_id == product.id, ProductVersion.version == version)
    )
    if exists is not None:
        raise conflict(f"version {version} of '{slug}' already exists; versions are never reused", "version-exists")
    row = ProductVersion(
        product_id=product.id,
        version=version,
        major=major,
        minor=minor,
        patch=patch,
        prerelease=prerelease,
        changelog=changelog,
        licence_id=licence_id,
        provenance=provenance,
        synthetic_fraction=(provenance or {}).get("synthetic_fraction"),
        state="draft",
    )
    session.add(row)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise _unknown_licence(exc, licence_id) or conflict(
            f"version {version} of '{slug}' already exists", "version-exists"
        ) from None
    await audit.record(
        session,
        context,
        "version.created",
        org_id=product.org_id,
        target_type="version",
        target_id=f"{slug}@{version}",
        details={"licence_id": licence_id},
    )
    await triggers.fetch_opt_out_evidence(session, row.id, provenance)
    return row


async def version_for_reading(
    session: AsyncSession, principal: Principal | None, slug: str, version: str
) -> tuple[Product, str, ProductVersion, str | None]:
    product, org_slug, role = await product_for_reading(session, principal, slug)
    row = await session.scalar(
        select(ProductVersion).where(ProductVersion.product_id == product.id, ProductVersion.version == version)
    )
    if row is None:
        raise not_found(f"version {version} of '{slug}'")
    if row.state in ("draft", "in_review") and not can_see_drafts(principal, product, role):
        raise not_found(f"version {version} of '{slug}'")
    return product, org_slug, row, role


async def version_for_writing(
    session: AsyncSession, principal: Principal, slug: str, version: str, *, shared: bool = False
) -> tuple[Product, ProductVersion]:
    """The version, locked against concurrent changes of its state. ``shared``: the caller only adds or changes
    the version's files, which may happen side by side but never while the version is being frozen."""
    product, _ = await product_for_writing(session, principal, slug)
    row = await session.scalar(
        select(ProductVersion)
        .where(ProductVersion.product_id == product.id, ProductVersion.version == version)
        .with_for_update(read=shared)
    )
    if row is None:
        raise not_found(f"version {version} of '{slug}'")
    return product, row


def require_draft(row: ProductVersion) -> None:
    if row.state != "draft":
        raise conflict(
            f"version {row.version} is {row.state}; published versions never change — create a new version",
            "version-frozen",
        )


async def update_version(
    session: AsyncSession,
    context: AuditContext,
    principal: Principal,
    slug: str,
    version: str,
    changes: dict[str, Any],
) -> ProductVersion:
    product, row = await version_for_writing(session, principal, slug, version)
    require_draft(row)
    if "provenance" in changes:
        changes["provenance"] = provenance_rules.validate_provenance(changes["provenance"])
        changes["synthetic_fraction"] = changes["provenance"].get("synthetic_fraction")
    for name, value in changes.items():
        setattr(row, name, value)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise _unknown_licence(exc, changes.get("licence_id")) or exc from None
    await audit.record(
        session,
        context,
        "version.updated",
        org_id=product.org_id,
        target_type="version",
        target_id=f"{slug}@{version}",
        details={"fields": sorted(changes)},
    )
    return row


async def version_files(session: AsyncSession, version_id: uuid.UUID, status: str | None = None) -> list[VersionFile]:
    query = select(VersionFile).where(VersionFile.version_id == version_id).order_by(VersionFile.path)
    if status is not None:
        query = query.where(VersionFile.status == status)
    return list((await session.scalars(query)).all())


async def publish_version(
    session: AsyncSession,
    context: AuditContext,
    principal: Principal,
    slug: str,
    version: str,
    *,
    review_required: bool,
) -> ProductVersion:
    """Freeze the version: to review, or straight to published when review is not required."""
    product, row = await version_for_writing(session, principal, slug, version)
    require_draft(row)
    files = await version_files(session, row.id)
    pending = [f.path for f in files if f.status != "verified"]
    if pending:
        raise conflict(
            f"{len(pending)} file(s) are not verified yet ({', '.join(pending[:5])}); complete or remove them first",
            "files-pending",
        )
    missing = [
        what
        for what, absent in [
            ("at least one verified file", not files),
            ("a licence", row.licence_id is None),
            ("provenance", row.provenance is None),
        ]
        if absent
    ]
    if missing:
        raise ProblemError(422, "version-incomplete", "Version incomplete", f"publishing needs {', '.join(missing)}")
    now = utcnow()
    row.manifest_digest = manifest_digest(files)
    row.submitted_at = now
    if review_required:
        row.state = "in_review"
    else:
        row.state, row.published_at = "published", now
        await _list_product(session, product)
    await session.flush()
    await audit.record(
        session,
        context,
        "version.published" if row.state == "published" else "version.submitted",
        org_id=product.org_id,
        target_type="version",
        target_id=f"{slug}@{version}",
        details={"manifest_digest": row.manifest_digest, "files": len(files)},
    )
    await publish(
        session,
        product.org_id,
        EventType.VERSION_PUBLISHED if row.state == "published" else EventType.VERSION_SUBMITTED,
        VersionEvent(product=slug, version=version, state=row.state, manifest_digest=row.manifest_digest),
    )
    return row


async def _list_product(session: AsyncSession, product: Product) -> None:
    if product.status == "draft":
        await session.execute(
            update(Product).where(Product.id == product.id).values(status="published", updated_at=utcnow())
        )
        product.status = "published"


async def review_version(
    session: AsyncSession,
    context: AuditContext,
    principal: Principal,
    slug: str,
    version: str,
    *,
    decision: str,
    reason: str,
) -> ProductVersion:
    """A platform reviewer approves (published) or rejects (back to draft, with the reason); never for an
    organisation the reviewer belongs to (separation of duties)."""
    product = await session.scalar(select(Product).where(Product.slug == slug))
    row = None
    if product is not None:
        row = await session.scalar(
            select(ProductVersion)
            .where(ProductVersion.product_id == product.id, ProductVersion.version == version)
            .with_for_update()
        )
    if product is None or row is None:
        raise not_found(f"version {version} of '{slug}'")
    if await access.role_in(session, principal, product.org_id) is not None:
        raise forbidden("a reviewer never decides the review of a version of an organisation they belong to")
    if row.state != "in_review":
        raise conflict(f"version {version} is {row.state}, not in review", "not-in-review")
    if decision == "reject" and not reason.strip():
        raise invalid("reason", "a rejection needs a reason the provider can act on")
    now = utcnow()
    row.reviewed_at, row.reviewed_by, row.review_reason = now, principal.user_id, reason.strip() or None
    if decision == "approve":
        row.state, row.published_at = "published", now
        await _list_product(session, product)
    else:
        row.state, row.manifest_digest, row.submitted_at = "draft", None, None
    await session.flush()
    await audit.record(
        session,
        context,
        "version.approved" if decision == "approve" else "version.rejected",
        org_id=product.org_id,
        target_type="version",
        target_id=f"{slug}@{version}",
        details={"reason": reason.strip()},
    )
    await publish(
        session,
        product.org_id,
        EventType.VERSION_PUBLISHED if decision == "approve" else EventType.VERSION_REJECTED,
        VersionEvent(
            product=slug,
            version=version,
            state=row.state,
            manifest_digest=row.manifest_digest,
            reason=reason.strip() or None,
        ),
    )
    return row


async def change_lifecycle(
    session: AsyncSession,
    context: AuditContext,
    principal: Principal,
    slug: str,
    version: str,
    *,
    to: str,
    reason: str,
) -> ProductVersion:
    """Deprecate or withdraw a published version (the provider, or a platform admin for withdrawals).

    A withdrawal needs a reason: every later refusal to deliver the version's files quotes it.
    """
    if to == "withdrawn" and not reason.strip():
        raise invalid("reason", "say why the version is withdrawn; buyers asking for its files are told it")
    if to == "withdrawn" and access.platform_allows(principal, "versions.withdraw"):
        product = await session.scalar(select(Product).where(Product.slug == slug))
        row = None
        if product is not None:
            row = await session.scalar(
                select(ProductVersion)
                .where(ProductVersion.product_id == product.id, ProductVersion.version == version)
                .with_for_update()
            )
        if product is None or row is None:
            raise not_found(f"version {version} of '{slug}'")
    else:
        product, row = await version_for_writing(session, principal, slug, version)
    allowed = {"deprecated": ("published",), "withdrawn": ("published", "deprecated")}[to]
    if row.state not in allowed:
        raise conflict(f"version {version} is {row.state}; it cannot become {to}", "invalid-transition")
    now = utcnow()
    row.state = to
    if to == "deprecated":
        row.deprecated_at = now
    else:
        row.withdrawn_at, row.withdrawn_reason = now, reason.strip() or None
    await session.flush()
    await audit.record(
        session,
        context,
        f"version.{to}",
        org_id=product.org_id,
        target_type="version",
        target_id=f"{slug}@{version}",
        details={"reason": reason.strip()},
    )
    return row


async def versions_of(session: AsyncSession, product_id: uuid.UUID, *, include_drafts: bool) -> list[ProductVersion]:
    query = select(ProductVersion).where(ProductVersion.product_id == product_id)
    if not include_drafts:
        query = query.where(ProductVersion.state.in_(("published", "deprecated", "withdrawn")))
    rows = list((await session.scalars(query)).all())
    return sorted(rows, key=semver_key, reverse=True)


def semver_key(row: ProductVersion) -> tuple[int, int, int, int, str]:
    # A release sorts after its pre-releases (1.0.0-rc.1 < 1.0.0).
    return (row.major, row.minor, row.patch, 1 if row.prerelease is None else 0, row.prerelease or "")


RELEASED_STATES = ("published", "deprecated")


async def latest_versions(session: AsyncSession, product_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The newest released version of each product (semantic-version order), in one statement."""
    if not product_ids:
        return {}
    rows = await session.execute(
        select(ProductVersion.product_id, ProductVersion.version)
        .where(ProductVersion.product_id.in_(product_ids), ProductVersion.state.in_(RELEASED_STATES))
        .ext(distinct_on(ProductVersion.product_id))
        .order_by(
            ProductVersion.product_id,
            ProductVersion.major.desc(),
            ProductVersion.minor.desc(),
            ProductVersion.patch.desc(),
            ProductVersion.prerelease.is_(None).desc(),
            ProductVersion.prerelease.desc(),
        )
    )
    return {product_id: version for product_id, version in rows}


@dataclasses.dataclass(frozen=True, slots=True)
class InReview:
    product: str
    version: str
    org: str
    submitted_at: dt.datetime


async def review_queue(session: AsyncSession, *, cursor: str | None, limit: int) -> tuple[list[InReview], str | None]:
    """Versions waiting for a platform reviewer, oldest submission first."""
    query = (
        select(Product.slug, ProductVersion.version, Organization.slug, ProductVersion.submitted_at)
        .join(Product, Product.id == ProductVersion.product_id)
        .join(Organization, Organization.id == Product.org_id)
        .where(ProductVersion.state == "in_review")
    )
    rows, next_cursor = await pagination.page(
        session, query, (ProductVersion.submitted_at, ProductVersion.id), cursor, limit
    )
    return [InReview(*row) for row in rows], next_cursor
