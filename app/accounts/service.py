"""Sign-up, organisations, memberships and API keys. Every change writes its audit event."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
import uuid

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app import pagination
from app.accounts import access
from app.accounts.me_cache import MeEntry
from app.accounts.models import ApiKey, Membership, Organization, PlatformRoleGrant, User
from app.accounts.passwords import HashingGate, hash_password, weakness
from app.accounts.schemas import ApiKeyItem, MemberOut, OrgRoleOut
from app.audit import service as audit
from app.audit.service import AuditContext
from app.auth.principal import Principal
from app.auth.tokens import API_KEY_PREFIX, opaque_secret, secret_digest
from app.db import utcnow
from app.errors import ProblemError, conflict, forbidden, invalid, not_found, unauthorized

MAX_API_KEY_DAYS = 366


def normalise_email(email: str) -> str:
    """The form accounts are found by: NFKC and case folding, so ``Ada@Example.com``, ``ada@example.com``, the
    same address in fullwidth letters and its other compatibility forms are one account."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", email.strip()).casefold()).lower()


_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def email_address(email: str) -> str:
    """``email`` normalised (:func:`normalise_email`), or 422 when what it normalises to is not an address."""
    normalised = normalise_email(email)
    if not _ADDRESS.fullmatch(normalised):
        raise invalid("email", "is not an email address (name@domain.tld)")
    return normalised


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
    email = email_address(email)
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
    """The org and the caller's role in it; 404 unless the caller acts for it or is a platform admin/auditor."""
    return await access.org_for(session, principal, slug, "orgs.read", "reading an organisation")


async def my_orgs(
    session: AsyncSession, principal: Principal, cursor: str | None, limit: int
) -> tuple[list[OrgRoleOut], str | None]:
    """A page of the organisations the caller acts for (an API key: its own), with their role, by slug."""
    rows, next_cursor = await pagination.page(
        session,
        select(Organization.slug, Organization.name, Organization.kind, Membership.role)
        .join(Membership, Membership.org_id == Organization.id)
        .where(Membership.user_id == principal.user_id, Organization.id.in_(access.acting_org_ids(principal))),
        [Organization.slug],
        cursor,
        limit,
    )
    return [OrgRoleOut(slug=slug, name=name, kind=kind, role=role) for slug, name, kind, role in rows], next_cursor


def _members(org_id: uuid.UUID) -> Select[uuid.UUID, str, str, str]:
    return (
        select(User.id, User.email, User.display_name, Membership.role)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.org_id == org_id)
    )


async def members(session: AsyncSession, org_id: uuid.UUID) -> list[MemberOut]:
    """Every member, by email (shown with the organisation)."""
    rows = await session.execute(_members(org_id).order_by(User.email))
    return [MemberOut(user_id=r.id, email=r.email, display_name=r.display_name, role=r.role) for r in rows]


async def member_page(
    session: AsyncSession, org_id: uuid.UUID, cursor: str | None, limit: int
) -> tuple[list[MemberOut], str | None]:
    """A page of the members, by email."""
    rows, next_cursor = await pagination.page(session, _members(org_id), [User.email], cursor, limit)
    return [MemberOut(user_id=r[0], email=r[1], display_name=r[2], role=r[3]) for r in rows], next_cursor


async def add_member(
    session: AsyncSession, context: AuditContext, principal: Principal, *, slug: str, email: str, role: str
) -> MemberOut:
    org, caller_role = await access.org_for(session, principal, slug, "members.manage", "adding members")
    if role == "owner" and caller_role != "owner":
        raise forbidden("only an owner can make another owner")
    email = email_address(email)
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
    return MemberOut(user_id=user.id, email=user.email, display_name=user.display_name, role=role)


async def _member_to_change(
    session: AsyncSession, principal: Principal, slug: str, user_id: uuid.UUID, what: str
) -> tuple[Organization, str | None, Membership, User]:
    """The org (locked: membership changes of one org run one at a time, so the owner count is exact), the
    caller's role, and the member's membership; 404 for a user who is not a member."""
    org, caller_role = await access.org_for(session, principal, slug, "members.manage", what)
    await session.execute(select(Organization.id).where(Organization.id == org.id).with_for_update())
    row = (
        await session.execute(
            select(Membership, User)
            .join(User, User.id == Membership.user_id)
            .where(Membership.org_id == org.id, Membership.user_id == user_id)
            .execution_options(populate_existing=True)
        )
    ).one_or_none()
    if row is None:
        raise not_found(f"member {user_id} of '{slug}'")
    membership, user = row
    if membership.role == "owner" and caller_role != "owner":
        raise forbidden("only an owner can change or remove another owner")
    return org, caller_role, membership, user


async def _refuse_last_owner(session: AsyncSession, org: Organization, membership: Membership) -> None:
    if membership.role != "owner":
        return
    owners = await session.scalar(select(func.count()).where(Membership.org_id == org.id, Membership.role == "owner"))
    if (owners or 0) <= 1:
        raise conflict(f"this is the last owner of '{org.slug}'; make another member owner first", "last-owner")


async def change_member_role(
    session: AsyncSession, context: AuditContext, principal: Principal, *, slug: str, user_id: uuid.UUID, role: str
) -> MemberOut:
    org, caller_role, membership, user = await _member_to_change(session, principal, slug, user_id, "changing roles")
    if role == "owner" and caller_role != "owner":
        raise forbidden("only an owner can make another owner")
    if role != "owner":
        await _refuse_last_owner(session, org, membership)
    previous = membership.role
    if previous != role:
        membership.role = role
        await session.flush()
        await audit.record(
            session,
            context,
            "org.member_role_changed",
            org_id=org.id,
            target_type="user",
            target_id=user.id,
            details={"org": slug, "from": previous, "to": role},
        )
    return MemberOut(user_id=user.id, email=user.email, display_name=user.display_name, role=role)


async def remove_member(
    session: AsyncSession, context: AuditContext, principal: Principal, *, slug: str, user_id: uuid.UUID
) -> None:
    org, _, membership, user = await _member_to_change(session, principal, slug, user_id, "removing members")
    await _refuse_last_owner(session, org, membership)
    await session.execute(delete(Membership).where(Membership.org_id == org.id, Membership.user_id == user.id))
    # The member's keys for the org act for it no more.
    await session.execute(
        update(ApiKey)
        .where(ApiKey.org_id == org.id, ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    await audit.record(
        session,
        context,
        "org.member_removed",
        org_id=org.id,
        target_type="user",
        target_id=user.id,
        details={"org": slug, "role": membership.role},
    )


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
    unknown = sorted(set(scopes) - set(access.API_KEY_SCOPES))
    if unknown:
        raise invalid("scopes", f"unknown scopes {unknown}; choose from {list(access.API_KEY_SCOPES)}")
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
    if role == "auditor" and set(scopes) - access.READ_SCOPES:
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
    admin_orgs = access.acting_org_ids(principal, "members.manage")
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


async def list_api_keys(
    session: AsyncSession, principal: Principal, org_slug: str | None, cursor: str | None, limit: int
) -> tuple[list[ApiKeyItem], str | None]:
    """A page of the unrevoked keys the caller made, and every key of the orgs they own or administer, newest
    first; never a secret."""
    query = (
        select(ApiKey, Organization.slug)
        .join(Organization, Organization.id == ApiKey.org_id)
        .where(
            ApiKey.revoked_at.is_(None),
            (ApiKey.user_id == principal.user_id)
            | ApiKey.org_id.in_(access.acting_org_ids(principal, "members.manage")),
        )
    )
    if org_slug is not None:
        org, _ = await visible_org(session, principal, org_slug)
        query = query.where(ApiKey.org_id == org.id)
    rows, next_cursor = await pagination.page(
        session, query, [ApiKey.created_at, ApiKey.id], cursor, limit, descending=True
    )
    items = [
        ApiKeyItem(
            id=key.id,
            name=key.name,
            org=slug,
            scopes=key.scopes,
            created_at=key.created_at,
            expires_at=key.expires_at,
            last_used_at=key.last_used_at,
        )
        for key, slug in rows
    ]
    return items, next_cursor
