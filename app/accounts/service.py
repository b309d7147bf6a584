"""Sign-up, organisations, memberships and API keys. Every change writes its audit event."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.me_cache import MeEntry
from app.accounts.models import ApiKey, Membership, Organization, PlatformRoleGrant, User
from app.accounts.passwords import HashingGate, hash_password, weakness
from app.accounts.schemas import OrgRoleOut
from app.audit import service as audit
from app.audit.service import AuditContext
from app.auth.principal import API_KEY_SCOPES, Principal
from app.auth.tokens import API_KEY_PREFIX, opaque_secret, secret_digest
from app.db import utcnow
from app.errors import ProblemError, conflict, forbidden, invalid, not_found, unauthorized

ORG_ADMIN_ROLES = ("owner", "admin")
MAX_API_KEY_DAYS = 366


def normalise_email(email: str) -> str:
    return email.strip().lower()


async def create_user(
    session: AsyncSession,
    context: AuditContext,
    *,
    email: str,
    password: str,
    display_name: str,
    platform_roles: list[str] | None = None,
    gate: HashingGate | None = None,
) -> User:
    email = normalise_email(email)
    if (reason := weakness(password, email)) is not None:
        raise invalid("password", f"the password {reason}")
    if await session.scalar(select(User.id).where(User.email == email)) is not None:
        raise conflict("an account with this email already exists; sign in instead", "email-taken")
    user = User(email=email, display_name=display_name.strip(), password_hash=await hash_password(password, gate))
    session.add(user)
    try:
        await session.flush()
    except IntegrityError:
        raise conflict("an account with this email already exists; sign in instead", "email-taken") from None
    for role in sorted(set(platform_roles or [])):
        session.add(PlatformRoleGrant(user_id=user.id, role=role))
    await session.flush()
    await audit.record(
        session,
        context,
        "user.signed_up",
        target_type="user",
        target_id=user.id,
        details={"email": email, "platform_roles": sorted(set(platform_roles or []))},
    )
    return user


async def platform_roles(session: AsyncSession, user_id: uuid.UUID) -> list[str]:
    return list(
        (
            await session.scalars(
                select(PlatformRoleGrant.role).where(PlatformRoleGrant.user_id == user_id).order_by("role")
            )
        ).all()
    )


async def me_entry(session: AsyncSession, user_id: uuid.UUID) -> MeEntry:
    """The user and their memberships in one round trip (``GET /me`` is the hottest authenticated path)."""
    rows = (
        await session.execute(
            select(
                User.email, User.display_name, Organization.slug, Organization.name, Organization.kind, Membership.role
            )
            .outerjoin(Membership, Membership.user_id == User.id)
            .outerjoin(Organization, Organization.id == Membership.org_id)
            .where(User.id == user_id, User.disabled_at.is_(None))
            .order_by(Organization.slug)
        )
    ).all()
    if not rows:
        # A token whose user is gone or disabled no longer authenticates anyone.
        raise unauthorized("the token's account does not exist or is disabled; sign in again")
    return MeEntry(
        id=user_id,
        email=rows[0].email,
        display_name=rows[0].display_name,
        orgs=tuple(OrgRoleOut(slug=r.slug, name=r.name, kind=r.kind, role=r.role) for r in rows if r.slug is not None),
    )


async def create_org(
    session: AsyncSession, context: AuditContext, principal: Principal, *, slug: str, name: str, kind: str
) -> Organization:
    if await session.scalar(select(Organization.id).where(Organization.slug == slug)) is not None:
        raise conflict(f"the organisation slug '{slug}' is taken; choose another", "slug-taken")
    org = Organization(slug=slug, name=name.strip(), kind=kind)
    session.add(org)
    try:
        await session.flush()
    except IntegrityError:
        raise conflict(f"the organisation slug '{slug}' is taken; choose another", "slug-taken") from None
    session.add(Membership(org_id=org.id, user_id=principal.user_id, role="owner"))
    await session.flush()
    await audit.record(
        session,
        context,
        "org.created",
        org_id=org.id,
        target_type="org",
        target_id=org.slug,
        details={"name": org.name, "kind": kind, "owner": str(principal.user_id)},
    )
    return org


async def visible_org(session: AsyncSession, principal: Principal, slug: str) -> tuple[Organization, str | None]:
    """The org and the caller's role in it; 404 unless the caller is a member or a platform admin/auditor."""
    row = (
        await session.execute(
            select(Organization, Membership.role)
            .outerjoin(
                Membership,
                (Membership.org_id == Organization.id) & (Membership.user_id == principal.user_id),
            )
            .where(Organization.slug == slug)
        )
    ).one_or_none()
    if row is None:
        raise not_found(f"organisation '{slug}'")
    org, role = row
    if principal.api_key_id is not None and principal.api_key_org_id != org.id:
        raise not_found(f"organisation '{slug}'")
    if role is None and not principal.has_platform_role("admin", "auditor"):
        raise not_found(f"organisation '{slug}'")
    return org, role


async def members(session: AsyncSession, org_id: uuid.UUID) -> list[tuple[User, str]]:
    rows = (
        await session.execute(
            select(User, Membership.role)
            .join(Membership, Membership.user_id == User.id)
            .where(Membership.org_id == org_id)
            .order_by(User.email)
        )
    ).all()
    return [(user, role) for user, role in rows]


async def add_member(
    session: AsyncSession, context: AuditContext, principal: Principal, *, slug: str, email: str, role: str
) -> tuple[User, str]:
    org, caller_role = await visible_org(session, principal, slug)
    if caller_role not in ORG_ADMIN_ROLES:
        raise forbidden("only the organisation's owners and admins can add members")
    if role == "owner" and caller_role != "owner":
        raise forbidden("only an owner can make another owner")
    if not principal.has_scope("org:admin"):
        raise forbidden("this API key lacks the 'org:admin' scope")
    email = normalise_email(email)
    user = await session.scalar(select(User).where(User.email == email, User.disabled_at.is_(None)))
    if user is None:
        raise ProblemError(404, "user-not-found", "No such user", f"no account uses {email}; ask them to sign up first")
    existing = await session.get(Membership, (org.id, user.id))
    if existing is not None:
        raise conflict(f"{email} is already a member of '{slug}' (role {existing.role})", "already-member")
    session.add(Membership(org_id=org.id, user_id=user.id, role=role))
    try:
        await session.flush()
    except IntegrityError:
        raise conflict(f"{email} is already a member of '{slug}'", "already-member") from None
    await audit.record(
        session,
        context,
        "org.member_added",
        org_id=org.id,
        target_type="user",
        target_id=user.id,
        details={"org": slug, "email": email, "role": role},
    )
    return user, role


async def create_api_key(
    session: AsyncSession,
    context: AuditContext,
    principal: Principal,
    *,
    name: str,
    org_slug: str,
    scopes: list[str],
    expires_at: dt.datetime,
) -> tuple[ApiKey, str, str]:
    """A new key and its secret, which is never stored and never shown again."""
    unknown = sorted(set(scopes) - set(API_KEY_SCOPES))
    if unknown:
        raise invalid("scopes", f"unknown scopes {unknown}; choose from {list(API_KEY_SCOPES)}")
    if expires_at.tzinfo is None:
        raise invalid("expires_at", "must include a timezone, e.g. 2027-01-31T00:00:00Z")
    now = utcnow()
    if expires_at <= now:
        raise invalid("expires_at", "must be in the future")
    if expires_at > now + dt.timedelta(days=MAX_API_KEY_DAYS):
        raise invalid("expires_at", f"must be within {MAX_API_KEY_DAYS} days; rotate keys instead")
    org, role = await visible_org(session, principal, org_slug)
    if role is None:  # platform staff see every org, but only members make its keys
        raise forbidden("only members of the organisation can create API keys for it")
    if role == "auditor" and set(scopes) - {"catalog:read", "usage:read", "audit:read"}:
        raise forbidden("an auditor's keys can only carry read scopes")
    secret = opaque_secret(API_KEY_PREFIX)
    key = ApiKey(
        user_id=principal.user_id,
        org_id=org.id,
        name=name,
        secret_hash=secret_digest(secret),
        scopes=sorted(set(scopes)),
        expires_at=expires_at,
    )
    session.add(key)
    await session.flush()
    await audit.record(
        session,
        context,
        "api_key.created",
        org_id=org.id,
        target_type="api_key",
        target_id=key.id,
        details={"name": name, "scopes": key.scopes, "expires_at": expires_at.isoformat()},
    )
    return key, org.slug, secret


async def revoke_api_key(session: AsyncSession, context: AuditContext, principal: Principal, key_id: uuid.UUID) -> None:
    """Revoke a key the caller made, or any key of an org the caller owns or administers."""
    admin_orgs = select(Membership.org_id).where(
        Membership.user_id == principal.user_id, Membership.role.in_(ORG_ADMIN_ROLES)
    )
    key = await session.scalar(
        select(ApiKey)
        .where(
            ApiKey.id == key_id,
            ApiKey.revoked_at.is_(None),
            (ApiKey.user_id == principal.user_id) | ApiKey.org_id.in_(admin_orgs),
        )
        .with_for_update()
    )
    if key is None:
        raise not_found("API key")
    await session.execute(update(ApiKey).where(ApiKey.id == key.id).values(revoked_at=utcnow()))
    await audit.record(session, context, "api_key.revoked", org_id=key.org_id, target_type="api_key", target_id=key.id)
