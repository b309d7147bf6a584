"""HTTP routes of takedowns."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.types import ControllerRouterHandler

from app.auth.guards import requires
from app.deps import BEARER, Audit, Caller, Limit, Session
from app.handlers import get, post
from app.openapi import problems
from licensing.takedowns import service
from licensing.takedowns.schemas import (
    AttestationIn,
    DecisionIn,
    Status,
    TakedownCreated,
    TakedownIn,
    TakedownOut,
    TakedownPage,
)


class TakedownController(Controller):
    path = "/takedowns"
    tags = ["takedowns"]
    security = BEARER

    @post(
        "/",
        summary="Complain about content of a product (a version, paths or SHA-256 digests)",
        status_code=201,
        guards=[requires("takedowns.create")],
    )
    async def create(
        self, session: Session, audit_context: Audit, principal: Caller, data: JSONBody[TakedownIn]
    ) -> TakedownCreated:
        """Any signed-in user. An unknown product or version is 404; a path or digest that the product (or the
        named version) does not hold is 422. The provider is told (``takedown.received``); platform admins
        find pending takedowns with ``?status=received``."""
        takedown = await service.file_takedown(session, audit_context, principal, data)
        return TakedownCreated(takedown.id, "received")

    @get(
        "/",
        summary="Takedowns visible to the caller, newest first",
        guards=[requires("takedowns.read")],
    )
    async def list(
        self,
        session: Session,
        principal: Caller,
        org: Annotated[
            str | None,
            QueryParameter(description="only takedowns of this org's products or naming it as a downloader"),
        ] = None,
        status: Annotated[Status | None, QueryParameter(description="only takedowns in this state")] = None,
        cursor: FromQuery[str | None] = None,
        limit: Limit = 50,
    ) -> TakedownPage:
        """The claimant's own, the provider's, those naming the caller's orgs as downloaders; every one for
        platform admins and auditors."""
        items, next_cursor = await service.listing(
            session, principal, org=org, status=status, cursor=cursor, limit=limit
        )
        return TakedownPage(items, next_cursor)

    @get(
        "/{takedown_id:uuid}",
        summary="One takedown: its decision, the affected downloaders and their attestations",
        guards=[requires("takedowns.read")],
    )
    async def read(self, session: Session, principal: Caller, takedown_id: FromPath[uuid.UUID]) -> TakedownOut:
        return await service.read(session, principal, takedown_id)

    @post(
        "/{takedown_id:uuid}/decide",
        summary="Uphold or dismiss a takedown (the product's provider, or a platform admin)",
        status_code=200,
        guards=[requires("takedowns.decide")],
        responses=problems({409: "The takedown was already decided (`already-decided`)"}),
    )
    async def decide(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        takedown_id: FromPath[uuid.UUID],
        data: JSONBody[DecisionIn],
    ) -> TakedownOut:
        """Upheld, the content is withdrawn wherever the same SHA-256 is stored: in every version of the
        provider's products, or of every product when a platform admin decides. New grants of it are refused
        with 451 ``taken-down``, proxied downloads stop at once and no presigned URL is issued for it again.
        Every org that had downloaded it is named in ``affected``, told (``takedown.upheld``) and asked to
        attest its deletion. Dismissed, nothing else changes."""
        await service.decide(session, audit_context, principal, takedown_id, data.decision, data.reason)
        return await service.read(session, principal, takedown_id)

    @post(
        "/{takedown_id:uuid}/attest",
        summary="Attest that an affected org deleted the withdrawn content (its owners and admins)",
        status_code=200,
        guards=[requires("takedowns.attest")],
        responses=problems(
            {409: "The takedown names no download of this org (`not-affected`), or it already attested"}
        ),
    )
    async def attest(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        takedown_id: FromPath[uuid.UUID],
        data: JSONBody[AttestationIn],
    ) -> TakedownOut:
        await service.attest(session, audit_context, principal, takedown_id, data.org, data.statement)
        return await service.read(session, principal, takedown_id)


route_handlers: list[ControllerRouterHandler] = [TakedownController]
