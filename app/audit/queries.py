"""Reading the audit trail: who may see which events, filtered, in keyset pages."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import access
from app.accounts.models import Membership, Organization
from app.audit.models import AuditEvent, AuditHead
from app.auth.principal import Principal
from app.errors import forbidden, not_found


@dataclasses.dataclass(frozen=True, slots=True)
class Scope:
    """The events a caller may read: those of ``org_ids``, or every event when ``org_ids`` is None."""

    org_ids: tuple[uuid.UUID, ...] | None


def reads_everything(principal: Principal) -> bool:
    """Platform auditors and admins, signed in interactively (API keys belong to one organisation)."""
    return access.platform_allows(principal, "audit.read")


async def visible_scope(session: AsyncSession, principal: Principal, org_slug: str | None) -> Scope:
    """What ``principal`` may read, narrowed to ``org_slug`` if given.

    An organisation the caller does not act for is a 404; one they belong to without an owner or auditor
    role is a 403; without ``org_slug``, a caller who reads no organisation's events at all gets a 403.
    """
    if org_slug is not None:
        org, _ = await access.org_for(
            session, principal, org_slug, "audit.read", f"reading the audit trail of '{org_slug}'"
        )
        return Scope((org.id,))
    if reads_everything(principal):
        return Scope(None)
    query = access.acting_org_ids(principal, "audit.read")
    org_ids = tuple((await session.scalars(query.order_by(Membership.org_id))).all())
    if not org_ids:
        raise forbidden(
            "the audit trail is readable by platform auditors and admins, and by organisation owners and "
            "auditors for their organisation's events"
        )
    return Scope(org_ids)


@dataclasses.dataclass(frozen=True, slots=True)
class EventFilter:
    scope: Scope
    action: str | None = None
    actor: str | None = None
    since: dt.datetime | None = None  # inclusive
    until: dt.datetime | None = None  # exclusive
    product: str | None = None  # the slug of a product the events concern


async def check_product(session: AsyncSession, slug: str | None) -> str | None:
    """``slug`` if such a product exists; 404 otherwise."""
    if slug is not None and await session.scalar(text("SELECT 1 FROM products WHERE slug = :slug"), {"slug": slug}):
        return slug
    if slug is not None:
        raise not_found("product")
    return None


def conditions(filters: EventFilter) -> list[ColumnElement[bool]]:
    """The WHERE clauses of ``filters`` on ``AuditEvent``."""
    clauses: list[ColumnElement[bool]] = []
    org_ids = filters.scope.org_ids
    if org_ids is not None:
        clauses.append(AuditEvent.org_id == org_ids[0] if len(org_ids) == 1 else AuditEvent.org_id.in_(org_ids))
    if filters.action is not None:
        clauses.append(AuditEvent.action == filters.action)
    if filters.actor is not None:
        clauses.append(AuditEvent.actor == filters.actor)
    if filters.since is not None:
        clauses.append(AuditEvent.occurred_at >= filters.since)
    if filters.until is not None:
        clauses.append(AuditEvent.occurred_at < filters.until)
    if filters.product is not None:
        # The product's own events, and the offers, orders, entitlements and grants that name it.
        clauses.append(
            or_(
                AuditEvent.details["product"].astext == filters.product,
                and_(AuditEvent.target_type == "product", AuditEvent.target_id == filters.product),
            )
        )
    return clauses


EVENT_COLUMNS = (
    AuditEvent.seq,
    AuditEvent.occurred_at,
    AuditEvent.actor,
    Organization.slug.label("org"),
    AuditEvent.action,
    AuditEvent.target_type,
    AuditEvent.target_id,
    AuditEvent.request_id,
    AuditEvent.client_addr,
    AuditEvent.details,
    AuditEvent.prev_hash,
    AuditEvent.hash,
)


def _filtered(filters: EventFilter) -> Select[Any]:
    return (
        select(*EVENT_COLUMNS).outerjoin(Organization, Organization.id == AuditEvent.org_id).where(*conditions(filters))
    )


async def list_events(
    session: AsyncSession,
    filters: EventFilter,
    *,
    after: int | None,
    limit: int,
    descending: bool = False,
    up_to: int | None = None,
) -> Sequence[Any]:
    """One keyset page of events as plain rows of ``EVENT_COLUMNS``, after ``after`` in the given order."""
    query = _filtered(filters)
    if after is not None:
        query = query.where(AuditEvent.seq < after if descending else AuditEvent.seq > after)
    if up_to is not None:
        query = query.where(AuditEvent.seq <= up_to)
    query = query.order_by(AuditEvent.seq.desc() if descending else AuditEvent.seq).limit(limit)
    rows: Sequence[Any] = (await session.execute(query)).all()
    return rows


async def head_seq(session: AsyncSession) -> int:
    return int(await session.scalar(select(AuditHead.seq).where(AuditHead.id == 1)) or 0)
