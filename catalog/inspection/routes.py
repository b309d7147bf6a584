"""HTTP routes of inspection: profile, masked preview and opt-out evidence of a version; sample reviews."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody, QueryParameter

from app.auth.guards import requires
from app.deps import Audit, Caller, OptionalCaller, Session
from app.handlers import get, post
from app.openapi import problems
from app.settings import Settings
from catalog.inspection import service
from catalog.inspection.schemas import (
    EvidencePage,
    PreviewOut,
    ProfileOut,
    SampleDrawnOut,
    SampleIn,
    SampleOut,
    VerdictsIn,
)

BEARER: list[dict[str, list[str]]] = [{"BearerToken": []}]
VERSION_PATH = "/products/{slug:str}/versions/{version:str}"
PreviewLimit = Annotated[int, QueryParameter(ge=1, le=service.PREVIEW_LIMIT)]
FilePath = Annotated[str, QueryParameter(min_length=1, max_length=1024)]


class InspectionController(Controller):
    path = "/"
    tags = ["inspection"]

    @get(
        VERSION_PATH + "/profile",
        summary="The version's inspection profile: per file its format, records, fields, tokens, languages, "
        "duplicates and personal data found",
        security=[{}, *BEARER],
        guards=[requires("catalog.read")],
    )
    async def profile(
        self, session: Session, optional_principal: OptionalCaller, slug: FromPath[str], version: FromPath[str]
    ) -> ProfileOut:
        """Computed by the platform from the stored bytes once every file is verified (``status`` is
        ``pending`` or ``running`` until then, ``failed`` when a file could not be read as its format claims).
        Visible to whoever may see the version."""
        return await service.version_profile(session, optional_principal, slug, version)

    @get(
        VERSION_PATH + "/preview",
        summary="The first records of a file (at most 20), personal data masked",
        security=BEARER,
        guards=[requires("versions.preview")],
    )
    async def preview(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        state: State,
        slug: FromPath[str],
        version: FromPath[str],
        path: FilePath,
        limit: PreviewLimit = service.PREVIEW_LIMIT,
    ) -> PreviewOut:
        """For any signed-in caller when the product's ``preview`` is true (else 404; the provider's members and
        platform staff always); never charged to a quota; recorded as ``version.previewed``."""
        fmt, records = await service.preview(
            session, audit_context, principal, state.object_store, slug, version, path, limit
        )
        return PreviewOut(path=path, format=fmt, records=records)

    @get(
        VERSION_PATH + "/opt-out-evidence",
        summary="robots.txt and TDMRep answers the platform fetched for each crawled source",
        security=[{}, *BEARER],
        guards=[requires("catalog.read")],
    )
    async def opt_out_evidence(
        self, session: Session, optional_principal: OptionalCaller, slug: FromPath[str], version: FromPath[str]
    ) -> EvidencePage:
        """Fetched when the version is created, for each `public_web_crawl` source with a URL; the exact bytes
        are kept content-addressed (``evidence/sha256/…``) under retention. ``warning`` is set when the site
        reserves text and data mining or keeps AI crawlers out."""
        return EvidencePage(items=await service.opt_out_evidence(session, optional_principal, slug, version))

    @post(
        VERSION_PATH + "/samples",
        summary="Draw a reproducible random sample of the version's records (platform reviewers)",
        status_code=201,
        security=BEARER,
        guards=[requires("samples.draw")],
        responses=problems({409: "The version's files are not all profiled yet"}),
    )
    async def draw(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        state: State,
        slug: FromPath[str],
        version: FromPath[str],
        data: JSONBody[SampleIn],
    ) -> SampleDrawnOut:
        """The same seed over the same files draws the same records. Thresholds: 0.96 for ``manual``, 0.98 for
        ``technical`` samples. Never for a version of an organisation the reviewer belongs to (403)."""
        return await service.draw_sample(
            session,
            audit_context,
            principal,
            state.object_store,
            slug,
            version,
            size=data.size,
            kind=data.kind,
            seed=data.seed,
        )

    @get(
        "/samples/{sample_id:uuid}",
        summary="A sample review: how much is judged, its pass rate, and once finished its signed record",
        security=BEARER,
        guards=[requires("samples.read")],
    )
    async def read_sample(self, session: Session, principal: Caller, sample_id: FromPath[uuid.UUID]) -> SampleOut:
        """``record`` is a JWS (EdDSA, keys at ``/.well-known/jwks.json``) of the result and every verdict.
        Visible to platform reviewers, admins and auditors and to the provider's members."""
        return await service.read_sample(session, principal, sample_id)

    @post(
        "/samples/{sample_id:uuid}/verdicts",
        summary="Judge sampled records: ok, or not ok with a category",
        status_code=200,
        security=BEARER,
        guards=[requires("samples.judge")],
        responses=problems({409: "Every item is judged already and the result signed"}),
    )
    async def verdicts(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        state: State,
        sample_id: FromPath[uuid.UUID],
        data: JSONBody[VerdictsIn],
    ) -> SampleOut:
        settings: Settings = state.settings
        return await service.judge(
            session, audit_context, principal, state.keyring, settings.jwt_issuer, sample_id, data.verdicts
        )


route_handlers = [InspectionController]
