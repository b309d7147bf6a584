"""Reading the audit trail: who may see which events, filtered, in keyset pages."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, Uuid, and_, case, cast, column, func, literal, or_, select, table, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import access
from app.accounts.models import Membership, Organization
from app.audit.models import AuditEvent, AuditHead
from app.auth.principal import Principal
from app.errors import forbidden, not_found


@dataclasses.dataclass(frozen=True, slots=True)
class Scope:
    """The events a caller may read: those of ``org_ids``, or every event when ``org_ids`` is None; and the
    grant events of the products of ``provider_ids`` (``access.PROVIDER_AUDIT_ACTIONS``), which are redacted
    (``app.audit.redaction``) unless they belong to ``org_ids`` too or ``full_view`` (platform readers)."""

    org_ids: tuple[uuid.UUID, ...] | None
    provider_ids: tuple[uuid.UUID, ...] = ()
    full_view: bool = False

    def redacts(self, org_id: uuid.UUID | str | None) -> bool:
        """Whether an event of ``org_id`` in this scope is shown redacted."""
        if self.full_view or self.org_ids is None:
            return False
        return org_id is None or uuid.UUID(str(org_id)) not in self.org_ids


def reads_everything(principal: Principal) -> bool:
    """Platform auditors and admins, signed in interactively (API keys belong to one organisation)."""
    return access.platform_allows(principal, "audit.read")


async def visible_scope(session: AsyncSession, principal: Principal, org_slug: str | None) -> Scope:
    """What ``principal`` may read, narrowed to ``org_slug`` if given.

    An organisation the caller does not act for is a 404; one they belong to without an owner or auditor
    role is a 403; without ``org_slug``, a caller who reads no organisation's events at all gets a 403.
    """
    platform = reads_everything(principal)
    if org_slug is not None:
        org, role = await access.org_for(
            session, principal, org_slug, "audit.read", f"reading the audit trail of '{org_slug}'"
        )
        grants = platform or access.role_allows(role, "audit.provider_grants")
        return Scope((org.id,), (org.id,) if grants else (), full_view=platform)
    if platform:
        return Scope(None)
    query = access.acting_org_ids(principal, "audit.read")
    org_ids = tuple((await session.scalars(query.order_by(Membership.org_id))).all())
    provider_query = access.provider_audit_org_ids(principal)
    provider_ids = tuple((await session.scalars(provider_query.order_by(Membership.org_id))).all())
    if not org_ids:
        raise forbidden(
            "the audit trail is readable by platform auditors and admins, and by organisation owners and "
            "auditors for their organisation's events"
        )
    return Scope(org_ids, provider_ids)


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


# The catalogue's and licensing's tables as far as the audit reader joins them (app imports no domain).
_grants = table("download_grants", column("id", Uuid), column("entitlement_id", Uuid))
_entitlements = table("entitlements", column("id", Uuid), column("product_id", Uuid), column("buyer_org_id", Uuid))
_products = table("products", column("id", Uuid), column("org_id", Uuid), column("slug"))
_orders = table("orders", column("id", Uuid), column("product_id", Uuid))
# The download grant a download event concerns (CASE: only a download event's target is cast to uuid).
_GRANT_ID = case((AuditEvent.target_type == "download", cast(AuditEvent.target_id, Uuid)), else_=None)
_ORDER_ID = case((AuditEvent.target_type == "order", cast(AuditEvent.target_id, Uuid)), else_=None)


def _grant_product(attribute: str) -> Any:
    """A column of the product whose download a download event concerns (NULL for other events)."""
    return (
        select(_products.c[attribute])
        .select_from(_grants)
        .join(_entitlements, _entitlements.c.id == _grants.c.entitlement_id)
        .join(_products, _products.c.id == _entitlements.c.product_id)
        .where(_grants.c.id == _GRANT_ID)
        .scalar_subquery()
    )


def provider_column(scope: Scope) -> Any:
    """The provider organisation of a download event's product, when the scope reads any provider's grants."""
    return (_grant_product("org_id") if scope.provider_ids else literal(None, Uuid)).label("provider_org_id")


def _provider_grants(provider_ids: tuple[uuid.UUID, ...]) -> ColumnElement[bool]:
    """The grant events of the products of ``provider_ids``, whoever bought them."""
    buyers = (
        select(_entitlements.c.buyer_org_id)
        .join(_products, _products.c.id == _entitlements.c.product_id)
        .where(_products.c.org_id.in_(provider_ids))
    )
    return and_(
        AuditEvent.action.in_(access.PROVIDER_AUDIT_ACTIONS),
        AuditEvent.target_type == "download",
        AuditEvent.org_id.in_(buyers),  # narrows by the org index before the per-event lookup
        _grant_product("org_id").in_(provider_ids),
    )


def conditions(filters: EventFilter) -> list[ColumnElement[bool]]:
    """The WHERE clauses of ``filters`` on ``AuditEvent``."""
    clauses: list[ColumnElement[bool]] = []
    scope = filters.scope
    org_ids = scope.org_ids
    if org_ids is not None:
        own = AuditEvent.org_id == org_ids[0] if len(org_ids) == 1 else AuditEvent.org_id.in_(org_ids)
        # An actor filter matches the caller's own events only: redacted events never confirm who acted.
        if scope.provider_ids and filters.actor is None:
            clauses.append(or_(own, _provider_grants(scope.provider_ids)))
        else:
            clauses.append(own)
    if filters.action is not None:
        clauses.append(AuditEvent.action == filters.action)
    if filters.actor is not None:
        clauses.append(AuditEvent.actor == filters.actor)
    if filters.since is not None:
        clauses.append(AuditEvent.occurred_at >= filters.since)
    if filters.until is not None:
        clauses.append(AuditEvent.occurred_at < filters.until)
    if filters.product is not None:
        clauses.append(_concerns_product(filters.product))
    return clauses


def _concerns_product(slug: str) -> ColumnElement[bool]:
    """The events of the product ``slug``: its own and its versions', its versions' files and samples, the
    offers, orders, entitlements, takedowns and models that name it, and its downloads and their refreshes."""
    version_of = slug + "@"  # versions are named <slug>@<version>
    product_id = select(_products.c.id).where(_products.c.slug == slug).scalar_subquery()
    return or_(
        AuditEvent.details["product"].astext == slug,
        and_(AuditEvent.target_type == "product", AuditEvent.target_id == slug),
        and_(AuditEvent.target_type == "version", func.starts_with(AuditEvent.target_id, version_of)),
        and_(
            AuditEvent.target_type.in_(("file", "sample")),
            func.starts_with(AuditEvent.details["version"].astext, version_of),
        ),
        # Decisions, payments, cancellations and expiry of its orders name the order only.
        _ORDER_ID.in_(select(_orders.c.id).where(_orders.c.product_id == product_id)),
        AuditEvent.details["products"].contains([slug]),
        and_(AuditEvent.action.in_(access.PROVIDER_AUDIT_ACTIONS), _grant_product("slug") == slug),
    )


EVENT_COLUMNS = (
    AuditEvent.seq,
    AuditEvent.org_id,
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
        select(*EVENT_COLUMNS, provider_column(filters.scope))
        .outerjoin(Organization, Organization.id == AuditEvent.org_id)
        .where(*conditions(filters))
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
