"""The licence catalogue (seeded SPDX licences and providers' custom ones) and licence checks of combinations."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app import pagination
from app.accounts import access
from app.accounts.models import Organization
from app.audit import service as audit
from app.audit.service import AuditContext
from app.auth.principal import Principal
from app.errors import conflict, forbidden, invalid, not_found
from catalog.models import ProductVersion
from catalog.service import product_for_reading, semver_key
from licensing.licences import terms
from licensing.licences.models import DUTIES, USES, Licence


def licence_dict(licence: Licence) -> dict[str, Any]:
    return {
        "id": licence.id,
        "name": licence.name,
        "spdx": licence.spdx,
        "url": licence.url,
        "text_sha256": licence.text_sha256,
        "uses": list(licence.uses),
        "duties": list(licence.duties),
        "territories": list(licence.territories),
        "note": licence.note,
    }


async def list_licences(
    session: AsyncSession, *, cursor: str | None, limit: int
) -> tuple[list[tuple[Licence, str | None]], str | None]:
    """A page of the catalogue: the seeded SPDX licences first, then custom ones, by id."""
    query = select(Licence, Organization.slug).outerjoin(Organization, Organization.id == Licence.owner_org_id)
    keys = (Licence.owner_org_id.is_not(None), Licence.id)
    rows, next_cursor = await pagination.page(session, query, keys, cursor, limit)
    return [(licence, org) for licence, org in rows], next_cursor


async def get_licence(session: AsyncSession, licence_id: str) -> tuple[Licence, str | None]:
    row = (
        await session.execute(
            select(Licence, Organization.slug)
            .outerjoin(Organization, Organization.id == Licence.owner_org_id)
            .where(Licence.id == licence_id)
        )
    ).one_or_none()
    if row is None:
        raise not_found(f"licence '{licence_id}'")
    return row[0], row[1]


async def _provider_org_for(session: AsyncSession, principal: Principal, org_slug: str | None) -> Organization:
    if org_slug is not None:
        org, _ = await access.org_for(session, principal, org_slug, "catalog.write", "adding a licence")
        if org.kind not in ("provider", "both"):
            raise forbidden(f"'{org_slug}' is not a provider organisation")
        return org
    orgs = (
        await session.scalars(
            select(Organization).where(
                Organization.id.in_(access.acting_org_ids(principal, "catalog.write")),
                Organization.kind.in_(("provider", "both")),
            )
        )
    ).all()
    if len(orgs) != 1:
        raise invalid("org", "name the provider organisation that owns this licence")
    return orgs[0]


async def create_licence(
    session: AsyncSession, context: AuditContext, principal: Principal, fields: dict[str, Any]
) -> tuple[Licence, str]:
    """A custom licence, owned by a provider org, with the id ``LicenseRef-<org>-<name>``."""
    org = await _provider_org_for(session, principal, fields.pop("org"))
    spdx = terms.validate_spdx(fields["spdx"]) if fields.get("spdx") else None
    text = fields.pop("text")
    text_sha256 = fields["text_sha256"]
    if text is not None:
        computed = hashlib.sha256(text.encode()).hexdigest()
        if text_sha256 is not None and text_sha256 != computed:
            raise invalid("text_sha256", "does not match the SHA-256 of the text given")
        text_sha256 = computed
    if not fields["url"] and text_sha256 is None:
        raise invalid("url", "a custom licence needs its text: give url, text or text_sha256")
    name_slug = re.sub(r"[^A-Za-z0-9.]+", "-", fields["name"]).strip("-")[:80] or "licence"
    licence_id = f"LicenseRef-{org.slug}-{name_slug}"
    taken = conflict(f"'{org.slug}' already has a licence named '{fields['name']}'", "licence-exists")
    if await session.get(Licence, licence_id) is not None:
        raise taken
    licence = Licence(
        id=licence_id,
        name=fields["name"],
        spdx=spdx,
        url=fields["url"],
        text_sha256=text_sha256,
        uses=sorted(set(fields["uses"]), key=USES.index),
        duties=sorted(set(fields["duties"]), key=DUTIES.index),
        territories=sorted(set(fields["territories"])),
        note=fields["note"],
        owner_org_id=org.id,
    )
    session.add(licence)
    try:
        await session.flush()
    except IntegrityError:  # the same name, created concurrently (the failed flush expires ``org``)
        raise taken from None
    await audit.record(
        session,
        context,
        "licence.created",
        org_id=org.id,
        target_type="licence",
        target_id=licence.id,
        details={"uses": licence.uses, "duties": licence.duties, "spdx": spdx},
    )
    return licence, org.slug


async def licence_check(
    session: AsyncSession,
    principal: Principal | None,
    items: list[tuple[str, str | None]],
    use: str,
    territory: str | None,
) -> tuple[terms.CheckResult, list[tuple[str, str]]]:
    """Evaluate a combination; an item without a version means the product's latest published version."""
    resolved: list[terms.CheckItem] = []
    for slug, version in items:
        product, org_slug, _ = await product_for_reading(session, principal, slug)
        released = [
            v
            for v in (
                await session.scalars(
                    select(ProductVersion).where(
                        ProductVersion.product_id == product.id,
                        ProductVersion.state.in_(("published", "deprecated")),
                    )
                )
            ).all()
        ]
        if version is not None:
            released = [v for v in released if v.version == version]
        if not released:
            raise not_found(f"published version {version or '(latest)'} of '{slug}'")
        chosen = max(released, key=semver_key)
        if chosen.licence_id is None:
            raise not_found(f"licence of {slug}@{chosen.version}")
        licence = await session.get(Licence, chosen.licence_id)
        assert licence is not None
        resolved.append(
            terms.CheckItem(
                product=slug,
                version=chosen.version,
                title=product.title,
                provider=org_slug,
                licence_id=licence.id,
                uses=frozenset(licence.uses),
                duties=frozenset(licence.duties),
                territories=frozenset(licence.territories),
            )
        )
    return terms.check(resolved, use, territory), [(i.product, i.version) for i in resolved]
