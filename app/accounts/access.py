"""Access in one place: which organisations a caller acts for, what they may see, and what they may do.

Every action of the API has one rule in ``RULES``: the organisation roles that may take it (in the organisation
concerned), the API-key scopes that allow it, and the platform roles that may take it without being a member.
Routes declare their action with the ``requires(action)`` guard (``app.auth.guards``), which enforces what a
request alone decides (signed in, the key's scope, platform-only actions); services ask this module for the
rest: ``org_for`` (an organisation named in a request), ``role_in`` (the caller's role in a resource's
organisation), ``acting_org_ids`` (query filters) and ``check_role``.

An API key acts for its own organisation only: whatever its user may do elsewhere, through the key every other
organisation is a stranger (its private resources are 404, acting for it is refused). Platform roles apply to
interactive sessions only.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from sqlalchemy import Select, String, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.models import ORG_ROLES, Membership, Organization
from app.auth.principal import Principal
from app.errors import ProblemError, forbidden, not_found, unauthorized

EVERY_ROLE: tuple[str, ...] = ORG_ROLES
WRITERS = ("owner", "admin", "member")
ADMINS = ("owner", "admin")


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """Who may take an action.

    ``roles``: organisation roles that may take it in the organisation concerned. ``scopes``: an API key needs one
    of them (empty: any key). ``platform``: platform roles that may take it without membership (interactive
    sessions only). ``platform_only``: nobody else may. ``anonymous``: no sign-in needed. ``interactive``: API keys
    may not take it at all.
    """

    roles: tuple[str, ...] = ()
    scopes: frozenset[str] = frozenset()
    platform: tuple[str, ...] = ()
    platform_only: bool = False
    anonymous: bool = False
    interactive: bool = False


def _rule(
    roles: tuple[str, ...] = (),
    scopes: tuple[str, ...] = (),
    platform: tuple[str, ...] = (),
    *,
    platform_only: bool = False,
    anonymous: bool = False,
    interactive: bool = False,
) -> Rule:
    return Rule(roles, frozenset(scopes), platform, platform_only, anonymous, interactive)


# The one table. Read actions that an API key may take name the scopes that allow them; writes name theirs.
RULES: dict[str, Rule] = {
    # anyone: sign-up, sign-in, the public catalogue, licences, health
    "public": _rule(anonymous=True),
    # any signed-in caller: themselves, creating an organisation, their organisations
    "signed_in": _rule(EVERY_ROLE),
    "orgs.create": _rule(EVERY_ROLE, interactive=True),
    "credentials.manage": _rule(EVERY_ROLE, interactive=True),
    "orgs.read": _rule(EVERY_ROLE, platform=("admin", "auditor")),
    "members.read": _rule(EVERY_ROLE, ("org:admin",), ("admin", "auditor")),
    "members.manage": _rule(ADMINS, ("org:admin",)),
    # the catalogue is public (any key reads it); drafts are seen by their org's members and the platform's staff
    "catalog.read": _rule(EVERY_ROLE, (), ("admin", "reviewer", "auditor"), anonymous=True),
    "catalog.write": _rule(WRITERS, ("catalog:write",)),
    "versions.review": _rule(platform=("reviewer", "admin"), platform_only=True, interactive=True),
    # inspection: any signed-in caller previews a product whose provider offers it; platform reviewers sample
    "versions.preview": _rule(EVERY_ROLE, ("catalog:read",), ("admin", "reviewer", "auditor")),
    "samples.draw": _rule(platform=("reviewer", "admin"), platform_only=True, interactive=True),
    "samples.judge": _rule(platform=("reviewer", "admin"), platform_only=True, interactive=True),
    "samples.read": _rule(EVERY_ROLE, ("catalog:read",), ("reviewer", "admin", "auditor")),
    "versions.withdraw": _rule(WRITERS, ("catalog:write",), ("admin",)),  # platform admins withdraw anything
    # orders and entitlements
    "orders.read": _rule(EVERY_ROLE, ("orders:read", "orders:write"), ("admin", "auditor")),
    "orders.place": _rule(WRITERS, ("orders:write",)),
    "orders.cancel": _rule(WRITERS, ("orders:write",)),
    "orders.decide": _rule(ADMINS, ("orders:write",)),
    "orders.confirm_payment": _rule(platform=("admin",), platform_only=True, interactive=True),
    # a downloader finds the entitlement it downloads under
    "entitlements.read": _rule(EVERY_ROLE, ("orders:read", "orders:write", "downloads"), ("admin", "auditor")),
    "entitlements.change": _rule(ADMINS, ("orders:write",), ("admin",)),
    "downloads.grant": _rule(WRITERS, ("downloads",)),
    "usage.read": _rule(EVERY_ROLE, ("usage:read", "downloads")),
    # model manifests: an organisation's writers record what trained its models; members and staff read them
    "models.create": _rule(WRITERS, ("orders:write",)),
    "models.read": _rule(EVERY_ROLE, ("orders:read", "orders:write", "audit:read"), ("admin", "auditor")),
    # the audit trail: organisation owners and auditors for their org, platform admins and auditors for all
    "audit.read": _rule(("owner", "auditor"), ("audit:read",), ("admin", "auditor")),
    "audit.prove": _rule(("owner", "auditor"), ("audit:read",), ("admin", "auditor")),
    "audit.bundle": _rule(("owner", "auditor"), ("audit:read",), ("admin", "auditor")),
    "audit.platform": _rule(scopes=("audit:read",), platform=("admin", "auditor"), platform_only=True),
    # a provider's owners and auditors read the grant events of its products, whoever bought them, redacted
    # (``PROVIDER_AUDIT_ACTIONS``, ``provider_audit_org_ids``)
    "audit.provider_grants": _rule(("owner", "auditor"), ("audit:read",)),
    "reviews.read": _rule(platform=("reviewer", "admin"), platform_only=True, interactive=True),
    # takedowns: anyone signed in complains; the provider's owners and admins (or a platform admin) decide; the
    # owners and admins of an org that had downloaded withdrawn content attest its deletion
    "takedowns.create": _rule(EVERY_ROLE),
    "takedowns.read": _rule(EVERY_ROLE, (), ("admin", "auditor")),
    "takedowns.decide": _rule(ADMINS, ("catalog:write",), ("admin",)),
    "takedowns.attest": _rule(ADMINS, ("orders:write",)),
    # an organisation's inbox and its webhooks
    "notifications.read": _rule(EVERY_ROLE),
    "webhooks.manage": _rule(ADMINS, ("org:admin",)),
}

# The scopes an API key may carry; an auditor's keys only those that read.
API_KEY_SCOPES = (
    "catalog:read",
    "catalog:write",
    "orders:read",  # orders and entitlements
    "orders:write",  # placing, cancelling and deciding orders; suspending, reinstating or revoking entitlements
    "downloads",
    "usage:read",
    "audit:read",
    "org:admin",  # members, API keys, webhooks
)
READ_SCOPES = frozenset({"catalog:read", "orders:read", "usage:read", "audit:read"})

# The events of other organisations (the buyers) that a provider reads when they concern its products: the
# grants of downloads and their refreshes. The buyer organisation is named; the acting user, the request id
# and the client address are not (``app.audit.redaction``).
PROVIDER_AUDIT_ACTIONS = ("download.granted", "download.refreshed")


def refusal(principal: Principal | None, action: str) -> ProblemError | None:
    """What a request alone decides: 401 when a sign-in is needed, 403 for a key without the scope, for a key
    where only people may act, and for platform-only actions without the platform role."""
    rule = RULES[action]
    if principal is None:
        return None if rule.anonymous else unauthorized()
    if principal.api_key_id is not None:
        if rule.interactive:
            return forbidden("API keys cannot do this; sign in with a password")
        if rule.scopes and principal.scopes is not None and rule.scopes.isdisjoint(principal.scopes):
            return forbidden(f"this API key lacks the {' or '.join(repr(s) for s in sorted(rule.scopes))} scope")
    if rule.platform_only and not platform_allows(principal, action):
        return forbidden(f"this needs the platform role {' or '.join(rule.platform)}")
    return None


def platform_allows(principal: Principal | None, action: str) -> bool:
    """Whether the caller's platform role lets them take ``action`` anywhere (interactive sessions only)."""
    return (
        principal is not None
        and principal.api_key_id is None
        and not principal.platform_roles.isdisjoint(RULES[action].platform)
    )


def role_allows(role: str | None, action: str) -> bool:
    return role is not None and role in RULES[action].roles


def check_role(principal: Principal, role: str | None, action: str, what: str) -> None:
    """403 unless ``role`` (the caller's in the organisation concerned) or a platform role allows ``action``."""
    if not role_allows(role, action) and not platform_allows(principal, action):
        raise forbidden(f"{what} needs the role {' or '.join(RULES[action].roles)}")


def acting_org_ids(principal: Principal, action: str | None = None) -> Select[Any]:
    """The organisations the caller acts for (with a role that allows ``action``, if given): their
    memberships, narrowed to the key's own organisation for an API key. A subquery for filters."""
    query = select(Membership.org_id).where(Membership.user_id == principal.user_id)
    if action is not None:
        query = query.where(Membership.role.in_(RULES[action].roles))
    if principal.api_key_org_id is not None:
        query = query.where(Membership.org_id == principal.api_key_org_id)
    return query


def provider_audit_org_ids(principal: Principal, org_id: uuid.UUID | None = None) -> Select[Any]:
    """The provider organisations whose products' grant events the caller reads (redacted), narrowed to
    ``org_id`` if given. A subquery for filters."""
    query = acting_org_ids(principal, "audit.provider_grants")
    return query if org_id is None else query.where(Membership.org_id == org_id)


def acts_for(principal: Principal, org_id: uuid.UUID) -> bool:
    """False for an API key of another organisation (membership is asked separately)."""
    return principal.api_key_org_id is None or principal.api_key_org_id == org_id


def role_column(principal: Principal | None, org_id: Any) -> Any:
    """``role_in`` as a scalar subquery, to select beside the resource of ``org_id``."""
    if principal is None:
        return literal(None, String).label("role")
    query = select(Membership.role).where(Membership.org_id == org_id, Membership.user_id == principal.user_id)
    if principal.api_key_org_id is not None:
        query = query.where(Membership.org_id == principal.api_key_org_id)
    return query.scalar_subquery().label("role")


async def role_in(session: AsyncSession, principal: Principal | None, org_id: uuid.UUID) -> str | None:
    """The caller's role in the organisation, or None (not a member, or an API key of another organisation)."""
    if principal is None or not acts_for(principal, org_id):
        return None
    role: str | None = await session.scalar(
        select(Membership.role).where(Membership.org_id == org_id, Membership.user_id == principal.user_id)
    )
    return role


async def org_for(
    session: AsyncSession, principal: Principal, slug: str, action: str, what: str
) -> tuple[Organization, str | None]:
    """The organisation ``slug`` and the caller's role in it, if they may take ``action`` there: 404 when they do
    not act for it (and no platform role lets them see it), 403 when their role does not allow the action."""
    row = (
        await session.execute(
            select(Organization, Membership.role)
            .outerjoin(Membership, (Membership.org_id == Organization.id) & (Membership.user_id == principal.user_id))
            .where(Organization.slug == slug)
        )
    ).one_or_none()
    if row is None:
        raise not_found(f"organisation '{slug}'")
    org, role = row
    if not acts_for(principal, org.id):
        raise not_found(f"organisation '{slug}'")
    if role is None and not platform_allows(principal, action):
        raise not_found(f"organisation '{slug}'")
    check_role(principal, role, action, what)
    return org, role
