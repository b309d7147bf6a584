"""Who may act for which organisation: roles of members and the scopes an API key carries."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.models import Membership, Organization
from app.auth.principal import Principal
from app.errors import forbidden, not_found

ADMIN_ROLES = ("owner", "admin")


BUYER_ROLES = ("owner", "admin", "member")


async def org_role(
    session: AsyncSession, principal: Principal, org_slug: str, roles: Sequence[str], what: str
) -> Organization:
    """The org, if the caller holds one of ``roles`` in it: 404 when not a member, 403 for the wrong role."""
    row = (
        await session.execute(
            select(Organization, Membership.role)
            .join(Membership, Membership.org_id == Organization.id)
            .where(Organization.slug == org_slug, Membership.user_id == principal.user_id)
        )
    ).one_or_none()
    if row is None or (principal.api_key_org_id is not None and principal.api_key_org_id != row[0].id):
        raise not_found(f"organisation '{org_slug}'")
    if row[1] not in roles:
        raise forbidden(f"{what} needs the role {' or '.join(roles)} in '{org_slug}'")
    return row[0]


def require_orders_scope(principal: Principal) -> None:
    """Placing, cancelling and deciding orders and changing entitlements: API keys need ``orders:write``."""
    if not principal.has_scope("orders:write"):
        raise forbidden("this API key lacks the 'orders:write' scope")


async def is_member(session: AsyncSession, principal: Principal, org_id: uuid.UUID) -> bool:
    return (
        await session.scalar(
            select(Membership.role).where(Membership.org_id == org_id, Membership.user_id == principal.user_id)
        )
    ) is not None
