"""HTTP routes for users, organisations, memberships and API keys."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from litestar import Controller, Request, Router
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.accounts import access, service
from app.accounts.me_cache import MeCache
from app.accounts.schemas import (
    ApiKeyIn,
    ApiKeyOut,
    ApiKeyPage,
    MemberIn,
    MemberOut,
    MemberPage,
    MemberRoleIn,
    MeOut,
    OrgIn,
    OrgOut,
    OrgPage,
    SignUp,
    UserOut,
)
from app.auth import throttle
from app.auth.guards import requires
from app.auth.principal import Principal
from app.deps import Audit, Caller, Cursor, Limit, Session
from app.errors import PROBLEM_MEDIA_TYPE, Problem, ProblemError
from app.handlers import delete, get, patch, post
from app.openapi import problems
from app.settings import Settings

BEARER: list[dict[str, list[str]]] = [{"BearerToken": []}]
LAST_OWNER = ResponseSpec(
    Problem, description="The last owner cannot be removed or demoted (`last-owner`)", media_type=PROBLEM_MEDIA_TYPE
)


@post(
    "/users",
    summary="Sign up",
    tags=["accounts"],
    status_code=201,
    guards=[requires("public")],
    responses=problems(
        {
            409: "An account with this email already exists",
            429: "Too many sign-ups from this address, or too many passwords being hashed at once",
        }
    ),
)
async def sign_up(session: Session, audit_context: Audit, state: State, data: JSONBody[SignUp]) -> UserOut:
    """Create an account. Refused with 403 when sign-up is closed (``CORPORA_SIGNUP_OPEN=false``), and with 429
    and ``Retry-After`` when too many accounts come from one client address or too many passwords are being
    hashed at once."""
    settings: Settings = state.settings
    if not settings.signup_open:
        raise ProblemError(403, "signup-closed", "Sign-up is closed", "ask an administrator for an account")
    engine = session.bind
    assert isinstance(engine, AsyncEngine)
    # Each sign-up costs an Argon2 hash: count them per client address before computing one.
    await throttle.count_attempt(
        engine,
        [throttle.Counter(f"signup:{audit_context.client_addr or 'unknown'}", settings.signup_max_per_address)],
        dt.timedelta(seconds=settings.signup_window_seconds),
        type_="signup-throttled",
        title="Too many sign-ups",
        detail="too many accounts were created from your address",
    )
    user = await service.create_user(
        session,
        audit_context,
        email=data.email,
        password=data.password,
        display_name=data.display_name,
        gate=state.password_gate,
    )
    return UserOut(id=user.id, email=user.email, display_name=user.display_name)


@get(
    "/me",
    summary="The caller, their organisations and roles",
    tags=["accounts"],
    security=BEARER,
    guards=[requires("signed_in")],
)
async def me(request: Request[Any, Any, Any]) -> MeOut:
    """Served from this process's cache when it can be (see ``app.accounts.me_cache``)."""
    # The caller and the app's state straight from the connection (the guard made sure there is a caller): the
    # hottest authenticated path resolves no dependency and no parameter but the request.
    principal: Principal = request.scope["user"]
    state = request.app.state
    cache: MeCache = state.me_cache
    entry = cache.get(principal.user_id)
    if entry is None:
        ticket = cache.ticket()
        # A read-only session of its own rather than the request's session dependency, so that a cache hit
        # costs neither a session nor the concurrent resolution of two dependencies.
        sessionmaker: async_sessionmaker[AsyncSession] = state.sessionmaker
        async with sessionmaker() as session:
            entry = await service.me_entry(session, principal.user_id)
        cache.put(ticket, entry)
    return MeOut(
        id=entry.id,
        email=entry.email,
        display_name=entry.display_name,
        orgs=list(entry.orgs),
        platform_roles=sorted(principal.platform_roles),
    )


class OrgController(Controller):
    path = "/orgs"
    tags = ["accounts"]
    security = BEARER

    @post(
        "/",
        summary="Create an organisation; the caller becomes its owner",
        status_code=201,
        responses=problems({409: "The slug is taken"}),
        guards=[requires("orgs.create")],
    )
    async def create(self, session: Session, audit_context: Audit, principal: Caller, data: JSONBody[OrgIn]) -> OrgOut:
        """API keys cannot create organisations (403)."""
        org = await service.create_org(
            session, audit_context, principal, slug=data.slug, name=data.name, kind=data.kind
        )
        return OrgOut(slug=org.slug, name=org.name, kind=org.kind, created_at=org.created_at, your_role="owner")

    @get("/", summary="The caller's organisations and their role in each", guards=[requires("signed_in")])
    async def mine(self, session: Session, principal: Caller, cursor: Cursor = None, limit: Limit = 50) -> OrgPage:
        """An API key lists only its own organisation."""
        items, next_cursor = await service.my_orgs(session, principal, cursor, limit)
        return OrgPage(items=items, next_cursor=next_cursor)

    @get("/{org:str}", summary="An organisation the caller belongs to", guards=[requires("orgs.read")])
    async def read(self, session: Session, principal: Caller, org: FromPath[str]) -> OrgOut:
        """Members are listed for callers who may read them (an API key needs ``org:admin``)."""
        found, role = await service.visible_org(session, principal, org)
        people = None
        if access.refusal(principal, "members.read") is None:
            people = await service.members(session, found.id)
        return OrgOut(
            slug=found.slug,
            name=found.name,
            kind=found.kind,
            created_at=found.created_at,
            your_role=role,
            members=people,
        )

    @get(
        "/{org:str}/members",
        summary="The organisation's members and their roles",
        guards=[requires("members.read")],
    )
    async def members(
        self, session: Session, principal: Caller, org: FromPath[str], cursor: Cursor = None, limit: Limit = 50
    ) -> MemberPage:
        """For its members (an API key needs ``org:admin``) and platform admins and auditors; by email."""
        found, _ = await access.org_for(session, principal, org, "members.read", "reading members")
        items, next_cursor = await service.member_page(session, found.id, cursor, limit)
        return MemberPage(items=items, next_cursor=next_cursor)

    @post(
        "/{org:str}/members",
        summary="Add an existing user to the organisation (owners and admins)",
        status_code=201,
        guards=[requires("members.manage")],
        responses=problems({409: "The user is already a member (`already-member`)"}),
    )
    async def add_member(
        self, session: Session, audit_context: Audit, principal: Caller, org: FromPath[str], data: JSONBody[MemberIn]
    ) -> MemberOut:
        """Only an owner makes another owner."""
        return await service.add_member(session, audit_context, principal, slug=org, email=data.email, role=data.role)

    @patch(
        "/{org:str}/members/{user_id:uuid}",
        summary="Change a member's role (owners and admins)",
        guards=[requires("members.manage")],
        responses={409: LAST_OWNER},
    )
    async def change_member(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        org: FromPath[str],
        user_id: FromPath[uuid.UUID],
        data: JSONBody[MemberRoleIn],
    ) -> MemberOut:
        """Only an owner makes or unmakes an owner; the last owner cannot be demoted (409 ``last-owner``)."""
        return await service.change_member_role(
            session, audit_context, principal, slug=org, user_id=user_id, role=data.role
        )

    @delete(
        "/{org:str}/members/{user_id:uuid}",
        summary="Remove a member (owners and admins); their API keys for the organisation are revoked",
        status_code=204,
        guards=[requires("members.manage")],
        responses={409: LAST_OWNER},
    )
    async def remove_member(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        org: FromPath[str],
        user_id: FromPath[uuid.UUID],
    ) -> None:
        """The last owner cannot be removed (409 ``last-owner``)."""
        await service.remove_member(session, audit_context, principal, slug=org, user_id=user_id)


class ApiKeyController(Controller):
    path = "/api-keys"
    tags = ["accounts"]
    security = BEARER
    guards = [requires("credentials.manage")]

    @post(
        "/",
        summary="Create a scoped, expiring API key; the secret is shown only in this answer",
        status_code=201,
    )
    async def create(
        self, session: Session, audit_context: Audit, principal: Caller, data: JSONBody[ApiKeyIn]
    ) -> ApiKeyOut:
        """Scopes: ``catalog:read``, ``catalog:write``, ``orders:read`` (orders and entitlements), ``orders:write``,
        ``downloads``, ``usage:read``, ``audit:read``, ``org:admin`` (members, keys, webhooks). A key acts for its own
        organisation only; an auditor's keys carry read scopes only."""
        key, org_slug, secret = await service.create_api_key(
            session,
            audit_context,
            principal,
            name=data.name,
            org_slug=data.org,
            scopes=data.scopes,
            expires_at=data.expires_at,
        )
        return ApiKeyOut(
            id=key.id,
            name=key.name,
            org=org_slug,
            scopes=key.scopes,
            created_at=key.created_at,
            expires_at=key.expires_at,
            key=secret,
        )

    @get("/", summary="Unrevoked API keys: the caller's own, and all of the orgs they own or administer")
    async def list(
        self,
        session: Session,
        principal: Caller,
        org: FromQuery[str | None] = None,
        cursor: Cursor = None,
        limit: Limit = 50,
    ) -> ApiKeyPage:
        """Newest first; never shows a secret. ``last_used_at`` is kept to the minute."""
        items, next_cursor = await service.list_api_keys(session, principal, org, cursor, limit)
        return ApiKeyPage(items=items, next_cursor=next_cursor)

    @delete("/{key_id:uuid}", summary="Revoke an API key", status_code=204)
    async def revoke(
        self, session: Session, audit_context: Audit, principal: Caller, key_id: FromPath[uuid.UUID]
    ) -> None:
        await service.revoke_api_key(session, audit_context, principal, key_id)


router = Router(path="/", route_handlers=[sign_up, me, OrgController, ApiKeyController])
