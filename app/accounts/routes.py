"""HTTP routes for users, organisations, memberships and API keys."""

from __future__ import annotations

import datetime as dt
import uuid

from litestar import Controller, Router, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.accounts import service
from app.accounts.me_cache import MeCache
from app.accounts.schemas import (
    ApiKeyIn,
    ApiKeyOut,
    MemberIn,
    MemberOut,
    MeOut,
    OrgIn,
    OrgOut,
    SignUp,
    UserOut,
)
from app.auth import throttle
from app.auth.guards import authenticated, interactive_only
from app.deps import Audit, Caller, Session
from app.errors import ProblemError
from app.openapi import problems
from app.settings import Settings

BEARER: list[dict[str, list[str]]] = [{"BearerToken": []}]


@post(
    "/users",
    summary="Sign up",
    tags=["accounts"],
    status_code=201,
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


@get("/me", summary="The caller, their organisations and roles", tags=["accounts"], security=BEARER)
async def me(principal: Caller, state: State) -> MeOut:
    """Served from this process's cache when it can be (see ``app.accounts.me_cache``)."""
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
    guards = [authenticated]

    @post(
        "/",
        summary="Create an organisation; the caller becomes its owner",
        status_code=201,
        responses=problems({409: "The slug is taken"}),
    )
    async def create(self, session: Session, audit_context: Audit, principal: Caller, data: JSONBody[OrgIn]) -> OrgOut:
        if principal.api_key_id is not None:
            raise ProblemError(403, "forbidden", "Forbidden", "API keys cannot create organisations")
        org = await service.create_org(
            session, audit_context, principal, slug=data.slug, name=data.name, kind=data.kind
        )
        return OrgOut(slug=org.slug, name=org.name, kind=org.kind, created_at=org.created_at, your_role="owner")

    @get("/{org:str}", summary="An organisation the caller belongs to, with its members")
    async def read(self, session: Session, principal: Caller, org: FromPath[str]) -> OrgOut:
        found, role = await service.visible_org(session, principal, org)
        people = await service.members(session, found.id)
        return OrgOut(
            slug=found.slug,
            name=found.name,
            kind=found.kind,
            created_at=found.created_at,
            your_role=role,
            members=[MemberOut(user_id=u.id, email=u.email, display_name=u.display_name, role=r) for u, r in people],
        )

    @post("/{org:str}/members", summary="Add an existing user to the organisation", status_code=201)
    async def add_member(
        self, session: Session, audit_context: Audit, principal: Caller, org: FromPath[str], data: JSONBody[MemberIn]
    ) -> MemberOut:
        user, role = await service.add_member(
            session, audit_context, principal, slug=org, email=data.email, role=data.role
        )
        return MemberOut(user_id=user.id, email=user.email, display_name=user.display_name, role=role)


class ApiKeyController(Controller):
    path = "/api-keys"
    tags = ["accounts"]
    security = BEARER
    guards = [interactive_only]

    @post(
        "/",
        summary="Create a scoped, expiring API key; the secret is shown only in this answer",
        status_code=201,
    )
    async def create(
        self, session: Session, audit_context: Audit, principal: Caller, data: JSONBody[ApiKeyIn]
    ) -> ApiKeyOut:
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

    @delete("/{key_id:uuid}", summary="Revoke an API key", status_code=204)
    async def revoke(
        self, session: Session, audit_context: Audit, principal: Caller, key_id: FromPath[uuid.UUID]
    ) -> None:
        await service.revoke_api_key(session, audit_context, principal, key_id)


router = Router(path="/", route_handlers=[sign_up, me, OrgController, ApiKeyController])
