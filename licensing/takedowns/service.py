"""Takedowns: filing a complaint, deciding it, withdrawing the content everywhere it is stored, and collecting
the deletion attestations of the orgs that had downloaded it.

Content is addressed by its SHA-256: an upheld takedown withdraws each digest from every version that holds it
(of the provider's products, or of every product when a platform admin decides), including versions that
store it later. Grants and proxied downloads check ``models.withdrawn`` on every request; the stored object
is kept (under legal hold where the bucket has object lock, by the ``takedowns.hold`` job) for the record.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
from sqlalchemy import ARRAY, ColumnElement, Select, String, and_, any_, distinct, func, literal, or_, select, true
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app import pagination
from app.accounts import access
from app.accounts.models import Organization
from app.audit import service as audit
from app.audit.service import AuditContext
from app.auth.principal import Principal
from app.db import utcnow
from app.errors import conflict, invalid, not_found
from app.jobs import enqueue
from app.notifications.events import TakedownEvent
from app.notifications.models import EventType
from app.notifications.service import publish
from catalog import service as catalog
from catalog.models import Product, ProductVersion, VersionFile
from licensing.downloads.models import DownloadGrant
from licensing.entitlements.models import Entitlement
from licensing.models.flags import Flagged, flag_models
from licensing.models.models import ModelFlag
from licensing.takedowns.models import AffectedDownload, Attestation, Takedown, WithdrawnContent, status_of
from licensing.takedowns.schemas import AffectedOut, AttestationsOut, ClaimantOut, TakedownIn, TakedownOut

HOLD_TASK = "takedowns.hold"


def visible(principal: Principal) -> ColumnElement[bool]:
    """Takedowns the caller may see: their own complaints, those of their orgs' products, those that name one of
    their orgs as a downloader; every one for platform admins and auditors."""
    if access.platform_allows(principal, "takedowns.read"):
        return true()
    orgs = access.acting_org_ids(principal)
    return or_(
        Takedown.claimant_user_id == principal.user_id,
        Takedown.provider_org_id.in_(orgs),
        Takedown.id.in_(select(AffectedDownload.takedown_id).where(AffectedDownload.org_id.in_(orgs))),
    )


def concerning(org_id: uuid.UUID) -> ColumnElement[bool]:
    """Takedowns of the org's products, or naming the org as a downloader."""
    return or_(
        Takedown.provider_org_id == org_id,
        Takedown.id.in_(select(AffectedDownload.takedown_id).where(AffectedDownload.org_id == org_id)),
    )


async def _digests(
    session: AsyncSession, product: Product, version: ProductVersion | None, data: TakedownIn
) -> list[str]:
    """The digests the complaint names: of its paths, its digests, or (a version alone) the whole version; 422
    for a path or digest that no verified file of the product (or of the named version) has."""
    if not data.paths and not data.sha256:
        if version is None:
            raise invalid("version", "name a version, or paths or sha256 digests of the product")
        digests = sorted(
            await session.scalars(
                select(VersionFile.sha256)
                .distinct()
                .where(VersionFile.version_id == version.id, VersionFile.status == "verified")
            )
        )
        if not digests:
            raise invalid("version", f"version {version.version} has no verified files")
        return digests
    paths, named = list(data.paths or []), list(data.sha256 or [])
    files = select(VersionFile.path, VersionFile.sha256).where(
        VersionFile.status == "verified",
        or_(
            VersionFile.path == any_(literal(paths, ARRAY(String))),
            VersionFile.sha256 == any_(literal(named, ARRAY(String))),
        ),
    )
    if version is not None:
        files = files.where(VersionFile.version_id == version.id)
    else:
        files = files.join(ProductVersion, ProductVersion.id == VersionFile.version_id).where(
            ProductVersion.product_id == product.id
        )
    rows = (await session.execute(files)).all()
    by_path = {path: sha for path, sha in rows}
    held = {sha for _, sha in rows}
    for index, path in enumerate(paths):
        if path not in by_path:
            raise invalid(f"paths[{index}]", f"no file '{path}' in what the takedown names")
    for index, sha in enumerate(named):
        if sha not in held:
            raise invalid(f"sha256[{index}]", f"no file with SHA-256 {sha} in what the takedown names")
    return sorted({sha for path, sha in rows if path in paths} | set(named))


def _event(takedown: Takedown, product: str, provider: str, version: str | None, **extra: bool) -> TakedownEvent:
    return TakedownEvent(
        takedown_id=str(takedown.id),
        status=status_of(takedown.decision),
        product=product,
        provider_org=provider,
        version=version,
        sha256=list(takedown.sha256),
        reason=takedown.reason if takedown.decision is None else takedown.decision_reason or "",
        **extra,
    )


async def file_takedown(
    session: AsyncSession, context: AuditContext, principal: Principal, data: TakedownIn
) -> Takedown:
    """Record a complaint and tell the provider (``takedown.received``); platform admins find it in
    ``GET /takedowns?status=received``."""
    product, provider, _ = await catalog.product_for_reading(session, principal, data.product)
    version = None
    if data.version is not None:
        _, _, version, _ = await catalog.version_for_reading(session, principal, data.product, data.version)
    digests = await _digests(session, product, version, data)
    takedown = Takedown(
        id=uuid.uuid4(),
        product_id=product.id,
        version_id=version.id if version is not None else None,
        provider_org_id=product.org_id,
        claimant_user_id=principal.user_id,
        claimant_name=data.claimant.name,
        claimant_email=data.claimant.email,
        rights_holder=data.claimant.rights_holder,
        reason=data.reason,
        paths=list(dict.fromkeys(data.paths or [])),
        sha256=digests,
    )
    session.add(takedown)
    await session.flush()
    await audit.record(
        session,
        context,
        "takedown.received",
        org_id=product.org_id,
        target_type="takedown",
        target_id=takedown.id,
        details={
            "product": product.slug,
            "version": data.version,
            "paths": takedown.paths,
            "sha256": digests,
            "rights_holder": data.claimant.rights_holder,
        },
    )
    await publish(
        session,
        product.org_id,
        EventType.TAKEDOWN_RECEIVED,
        _event(takedown, product.slug, provider, data.version),
    )
    return takedown


async def _for_provider(
    session: AsyncSession, principal: Principal, takedown_id: uuid.UUID
) -> tuple[Takedown, str, str, str | None, str | None]:
    """The takedown (locked), its product's and provider's slugs, its version and the caller's role in the
    provider org; 404 when not visible."""
    row = (
        await session.execute(
            select(
                Takedown,
                Product.slug,
                Organization.slug,
                ProductVersion.version,
                access.role_column(principal, Takedown.provider_org_id),
            )
            .join(Product, Product.id == Takedown.product_id)
            .join(Organization, Organization.id == Takedown.provider_org_id)
            .outerjoin(ProductVersion, ProductVersion.id == Takedown.version_id)
            .where(Takedown.id == takedown_id, visible(principal))
            .with_for_update(of=Takedown)
        )
    ).one_or_none()
    if row is None:
        raise not_found("takedown")
    takedown, product, provider, version, role = row
    return takedown, product, provider, version, role


async def decide(
    session: AsyncSession,
    context: AuditContext,
    principal: Principal,
    takedown_id: uuid.UUID,
    decision: str,
    reason: str,
) -> Takedown:
    """Uphold or dismiss, once. Upheld: withdraw its digests within the decider's reach, record every entitlement
    under which they were downloaded, tell the provider and those orgs (``takedown.upheld``), and hold the
    stored objects; flag every model manifest that records the withdrawn content (``model.flagged`` to each
    model's org). Dismissed: nothing else changes."""
    takedown, product, provider, version, role = await _for_provider(session, principal, takedown_id)
    access.check_role(principal, role, "takedowns.decide", f"deciding a takedown of a product of '{provider}'")
    if takedown.decision is not None:
        raise conflict(f"this takedown was already {status_of(takedown.decision)}", "already-decided")
    platform = access.platform_allows(principal, "takedowns.decide")
    takedown.decision = decision
    takedown.decision_reason = reason or None
    takedown.decided_at = utcnow()
    takedown.decided_by = principal.user_id
    takedown.reach = ("platform" if platform else "provider") if decision == "uphold" else None
    await session.flush()
    affected: list[AffectedDownload] = []
    flagged: list[Flagged] = []
    if decision == "uphold":
        reach_org = None if platform else takedown.provider_org_id
        affected = await _withdraw(session, takedown, reach_org=reach_org)
        flagged = await flag_models(
            session, context, takedown_id=takedown.id, digests=takedown.sha256, reach_org=reach_org
        )
    await audit.record(
        session,
        context,
        f"takedown.{status_of(decision)}",
        org_id=takedown.provider_org_id,
        target_type="takedown",
        target_id=takedown.id,
        details={
            "decision": decision,
            "reason": reason,
            "reach": takedown.reach,
            "sha256": list(takedown.sha256),
            "affected_entitlements": [str(a.entitlement_id) for a in affected],
            "models_flagged": [str(f.manifest_id) for f in flagged],
        },
    )
    if decision != "uphold":
        return takedown
    for org_id in dict.fromkeys(a.org_id for a in affected):
        await audit.record(
            session,
            context,
            "takedown.attestation_requested",
            org_id=org_id,
            target_type="takedown",
            target_id=takedown.id,
            details={
                "entitlements": [str(a.entitlement_id) for a in affected if a.org_id == org_id],
                "sha256": sorted({sha for a in affected if a.org_id == org_id for sha in a.sha256}),
            },
        )
    await publish(
        session,
        [takedown.provider_org_id, *(a.org_id for a in affected)],
        EventType.TAKEDOWN_UPHELD,
        _event(takedown, product, provider, version, attestation_requested=bool(affected)),
    )
    await enqueue(session, HOLD_TASK, takedown_id=str(takedown.id))
    return takedown


async def _withdraw(
    session: AsyncSession, takedown: Takedown, *, reach_org: uuid.UUID | None
) -> list[AffectedDownload]:
    """Withdraw the digests from the products of ``reach_org`` (None: every product) and record, per
    entitlement, which of them were downloaded and when last."""
    await session.execute(
        insert(WithdrawnContent).values(
            [{"takedown_id": takedown.id, "sha256": sha, "provider_org_id": reach_org} for sha in takedown.sha256]
        )
    )
    downloads = (
        select(
            DownloadGrant.entitlement_id,
            Entitlement.buyer_org_id,
            func.array_agg(distinct(DownloadGrant.sha256)),
            func.max(DownloadGrant.granted_at),
        )
        .join(Entitlement, Entitlement.id == DownloadGrant.entitlement_id)
        .where(DownloadGrant.sha256 == any_(literal(list(takedown.sha256), ARRAY(String))))
        .group_by(DownloadGrant.entitlement_id, Entitlement.buyer_org_id)
        .order_by(DownloadGrant.entitlement_id)
    )
    if reach_org is not None:
        downloads = downloads.join(Product, Product.id == Entitlement.product_id).where(Product.org_id == reach_org)
    affected = [
        AffectedDownload(
            takedown_id=takedown.id,
            entitlement_id=entitlement_id,
            org_id=org_id,
            sha256=sorted(digests),
            last_downloaded_at=last,
        )
        for entitlement_id, org_id, digests, last in (await session.execute(downloads)).all()
    ]
    session.add_all(affected)
    await session.flush()
    return affected


async def attest(
    session: AsyncSession,
    context: AuditContext,
    principal: Principal,
    takedown_id: uuid.UUID,
    org_slug: str,
    statement: str,
) -> None:
    """Record the org's deletion attestation: 409 ``not-affected`` when the takedown names no download of the
    org's, ``already-attested`` the second time."""
    org, _ = await access.org_for(session, principal, org_slug, "takedowns.attest", "attesting a deletion")
    found = await session.scalar(select(Takedown.id).where(Takedown.id == takedown_id, visible(principal)))
    if found is None:
        raise not_found("takedown")
    entitlements = (
        await session.scalars(
            select(AffectedDownload.entitlement_id).where(
                AffectedDownload.takedown_id == takedown_id, AffectedDownload.org_id == org.id
            )
        )
    ).all()
    if not entitlements:
        raise conflict(f"this takedown names no download of '{org_slug}'", "not-affected")
    recorded = await session.scalar(
        insert(Attestation)
        .values(takedown_id=takedown_id, org_id=org.id, statement=statement, attested_by=principal.user_id)
        .on_conflict_do_nothing()
        .returning(Attestation.attested_at)
    )
    if recorded is None:
        raise conflict(f"'{org_slug}' has already attested the deletion", "already-attested")
    await audit.record(
        session,
        context,
        "takedown.attested",
        org_id=org.id,
        target_type="takedown",
        target_id=takedown_id,
        details={"statement": statement, "entitlements": [str(e) for e in entitlements]},
    )


# --- reading ----------------------------------------------------------------------------------------------


def _listing(principal: Principal) -> Select[*tuple[Any, ...]]:
    """Visible takedowns with their product's, provider's and version's names, whether the caller sees them as
    the provider (or platform staff), whether as the claimant, and how many models they flagged."""
    staff = access.platform_allows(principal, "takedowns.read")
    return (
        select(
            Takedown,
            Product.slug,
            Organization.slug,
            ProductVersion.version,
            literal(True) if staff else Takedown.provider_org_id.in_(access.acting_org_ids(principal)),
            Takedown.claimant_user_id == principal.user_id,
            select(func.count()).where(ModelFlag.takedown_id == Takedown.id).scalar_subquery(),
        )
        .join(Product, Product.id == Takedown.product_id)
        .join(Organization, Organization.id == Takedown.provider_org_id)
        .outerjoin(ProductVersion, ProductVersion.id == Takedown.version_id)
        .where(visible(principal))
    )


async def _answers(session: AsyncSession, principal: Principal, rows: Sequence[Any]) -> list[TakedownOut]:
    """Answers for rows of ``_listing``, with their affected entitlements read in one more statement."""
    ids = [row[0].id for row in rows]
    affected: dict[uuid.UUID, list[tuple[AffectedOut, uuid.UUID, bool]]] = {takedown_id: [] for takedown_id in ids}
    if ids:
        found = await session.execute(
            select(
                AffectedDownload,
                Organization.slug,
                Attestation.attested_at,
                Attestation.statement,
                AffectedDownload.org_id.in_(access.acting_org_ids(principal)),
            )
            .join(Organization, Organization.id == AffectedDownload.org_id)
            .outerjoin(
                Attestation,
                and_(
                    Attestation.takedown_id == AffectedDownload.takedown_id,
                    Attestation.org_id == AffectedDownload.org_id,
                ),
            )
            .where(AffectedDownload.takedown_id.in_(ids))
            .order_by(Organization.slug, AffectedDownload.entitlement_id)
        )
        for row, org, attested_at, statement, own in found:
            out = AffectedOut(org, row.entitlement_id, list(row.sha256), row.last_downloaded_at, attested_at, statement)
            affected[row.takedown_id].append((out, row.org_id, bool(own)))
    answers = []
    for takedown, product, provider, version, as_provider, as_claimant, models_flagged in rows:
        entries = affected[takedown.id]
        orgs = {org_id for _, org_id, _ in entries}
        attested = {org_id for out, org_id, _ in entries if out.attested_at is not None}
        answers.append(
            TakedownOut(
                id=takedown.id,
                status=status_of(takedown.decision),  # type: ignore[arg-type]
                product=product,
                provider_org=provider,
                version=version,
                paths=list(takedown.paths),
                sha256=list(takedown.sha256),
                reason=takedown.reason,
                claimant=ClaimantOut(takedown.claimant_name, takedown.claimant_email, takedown.rights_holder)
                if as_provider or as_claimant
                else None,
                received_at=takedown.received_at,
                decision=takedown.decision,
                decision_reason=takedown.decision_reason,
                decided_at=takedown.decided_at,
                reach=takedown.reach,
                affected=[out for out, _, own in entries if as_provider or own],
                attestations=AttestationsOut(required=len(orgs), received=len(attested)),
                models_flagged=models_flagged if as_provider else msgspec.UNSET,
            )
        )
    return answers


async def read(session: AsyncSession, principal: Principal, takedown_id: uuid.UUID) -> TakedownOut:
    row = (await session.execute(_listing(principal).where(Takedown.id == takedown_id))).one_or_none()
    if row is None:
        raise not_found("takedown")
    return (await _answers(session, principal, [row]))[0]


async def listing(
    session: AsyncSession,
    principal: Principal,
    *,
    org: str | None,
    status: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[TakedownOut], str | None]:
    """A page of the visible takedowns, newest first; ``org``: those concerning that org (404 unless the caller
    acts for it or is platform staff)."""
    query = _listing(principal)
    if org is not None:
        found, _ = await access.org_for(session, principal, org, "takedowns.read", "reading takedowns")
        query = query.where(concerning(found.id))
    if status is not None:
        query = query.where(
            Takedown.decision.is_(None)
            if status == "received"
            else Takedown.decision == ("uphold" if status == "upheld" else "dismiss")
        )
    rows, next_cursor = await pagination.page(
        session, query, (Takedown.received_at, Takedown.id), cursor, limit, descending=True
    )
    return await _answers(session, principal, rows), next_cursor
