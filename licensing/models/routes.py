"""HTTP routes of model manifests, their EU training-content summary, attribution NOTICE and TC260 export."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, Response
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.types import ControllerRouterHandler

from app.auth.guards import requires
from app.deps import BEARER, Audit, Caller, Limit, Session
from app.handlers import get, post
from app.openapi import ALSO_ANSWERS, problems
from licensing.models import markdown, notice, service, summary, tc260
from licensing.models.schemas import ModelIn, ModelOut, ModelPage, SummaryFormat

MARKDOWN_MEDIA_TYPE = "text/markdown; charset=utf-8"
CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
TEXT_MEDIA_TYPE = "text/plain; charset=utf-8"


class ModelController(Controller):
    path = "/models"
    tags = ["models"]
    security = BEARER

    @post(
        "/",
        summary="Record which corpus versions trained a model, under which entitlements, for which use",
        status_code=201,
        guards=[requires("models.create")],
        responses=problems(
            {
                409: "The organisation already recorded this model name and version (`model-exists`)",
                422: "A field is invalid, or an item's purpose chain does not close: `not-entitled` (the "
                "entitlement is not the org's, is revoked or suspended, is for another product, does not cover "
                "the version, or was not granted for the use or its licence does not permit it) or "
                "`never-downloaded` (no file of the version was downloaded under it); `item` is the index",
            }
        ),
    )
    async def create(
        self, session: Session, audit_context: Audit, principal: Caller, data: JSONBody[ModelIn]
    ) -> ModelOut:
        """Each item is accepted only when its purpose chain closes. The manifest records per item the files and
        bytes downloaded and the licence as accepted, and the combined licence verdict; ``manifest_digest`` is
        ``sha256:`` + the SHA-256 of the canonical JSON (sorted keys, no whitespace, UTF-8) of this answer
        without ``id``, ``created_at`` and ``manifest_digest``."""
        return await service.create_manifest(session, audit_context, principal, data)

    @get("/", summary="Model manifests, newest first", guards=[requires("models.read")])
    async def list(
        self,
        session: Session,
        principal: Caller,
        org: Annotated[str | None, QueryParameter(description="only this organisation's models")] = None,
        cursor: FromQuery[str | None] = None,
        limit: Limit = 50,
    ) -> ModelPage:
        items, next_cursor = await service.list_manifests(session, principal, org, cursor, limit)
        return ModelPage(items=items, next_cursor=next_cursor)

    @get("/{model_id:uuid}", summary="One model manifest", guards=[requires("models.read")])
    async def read(self, session: Session, principal: Caller, model_id: FromPath[uuid.UUID]) -> ModelOut:
        """With ``flags``: each upheld takedown that withdrew content the manifest records (the manifest itself,
        and its digest, never change)."""
        return await service.read_manifest(session, principal, model_id)

    @get(
        "/{model_id:uuid}/summary",
        summary="The EU AI Act public summary of training content (EU AI Office template, July 2025)",
        opt={ALSO_ANSWERS: (MARKDOWN_MEDIA_TYPE,)},
        guards=[requires("models.read")],
    )
    async def training_summary(
        self,
        session: Session,
        principal: Caller,
        model_id: FromPath[uuid.UUID],
        fmt: Annotated[SummaryFormat, QueryParameter(name="format", description="json (default) or markdown")] = "json",
    ) -> Response[summary.TrainingContentSummary | str]:
        """Sections as in the template: ``general``, ``public_datasets``, ``licensed_data``, ``crawled_data`` (with
        ``top_domains``), ``user_data``, ``synthetic_data``, ``other_sources``, ``tdm_opt_out``,
        ``illegal_content``; filled from the manifest and the provenance of each trained version. With
        ``format=markdown`` the same as a Markdown document."""
        manifest = await service.get_manifest(session, principal, model_id)
        filled = summary.build(
            service.manifest_out(manifest.document), await service.version_contexts(session, model_id)
        )
        if fmt == "markdown":
            return Response(markdown.render(filled), media_type=MARKDOWN_MEDIA_TYPE)
        return Response(filled)

    @get(
        "/{model_id:uuid}/notice",
        summary="The attribution NOTICE for every trained corpus whose licence requires attribution",
        media_type=TEXT_MEDIA_TYPE,
        responses={200: ResponseSpec(data_container=str, media_type=TEXT_MEDIA_TYPE, description="The NOTICE")},
        guards=[requires("models.read")],
    )
    async def attribution_notice(self, session: Session, principal: Caller, model_id: FromPath[uuid.UUID]) -> str:
        manifest = await service.get_manifest(session, principal, model_id)
        return notice.render(service.manifest_out(manifest.document), await service.version_contexts(session, model_id))

    @get(
        "/{model_id:uuid}/tc260.csv",
        summary="The corpus annex of a TC260-003 generative-AI filing, as CSV",
        media_type=CSV_MEDIA_TYPE,
        responses={
            200: ResponseSpec(
                data_container=str,
                media_type=CSV_MEDIA_TYPE,
                description="A header row, then per source of each trained version: its licence, its share of the "
                "training data and the harmful-content sampling results recorded in the provenance",
            )
        },
        guards=[requires("models.read")],
    )
    async def tc260_annex(self, session: Session, principal: Caller, model_id: FromPath[uuid.UUID]) -> Response[str]:
        manifest = await service.get_manifest(session, principal, model_id)
        body = tc260.render(service.manifest_out(manifest.document), await service.version_contexts(session, model_id))
        return Response(
            body,
            media_type=CSV_MEDIA_TYPE,
            headers={"Content-Disposition": f'attachment; filename="tc260-{model_id}.csv"'},
        )


route_handlers: list[ControllerRouterHandler] = [ModelController]
