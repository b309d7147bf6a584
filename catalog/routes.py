"""HTTP routes of the catalogue: products, versions, files, review."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response
from litestar.datastructures import ResponseHeader, State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.guards import requires
from app.deps import Audit, Caller, Limit, OptionalCaller, ReadSession, Session
from app.errors import PROBLEM_MEDIA_TYPE, Problem, invalid, not_found
from app.handlers import delete, get, patch, post
from app.openapi import DOCUMENTED_AT, DocumentedAt, problems
from app.settings import Settings
from catalog import provenance, search, service, uploads
from catalog.inspection import service as inspection
from catalog.models import Product, ProductVersion
from catalog.schemas import (
    Access,
    CompleteIn,
    FacetCount,
    FileIn,
    FileOut,
    FilePlanOut,
    Industry,
    LifecycleIn,
    ManifestEntry,
    Modality,
    MultipartUpload,
    PartUrl,
    PendingFile,
    ProductIn,
    ProductOut,
    ProductPage,
    ProductPatch,
    ReviewIn,
    SingleUpload,
    UploadedPart,
    VersionIn,
    VersionOut,
    VersionPatch,
    VersionSummary,
    WithdrawIn,
)

BEARER: list[dict[str, list[str]]] = [{"BearerToken": []}]
VERSION_PATH = "/{slug:str}/versions/{version:str}"
# One template for every file route: GET on it (the download redirect) takes a file path, so the upload
# routes share it, parse their file id from it, and are documented at the paths clients call (DocumentedAt).
FILE_PATH = VERSION_PATH + "/files/{path:path}"


def file_ref(path: str, *, action: str | None) -> uuid.UUID:
    """The file id in ``<file_id>`` or ``<file_id>/<action>``; 404 for anything else."""
    parts = path.strip("/").split("/")
    expected = 1 if action is None else 2
    if len(parts) != expected or (action is not None and parts[1] != action):
        raise not_found("file route")
    try:
        return uuid.UUID(parts[0])
    except ValueError:
        raise not_found("file") from None


NOT_VISIBLE = ResponseSpec(
    Problem, description="No such version, or a draft the caller may not see", media_type=PROBLEM_MEDIA_TYPE
)


def product_out(
    product: Product,
    org_slug: str,
    versions: list[ProductVersion] | None = None,
    *,
    latest_version: str | None = None,
) -> ProductOut:
    """``latest_version``: the newest released version, from ``versions`` when given."""
    out = ProductOut(
        id=product.id,
        slug=product.slug,
        org=org_slug,
        title=product.title,
        summary=product.summary,
        description=product.description,
        industry=product.industry,
        modality=product.modality,
        languages=product.languages,
        tags=product.tags,
        access=product.access,
        status=product.status,
        created_at=product.created_at,
        updated_at=product.updated_at,
        preview=product.preview,
        latest_version=latest_version,
    )
    if versions is not None:
        out.versions = [VersionSummary(v.version, v.state, v.published_at, v.manifest_digest) for v in versions]
        released = [v for v in versions if v.state in ("published", "deprecated")]
        out.latest_version = released[0].version if released else None
    return out


async def version_out(session: AsyncSession, slug: str, row: ProductVersion, *, show_pending: bool) -> VersionOut:
    files = await service.version_files(session, row.id)
    verified = [f for f in files if f.status == "verified"]
    pending = [f for f in files if f.status != "verified"]
    return VersionOut(
        product=slug,
        version=row.version,
        state=row.state,
        licence_id=row.licence_id,
        changelog=row.changelog,
        provenance=row.provenance,
        files=[ManifestEntry(f.path, f.size, f.sha256, f.media_type) for f in verified],
        manifest_digest=row.manifest_digest or (service.manifest_digest(verified) if verified else None),
        total_size=sum(f.size for f in verified),
        created_at=row.created_at,
        submitted_at=row.submitted_at,
        published_at=row.published_at,
        review_reason=row.review_reason,
        deprecated_at=row.deprecated_at,
        withdrawn_at=row.withdrawn_at,
        pending_files=[PendingFile(f.id, f.path, f.size, f.sha256) for f in pending] if show_pending else None,
    )


def plan_out(plan: uploads.Plan) -> FilePlanOut:
    upload: SingleUpload | MultipartUpload
    if plan.url is not None:
        headers = {"Content-Type": plan.file.media_type}
        upload = SingleUpload(method="PUT", url=plan.url, headers=headers, expires_at=plan.expires_at)
    else:
        assert plan.part_urls is not None
        assert plan.file.upload_id is not None
        assert plan.file.part_size is not None
        upload = MultipartUpload(
            upload_id=plan.file.upload_id,
            part_size=plan.file.part_size,
            parts=[PartUrl(number, url) for number, url in plan.part_urls],
            expires_at=plan.expires_at,
            uploaded_parts=[UploadedPart(n, etag, size) for n, etag, size in plan.uploaded_parts or []],
        )
    return FilePlanOut(file_id=plan.file.id, path=plan.file.path, upload=upload, stored=plan.stored)


def _provenance(body: Any) -> dict[str, Any] | None:
    return None if body is None else msgspec.to_builtins(body)


class ProductController(Controller):
    path = "/products"
    tags = ["catalog"]

    @post(
        "/",
        summary="Create a product for a provider organisation",
        status_code=201,
        security=BEARER,
        guards=[requires("catalog.write")],
        responses=problems({409: "The slug is taken"}),
    )
    async def create(
        self, session: Session, audit_context: Audit, principal: Caller, data: JSONBody[ProductIn]
    ) -> ProductOut:
        fields = msgspec.structs.asdict(data)
        org = fields.pop("org")
        product, org_slug = await service.create_product(session, audit_context, principal, org_slug=org, fields=fields)
        return product_out(product, org_slug, [])

    @get(
        "/",
        summary="Search and browse the catalogue, with facet counts",
        responses={
            400: ResponseSpec(
                Problem,
                description="A cursor that is not the next_cursor of a page (problem type `invalid-cursor`)",
                media_type=PROBLEM_MEDIA_TYPE,
            ),
            422: ResponseSpec(
                Problem,
                description="An unknown industry, modality, access or use, a malformed language tag, "
                "or a limit outside 1-100",
                media_type=PROBLEM_MEDIA_TYPE,
            ),
        },
        response_headers=[
            ResponseHeader(
                name="Corpora-Facets",
                description="`exact`, or `estimated` when the query matches too many products to count each one",
                documentation_only=True,
            )
        ],
        guards=[requires("catalog.read")],
    )
    async def list_products(
        self,
        read_session: ReadSession,
        optional_principal: OptionalCaller,
        q: Annotated[
            str | None,
            QueryParameter(
                max_length=search.MAX_QUERY_LENGTH,
                description="words, Chinese or English, matched in title, summary, description and tags; "
                "every word must match (case-insensitive; Chinese is matched by characters and character pairs)",
            ),
        ] = None,
        industry: FromQuery[Industry | None] = None,
        modality: FromQuery[Modality | None] = None,
        language: Annotated[str | None, QueryParameter(max_length=35, description="a BCP 47 tag, e.g. zh-Hans")] = None,
        access: FromQuery[Access | None] = None,
        org: Annotated[
            str | None, QueryParameter(max_length=63, description="the provider organisation's slug")
        ] = None,
        use: Annotated[
            search.Use | None,
            QueryParameter(description="a permitted use: products with a released version under a licence allowing it"),
        ] = None,
        cursor: Annotated[str | None, QueryParameter(description="the next_cursor of the previous page")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=search.MAX_LIMIT)] = search.DEFAULT_LIMIT,
    ) -> Response[ProductPage]:
        """Published products, and the drafts of the caller's organisations, newest listing first; each with its
        ``latest_version`` (the newest published version, or null). Facets count
        the products matching the whole query per industry, modality, language, access and provider; for a
        query that matches very many products they are estimated (header ``Corpora-Facets: estimated``).
        ``next_cursor`` pages on; products listed meanwhile never shift later pages. Read from the read replica
        when one is configured, so at most its staleness bound (5 s by default) behind the primary."""
        result = await search.search_products(
            read_session,
            optional_principal,
            search.SearchQuery(
                q=q,
                industry=industry,
                modality=modality,
                language=language,
                access=access,
                org=org,
                use=use,
                cursor=cursor,
                limit=limit,
            ),
        )
        latest = await service.latest_versions(read_session, [product.id for product, _ in result.products])
        page = ProductPage(
            items=[
                product_out(product, org_slug, latest_version=latest.get(product.id))
                for product, org_slug in result.products
            ],
            next_cursor=result.next_cursor,
            facets={facet: [FacetCount(value, n) for value, n in values] for facet, values in result.facets.items()},
        )
        return Response(page, headers={"Corpora-Facets": "exact" if result.facets_exact else "estimated"})

    @get("/{slug:str}", summary="A product with its versions", guards=[requires("catalog.read")])
    async def read(self, session: Session, optional_principal: OptionalCaller, slug: FromPath[str]) -> ProductOut:
        product, org_slug, role = await service.product_for_reading(session, optional_principal, slug)
        versions = await service.versions_of(
            session, product.id, include_drafts=service.can_see_drafts(optional_principal, product, role)
        )
        return product_out(product, org_slug, versions)

    @patch(
        "/{slug:str}",
        summary="Change a product's description, classification or listing",
        security=BEARER,
        guards=[requires("catalog.write")],
        responses=problems({409: "A product is listed once one of its versions is published (`no-published-version`)"}),
    )
    async def update(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        slug: FromPath[str],
        data: JSONBody[ProductPatch],
    ) -> ProductOut:
        changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}
        product, org_slug = await service.update_product(session, audit_context, principal, slug, changes)
        versions = await service.versions_of(session, product.id, include_drafts=True)
        return product_out(product, org_slug, versions)

    @post(
        "/{slug:str}/versions",
        summary="Create a draft version",
        status_code=201,
        security=BEARER,
        guards=[requires("catalog.write")],
        responses=problems({409: "That version already exists; versions are never reused (`version-exists`)"}),
    )
    async def create_version(
        self, session: Session, audit_context: Audit, principal: Caller, slug: FromPath[str], data: JSONBody[VersionIn]
    ) -> VersionOut:
        if data.licence_id is not None and data.licence is not None and data.licence != data.licence_id:
            raise invalid("licence", "give licence_id or licence, not two different ones")
        row = await service.create_version(
            session,
            audit_context,
            principal,
            slug,
            version=data.version,
            changelog=data.changelog,
            licence_id=data.licence_id or data.licence,
            provenance=_provenance(data.provenance),
        )
        return await version_out(session, slug, row, show_pending=True)

    @get(VERSION_PATH, summary="A version with its manifest and manifest_digest", guards=[requires("catalog.read")])
    async def read_version(
        self, session: Session, optional_principal: OptionalCaller, slug: FromPath[str], version: FromPath[str]
    ) -> VersionOut:
        _, _, row, role = await service.version_for_reading(session, optional_principal, slug, version)
        return await version_out(session, slug, row, show_pending=role is not None)

    @patch(
        VERSION_PATH,
        summary="Change a draft version's changelog, licence or provenance",
        security=BEARER,
        guards=[requires("catalog.write")],
        responses=problems({409: "The version is not a draft (`version-frozen`): published versions never change"}),
    )
    async def update_version(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        slug: FromPath[str],
        version: FromPath[str],
        data: JSONBody[VersionPatch],
    ) -> VersionOut:
        changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}
        if "provenance" in changes:
            changes["provenance"] = _provenance(changes["provenance"])
        row = await service.update_version(session, audit_context, principal, slug, version, changes)
        return await version_out(session, slug, row, show_pending=True)

    @post(
        VERSION_PATH + "/files",
        summary="Register a file and get its upload plan (presigned PUT or multipart)",
        status_code=201,
        security=BEARER,
        guards=[requires("catalog.write")],
        responses=problems(
            {409: "The path is in the version already (`path-exists`), or the version is frozen (`version-frozen`)"}
        ),
    )
    async def plan_file(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        state: State,
        slug: FromPath[str],
        version: FromPath[str],
        data: JSONBody[FileIn],
    ) -> FilePlanOut:
        """Files up to 8 MiB get one presigned PUT; larger ones an S3 multipart upload with a presigned URL
        per part. Asking again for a pending file with the same content resumes its upload."""
        plan = await uploads.plan_upload(
            session,
            audit_context,
            principal,
            state.object_store,
            slug,
            version,
            path=data.path,
            size=data.size,
            sha256=data.sha256,
            media_type=data.media_type,
        )
        return plan_out(plan)

    @post(
        FILE_PATH,
        summary="Finish an upload; the server verifies size and SHA-256",
        status_code=200,
        security=BEARER,
        guards=[requires("catalog.write")],
        opt={DOCUMENTED_AT: DocumentedAt("path", "{file_id}/complete")},
        responses=problems(
            {409: "Nothing uploaded yet (`upload-missing`), or the version is not a draft (`version-frozen`)"}
        ),
    )
    async def complete_file(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        state: State,
        slug: FromPath[str],
        version: FromPath[str],
        path: FromPath[str],
        data: JSONBody[CompleteIn | None] = None,
    ) -> FileOut:
        """Answers 422 with problem type ``checksum-mismatch`` or ``size-mismatch`` when the bytes differ
        from what was declared; the uploaded object is then deleted."""
        file_id = file_ref(path, action="complete")
        parts = [(p.part_number, p.etag) for p in data.parts] if data and data.parts else None
        file = await uploads.complete_upload(
            session, audit_context, principal, state.object_store, slug, version, file_id, parts=parts
        )
        return FileOut(file.id, file.path, file.size, file.sha256, file.media_type, file.status)

    @delete(
        FILE_PATH,
        summary="Remove a file from a draft version",
        status_code=204,
        security=BEARER,
        guards=[requires("catalog.write")],
        opt={DOCUMENTED_AT: DocumentedAt("path", "{file_id}")},
        responses=problems({409: "The version is not a draft (`version-frozen`): published versions never change"}),
    )
    async def delete_file(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        state: State,
        slug: FromPath[str],
        version: FromPath[str],
        path: FromPath[str],
    ) -> None:
        file_id = file_ref(path, action=None)
        await uploads.delete_file(session, audit_context, principal, state.object_store, slug, version, file_id)

    @post(
        VERSION_PATH + "/publish",
        summary="Freeze the version: to review, or published",
        status_code=200,
        security=BEARER,
        guards=[requires("catalog.write")],
        responses=problems(
            {
                409: "The version is not a draft (`version-frozen`), or a file is still uploading (`files-pending`)",
                422: "The version lacks a verified file, a licence or provenance (`version-incomplete`)",
            }
        ),
    )
    async def publish(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        state: State,
        slug: FromPath[str],
        version: FromPath[str],
    ) -> VersionOut:
        """Needs at least one verified file, a licence and provenance. With review required
        (``CORPORA_REVIEW_REQUIRED``) the version waits in ``in_review`` for a platform reviewer."""
        settings: Settings = state.settings
        row = await service.publish_version(
            session, audit_context, principal, slug, version, review_required=settings.review_required
        )
        return await version_out(session, slug, row, show_pending=True)

    @post(
        VERSION_PATH + "/review",
        summary="Approve or reject a version in review (platform reviewers)",
        status_code=200,
        security=BEARER,
        guards=[requires("versions.review")],
        responses=problems(
            {409: "Not in review; or, with CORPORA_REVIEW_REQUIRES_SAMPLE, approved without a passed sample review"}
        ),
    )
    async def review(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        state: State,
        slug: FromPath[str],
        version: FromPath[str],
        data: JSONBody[ReviewIn],
    ) -> VersionOut:
        row = await service.review_version(
            session, audit_context, principal, slug, version, decision=data.decision, reason=data.reason
        )
        settings: Settings = state.settings
        if data.decision == "approve" and settings.review_requires_sample:
            await inspection.require_passed_sample(session, slug, version)  # raising rolls the approval back
        return await version_out(session, slug, row, show_pending=False)

    @post(
        VERSION_PATH + "/deprecate",
        summary="Mark a published version deprecated",
        status_code=200,
        security=BEARER,
        guards=[requires("catalog.write")],
        responses=problems({409: "The version cannot become deprecated from its state (`invalid-transition`)"}),
    )
    async def deprecate(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        slug: FromPath[str],
        version: FromPath[str],
        data: JSONBody[LifecycleIn],
    ) -> VersionOut:
        row = await service.change_lifecycle(
            session, audit_context, principal, slug, version, to="deprecated", reason=data.reason
        )
        return await version_out(session, slug, row, show_pending=False)

    @post(
        VERSION_PATH + "/withdraw",
        summary="Withdraw a version: no new downloads",
        status_code=200,
        security=BEARER,
        guards=[requires("versions.withdraw")],
        responses=problems({409: "The version cannot become withdrawn from its state (`invalid-transition`)"}),
    )
    async def withdraw(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        slug: FromPath[str],
        version: FromPath[str],
        data: JSONBody[WithdrawIn],
    ) -> VersionOut:
        """Needs a reason: buyers who ask for the version's files are refused with it."""
        row = await service.change_lifecycle(
            session, audit_context, principal, slug, version, to="withdrawn", reason=data.reason
        )
        return await version_out(session, slug, row, show_pending=False)

    @get(
        VERSION_PATH + "/croissant",
        summary="The version as Croissant 1.1 JSON-LD, with Responsible-AI (RAI) fields",
        description=(
            "Croissant 1.1 metadata (conforming to Croissant 1.1 and RAI 1.0): the product's name, description, "
            "version, SPDX licence URL, provider, keywords and languages; one `cr:FileObject` per verified file "
            "with its download URL, size, media type and SHA-256; the RAI fields drawn from the provenance "
            "(collection, its type and timeframe, preprocessing, annotation, personal information, social impact, "
            "use cases); and the sources and processing activities as PROV-O terms. Anyone may read a released "
            "version; a draft or a version in review only its provider's members and platform staff (else 404)."
        ),
        media_type=provenance.CROISSANT_MEDIA_TYPE,
        security=[{}, *BEARER],
        responses={404: NOT_VISIBLE},
        guards=[requires("catalog.read")],
    )
    async def croissant_export(
        self,
        request: Request[Any, Any, Any],
        session: Session,
        optional_principal: OptionalCaller,
        slug: FromPath[str],
        version: FromPath[str],
    ) -> Response[dict[str, Any]]:
        export = await provenance.load_version_export(session, optional_principal, slug, version, str(request.base_url))
        return Response(provenance.croissant_document(export), media_type=provenance.CROISSANT_MEDIA_TYPE)

    @get(
        VERSION_PATH + "/provenance",
        summary="The version's provenance as W3C PROV-JSON",
        description=(
            "A PROV-JSON document (https://www.w3.org/submissions/prov-json/): the version, a `prov:Collection` "
            "of its files, attributed to the provider; each source an entity attributed to its rights holder or "
            "its generator (synthetic sources), derived sources derived from the version they name; the collect, "
            "clean, label and test activities with their times, tool, parameters and metrics, associated with the "
            "provider and their operator, and chained by `used` and `wasGeneratedBy`. Anyone may read a released "
            "version; a draft or a version in review only its provider's members and platform staff (else 404)."
        ),
        media_type=provenance.PROV_JSON_MEDIA_TYPE,
        security=[{}, *BEARER],
        responses={404: NOT_VISIBLE},
        guards=[requires("catalog.read")],
    )
    async def provenance_export(
        self,
        request: Request[Any, Any, Any],
        session: Session,
        optional_principal: OptionalCaller,
        slug: FromPath[str],
        version: FromPath[str],
    ) -> Response[dict[str, Any]]:
        export = await provenance.load_version_export(session, optional_principal, slug, version, str(request.base_url))
        return Response(provenance.prov_document(export), media_type=provenance.PROV_JSON_MEDIA_TYPE)


class ReviewOut(msgspec.Struct):
    product: str
    version: str
    org: str
    submitted_at: dt.datetime


class ReviewPage(msgspec.Struct):
    items: list[ReviewOut]
    next_cursor: str | None


@get(
    "/reviews",
    summary="The reviewers' queue: versions in review, oldest first (platform reviewers)",
    tags=["catalog"],
    security=BEARER,
    guards=[requires("reviews.read")],
)
async def reviews(session: Session, cursor: FromQuery[str | None] = None, limit: Limit = 50) -> ReviewPage:
    """Decide each with ``POST /products/{slug}/versions/{version}/review``; a reviewer never decides a version
    of an organisation they belong to (403)."""
    rows, next_cursor = await service.review_queue(session, cursor=cursor, limit=limit)
    return ReviewPage(
        items=[ReviewOut(r.product, r.version, r.org, r.submitted_at) for r in rows], next_cursor=next_cursor
    )
