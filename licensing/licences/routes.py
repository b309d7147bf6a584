"""HTTP routes of licences (with their ODRL policies) and of licence checks."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.types import ControllerRouterHandler

from app.auth.guards import OPEN_TO_AUDITORS, requires
from app.deps import BEARER, Audit, Caller, Limit, OptionalCaller, Session
from app.handlers import get, post
from app.openapi import problems
from licensing.licences import service, terms
from licensing.licences.models import Licence
from licensing.licences.schemas import CheckIn, CheckOut, ItemVerdictOut, LicenceIn, LicenceOut, LicencePage


def licence_out(licence: Licence, org: str | None) -> LicenceOut:
    return LicenceOut(
        id=licence.id,
        name=licence.name,
        spdx=licence.spdx,
        url=licence.url,
        text_sha256=licence.text_sha256,
        uses=list(licence.uses),
        duties=list(licence.duties),
        territories=list(licence.territories),
        note=licence.note,
        custom=licence.owner_org_id is not None,
        org=org,
    )


class LicenceController(Controller):
    path = "/licences"
    tags = ["licensing"]

    @get(
        "/",
        summary="The licence catalogue: seeded SPDX licences and providers' custom licences",
        guards=[requires("catalog.read")],
    )
    async def list(self, session: Session, cursor: FromQuery[str | None] = None, limit: Limit = 50) -> LicencePage:
        rows, next_cursor = await service.list_licences(session, cursor=cursor, limit=limit)
        return LicencePage(items=[licence_out(licence, org) for licence, org in rows], next_cursor=next_cursor)

    @post(
        "/",
        summary="Add a custom licence with its AI-use terms",
        status_code=201,
        security=BEARER,
        guards=[requires("catalog.write")],
        responses=problems({409: "The organisation already has a licence of that name"}),
    )
    async def create(
        self, session: Session, audit_context: Audit, principal: Caller, data: JSONBody[LicenceIn]
    ) -> LicenceOut:
        """The licence gets the id ``LicenseRef-<org>-<name>``; an optional ``spdx`` expression is validated."""
        licence, org = await service.create_licence(session, audit_context, principal, msgspec.structs.asdict(data))
        return licence_out(licence, org)

    @get("/{licence_id:str}", summary="One licence and its AI-use terms", guards=[requires("catalog.read")])
    async def read(self, session: Session, licence_id: FromPath[str]) -> LicenceOut:
        licence, org = await service.get_licence(session, licence_id)
        return licence_out(licence, org)

    @get(
        "/{licence_id:str}/odrl",
        summary="The licence as an ODRL 2.2 policy",
        media_type="application/ld+json",
        guards=[requires("catalog.read")],
    )
    async def odrl(
        self, request: Request[Any, Any, Any], session: Session, licence_id: FromPath[str]
    ) -> dict[str, Any]:
        """AI uses are actions of the profile ``https://corpora.dev/odrl/ai-use``; uses not granted are
        prohibitions; duties attach to every permission."""
        licence, _ = await service.get_licence(session, licence_id)
        return terms.odrl_policy(service.licence_dict(licence), str(request.base_url).rstrip("/"))


@post(
    "/licensing/check",
    summary="Whether a combination of corpus versions may be used for a purpose",
    status_code=200,
    tags=["licensing"],
    opt={OPEN_TO_AUDITORS: True},
    responses=problems({404: "A product or version named in `items` does not exist or is not visible"}),
    guards=[requires("catalog.read")],
)
async def licence_check(session: Session, optional_principal: OptionalCaller, data: JSONBody[CheckIn]) -> CheckOut:
    """Per item: allowed or not and why; for the whole: accumulated duties (attribution list, share-alike) and
    conflicts between the items' terms. An item without ``version`` means its latest published version."""
    result, _ = await service.licence_check(
        session, optional_principal, [(i.product, i.version) for i in data.items], data.use, data.territory
    )
    return CheckOut(
        allowed=result.allowed,
        use=data.use,
        territory=data.territory,
        items=[ItemVerdictOut(v.product, v.version, v.licence_id, v.allowed, v.reason, v.duties) for v in result.items],
        duties=result.duties,
        conflicts=result.conflicts,
    )


route_handlers: list[ControllerRouterHandler] = [LicenceController, licence_check]
