"""Model manifests: a model's training record, accepted only when each item's purpose chain closes.

An item names an entitlement, a product version and a use. The chain closes when the entitlement is the org's
(and not revoked or suspended), is for that product and covers that version, was granted for that use and its
licence as accepted permits it, and files of that version were downloaded under it (its grant records). A
refusal names the item: 422 ``not-entitled`` for the first four, 422 ``never-downloaded`` for the last.

The manifest records per item the files and bytes downloaded and the licence, with the combined verdict of the
licence check (``licensing.licences.terms.check``, run for each use over the items declared for it, on the
licence terms as accepted). Its ``manifest_digest`` is ``sha256:`` + the SHA-256 of the canonical JSON (keys
sorted, no whitespace, UTF-8) of the manifest as answered, without ``id``, ``created_at`` and the digest.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import msgspec
from sqlalchemy import ColumnElement, select, text, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app import pagination
from app.accounts import access
from app.accounts.models import Organization
from app.audit import service as audit
from app.audit.service import AuditContext
from app.auth.principal import Principal
from app.db import utcnow
from app.errors import ProblemError, conflict, invalid, not_found
from catalog.models import Product, ProductVersion
from catalog.service import semver_key
from licensing.downloads.models import DownloadGrant
from licensing.entitlements.models import Entitlement, status_at
from licensing.licences import terms
from licensing.models import flags, summary
from licensing.models.models import ModelManifest, ModelTrainingItem
from licensing.models.schemas import DownloadedFile, LicenceTerms, ModelIn, ModelItemOut, ModelOut, Verdict
from licensing.orders.service import digest

RELEASED = ("published", "deprecated", "withdrawn")  # a withdrawn version may still have trained a model
DIGESTED_OUT = frozenset({"id", "created_at", "manifest_digest"})


def refused(type_: str, index: int, item: Any, why: str) -> ProblemError:
    title = {"not-entitled": "Not entitled", "never-downloaded": "Never downloaded"}[type_]
    what = f"training[{index}] ({item.product}@{item.version} for {item.use})"
    return ProblemError(422, type_, title, f"{what}: {why}", extra={"item": index})


@dataclasses.dataclass(frozen=True, slots=True)
class Released:
    """A released version of a product named by the manifest, with what the licence check names."""

    row: ProductVersion
    product_id: uuid.UUID
    slug: str
    title: str
    provider: str


async def _versions(session: AsyncSession, product_ids: set[uuid.UUID]) -> dict[tuple[str, str], Released]:
    rows = await session.execute(
        select(ProductVersion, Product.id, Product.slug, Product.title, Organization.slug)
        .join(Product, Product.id == ProductVersion.product_id)
        .join(Organization, Organization.id == Product.org_id)
        .where(ProductVersion.product_id.in_(product_ids), ProductVersion.state.in_(RELEASED))
    )
    return {(slug, v.version): Released(v, pid, slug, title, org) for v, pid, slug, title, org in rows}


def _latest(versions: dict[tuple[str, str], Released], product_id: uuid.UUID) -> str | None:
    current = [r.row for r in versions.values() if r.product_id == product_id and r.row.state != "withdrawn"]
    return max(current, key=semver_key).version if current else None


async def _downloaded(
    session: AsyncSession, entitlement_ids: Sequence[uuid.UUID]
) -> dict[tuple[uuid.UUID, uuid.UUID], list[DownloadedFile]]:
    """Per (entitlement, version), each file downloaded under the entitlement, once."""
    rows = await session.execute(
        select(DownloadGrant.entitlement_id, DownloadGrant.version_id, DownloadGrant.path, DownloadGrant.sha256)
        .add_columns(DownloadGrant.size)
        .where(DownloadGrant.entitlement_id.in_(entitlement_ids))
        .distinct()
        .order_by(DownloadGrant.entitlement_id, DownloadGrant.version_id, DownloadGrant.path, DownloadGrant.sha256)
    )
    found: dict[tuple[uuid.UUID, uuid.UUID], list[DownloadedFile]] = defaultdict(list)
    for entitlement_id, version_id, path, sha256, size in rows:
        found[(entitlement_id, version_id)].append(DownloadedFile(path=path, sha256=sha256, size=size))
    return found


def _merge_duties(into: dict[str, Any], duties: dict[str, Any]) -> None:
    for name, entries in duties.items():
        listed = into.setdefault(name, [])
        listed.extend(e for e in entries if e not in listed)


def combined_verdict(checked: Sequence[tuple[str, terms.CheckItem]], territory: str | None) -> Verdict:
    """The licence check for each use over the items declared for it, combined."""
    by_use: dict[str, list[terms.CheckItem]] = defaultdict(list)
    for use, item in checked:
        if item not in by_use[use]:
            by_use[use].append(item)
    allowed = True
    conflicts: list[str] = []
    reasons: list[str] = []
    duties: dict[str, Any] = {}
    for use, items in by_use.items():
        result = terms.check(items, use, territory)
        allowed = allowed and result.allowed
        conflicts.extend(c for c in result.conflicts if c not in conflicts)
        reasons.extend(f"{v.product}@{v.version}: {v.reason}" for v in result.items if not v.allowed)
        _merge_duties(duties, result.duties)
    return Verdict(allowed=allowed, conflicts=conflicts, duties=duties, reasons=reasons)


async def create_manifest(
    session: AsyncSession, context: AuditContext, principal: Principal, data: ModelIn
) -> ModelOut:
    org, _ = await access.org_for(session, principal, data.org, "models.create", "recording a model manifest")
    seen: dict[tuple[Any, ...], int] = {}
    for index, item in enumerate(data.training):
        key = (item.entitlement_id, item.product, item.version, item.use)
        if key in seen:
            raise invalid(f"training[{index}]", f"repeats training[{seen[key]}]")
        seen[key] = index
    ids = sorted({item.entitlement_id for item in data.training})
    entitlements = {
        e.id: (e, slug)
        for e, slug in await session.execute(
            select(Entitlement, Product.slug)
            .join(Product, Product.id == Entitlement.product_id)
            .where(Entitlement.id.in_(ids), Entitlement.buyer_org_id == org.id)
        )
    }
    versions = await _versions(session, {e.product_id for e, _ in entitlements.values()})
    downloaded = await _downloaded(session, list(entitlements))
    now = utcnow()
    items: list[ModelItemOut] = []
    checked: list[tuple[str, terms.CheckItem]] = []
    rows: list[ModelTrainingItem] = []
    for index, item in enumerate(data.training):
        found = entitlements.get(item.entitlement_id)
        if found is None:
            raise refused("not-entitled", index, item, f"entitlement {item.entitlement_id} is not one of '{org.slug}'")
        entitlement, product = found
        status, reason = status_at(entitlement, now)
        if status in ("revoked", "suspended"):
            raise refused(
                "not-entitled", index, item, f"the entitlement is {status}" + (f" ({reason})" if reason else "")
            )
        if product != item.product:
            raise refused("not-entitled", index, item, f"the entitlement is for '{product}', not '{item.product}'")
        released = versions.get((item.product, item.version))
        if released is None:
            raise refused("not-entitled", index, item, f"'{item.product}' has no released version {item.version}")
        files = downloaded.get((entitlement.id, released.row.id), [])
        latest = _latest(versions, entitlement.product_id)
        # A grant checked coverage when it was made: a version downloaded while it was the latest stays covered.
        if entitlement.versions == "latest" and item.version != latest and not files:
            raise refused("not-entitled", index, item, f"the entitlement covers the latest version only ({latest})")
        if item.use not in entitlement.purposes:
            granted = ", ".join(entitlement.purposes)
            raise refused("not-entitled", index, item, f"the entitlement was granted for {granted}, not {item.use}")
        licence = entitlement.terms["licence"]
        if item.use not in licence["uses"]:
            raise refused(
                "not-entitled", index, item, f"its licence as accepted ({licence['id']}) does not permit {item.use}"
            )
        if not files:
            raise refused(
                "never-downloaded", index, item, "no file of this version was downloaded under the entitlement"
            )
        manifest_digest = released.row.manifest_digest
        assert manifest_digest is not None  # released versions have their manifest
        items.append(
            ModelItemOut(
                product=item.product,
                version=item.version,
                manifest_digest=manifest_digest,
                entitlement_id=entitlement.id,
                use=item.use,
                licence=licence["id"],
                licence_terms=LicenceTerms(
                    name=licence["name"],
                    spdx=licence.get("spdx"),
                    url=licence.get("url"),
                    uses=list(licence["uses"]),
                    duties=list(licence["duties"]),
                    territories=list(licence["territories"]),
                ),
                files_downloaded=len(files),
                bytes_downloaded=sum(f.size for f in files),
                files=files,
            )
        )
        checked.append(
            (
                item.use,
                terms.CheckItem(
                    product=item.product,
                    version=item.version,
                    title=released.title,
                    provider=released.provider,
                    licence_id=licence["id"],
                    uses=frozenset(licence["uses"]),
                    duties=frozenset(licence["duties"]),
                    territories=frozenset(licence["territories"]),
                ),
            )
        )
        rows.append(
            ModelTrainingItem(
                position=index,
                entitlement_id=entitlement.id,
                version_id=released.row.id,
                use=item.use,
                licence_id=licence["id"],
                files_downloaded=len(files),
                bytes_downloaded=sum(f.size for f in files),
            )
        )
    manifest_id = uuid.uuid4()
    out = ModelOut(
        id=manifest_id,
        org=org.slug,
        name=data.name,
        version=data.version,
        description=data.description,
        territory=data.territory,
        sme=data.sme,
        manifest_digest="",
        verdict=combined_verdict(checked, data.territory),
        items=items,
        created_at=now,
    )
    document = msgspec.to_builtins(out)
    out.manifest_digest = document["manifest_digest"] = digest(
        {k: v for k, v in document.items() if k not in DIGESTED_OUT}
    )
    taken = conflict(f"'{org.slug}' already recorded model {data.name} {data.version}", "model-exists")
    if await session.scalar(
        select(ModelManifest.id).where(
            ModelManifest.org_id == org.id, ModelManifest.name == data.name, ModelManifest.version == data.version
        )
    ):
        raise taken
    session.add(
        ModelManifest(
            id=manifest_id,
            org_id=org.id,
            name=data.name,
            version=data.version,
            document=document,
            manifest_digest=out.manifest_digest,
            created_by=context.actor,
            created_at=now,
        )
    )
    try:
        await session.flush()
    except IntegrityError:  # the same model version, recorded concurrently
        raise taken from None
    for row in rows:
        row.manifest_id = manifest_id
    session.add_all(rows)
    await session.flush()
    await audit.record(
        session,
        context,
        "model.created",
        org_id=org.id,
        target_type="model",
        target_id=manifest_id,
        details={
            "name": data.name,
            "version": data.version,
            "manifest_digest": out.manifest_digest,
            "allowed": out.verdict.allowed,
            "items": [f"{i.product}@{i.version} {i.use} ({i.entitlement_id})" for i in items],
            "products": sorted({i.product for i in items}),
        },
    )
    return out


def visible_manifests(principal: Principal) -> ColumnElement[bool]:
    """Members of the model's org read it; platform admins and auditors read every one."""
    if access.platform_allows(principal, "models.read"):
        return true()
    return ModelManifest.org_id.in_(access.acting_org_ids(principal, "models.read"))


def manifest_out(document: dict[str, Any], flags: list[Any] | None = None) -> ModelOut:
    """The recorded manifest, with ``flags`` (as ``flags.flags_column`` reads them) when given."""
    return msgspec.convert(document if flags is None else {**document, "flags": flags}, ModelOut)


async def get_manifest(session: AsyncSession, principal: Principal, model_id: uuid.UUID) -> ModelManifest:
    manifest = await session.scalar(
        select(ModelManifest).where(ModelManifest.id == model_id, visible_manifests(principal))
    )
    if manifest is None:
        raise not_found("model")
    return manifest


async def read_manifest(session: AsyncSession, principal: Principal, model_id: uuid.UUID) -> ModelOut:
    """The manifest with its flags, in one statement."""
    row = (
        await session.execute(
            select(ModelManifest.document, flags.flags_column()).where(
                ModelManifest.id == model_id, visible_manifests(principal)
            )
        )
    ).one_or_none()
    if row is None:
        raise not_found("model")
    return manifest_out(*row)


async def list_manifests(
    session: AsyncSession, principal: Principal, org_slug: str | None, cursor: str | None, limit: int
) -> tuple[list[ModelOut], str | None]:
    """Newest first: the org's when ``org`` is given, else every one the caller may read."""
    query = select(ModelManifest.document, flags.flags_column()).where(visible_manifests(principal))
    if org_slug is not None:
        org, _ = await access.org_for(session, principal, org_slug, "models.read", "reading model manifests")
        query = query.where(ModelManifest.org_id == org.id)
    rows, next_cursor = await pagination.page(
        session, query, (ModelManifest.created_at, ModelManifest.id), cursor, limit, descending=True
    )
    return [manifest_out(document, flagged) for document, flagged in rows], next_cursor


async def version_contexts(
    session: AsyncSession, manifest_id: uuid.UUID
) -> dict[tuple[str, str], summary.VersionContext]:
    """What the summary, the notice and the export read of the versions the manifest names, in one statement."""
    rows = await session.execute(
        select(
            Product.slug,
            ProductVersion.version,
            Product.title,
            Product.modality,
            Product.languages,
            Organization.name,
            ProductVersion.provenance,
            ProductVersion.synthetic_fraction,
        )
        .select_from(ModelTrainingItem)
        .join(ProductVersion, ProductVersion.id == ModelTrainingItem.version_id)
        .join(Product, Product.id == ProductVersion.product_id)
        .join(Organization, Organization.id == Product.org_id)
        .where(ModelTrainingItem.manifest_id == manifest_id)
        .distinct()
    )
    profiles: dict[tuple[str, str], dict[str, tuple[int | None, int | None]]] = defaultdict(dict)
    for slug, version, path, records, tokens in await session.execute(_PROFILED_FILES, {"id": manifest_id}):
        profiles[(slug, version)][path] = (records, tokens)
    contexts = {}
    for slug, version, title, modality, languages, provider, provenance, fraction in rows:
        provenance = provenance or {}
        if fraction is None:
            fraction = provenance.get("synthetic_fraction")
        contexts[(slug, version)] = summary.VersionContext(
            slug, version, title, modality, list(languages), provider, provenance, fraction, profiles[(slug, version)]
        )
    return contexts


# The inspection profile's counts of the files of the manifest's versions, where profiled.
_PROFILED_FILES = text(
    """
SELECT p.slug, v.version, f.path, CAST(fp.profile ->> 'records' AS bigint), CAST(fp.profile ->> 'tokens' AS bigint)
FROM (SELECT DISTINCT version_id FROM model_training_items WHERE manifest_id = :id) AS t
JOIN product_versions AS v ON v.id = t.version_id
JOIN products AS p ON p.id = v.product_id
JOIN file_profiles AS fp ON fp.version_id = v.id AND fp.finished_at IS NOT NULL
JOIN version_files AS f ON f.id = fp.file_id
"""
)
