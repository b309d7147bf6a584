"""HTTP routes of batched uploads: plan and complete up to 1,000 files of a draft version per request.

Beside ``/files`` (one file per request, which clients keep using for files uploaded in parts) rather than under
it: ``/files/{path}`` is the download redirect's template.
"""

from __future__ import annotations

from litestar import Controller
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody

from app.auth.guards import requires
from app.deps import Audit, Caller, Session
from app.errors import Problem, ProblemError
from app.handlers import post
from app.openapi import problems
from catalog import batch_uploads
from catalog.routes import BEARER, VERSION_PATH
from catalog.schemas import (
    BatchCompleteIn,
    BatchCompleteItem,
    BatchCompleteOut,
    BatchPlanIn,
    BatchPlanItem,
    BatchPlanOut,
    DirectUpload,
    SingleUpload,
)


def problem_of(error: ProblemError) -> Problem:
    return Problem(type=error.type, title=error.title, status=error.status, detail=error.detail, errors=error.errors)


def _plan_item(item: batch_uploads.PlanItem) -> BatchPlanItem:
    out = BatchPlanItem(path=item.path, status=item.status)  # type: ignore[arg-type]
    if item.file is not None:
        out.file_id = item.file.id
    if item.url is not None and item.file is not None and item.expires_at is not None:
        headers = {"Content-Type": item.file.media_type}
        kind = DirectUpload if item.direct else SingleUpload
        out.upload = kind(method="PUT", url=item.url, headers=headers, expires_at=item.expires_at)
    if item.problem is not None:
        out.problem = problem_of(item.problem)
    return out


def _complete_item(item: batch_uploads.CompleteItem) -> BatchCompleteItem:
    if item.problem is not None or item.file is None:
        assert item.problem is not None
        return BatchCompleteItem(file_id=item.file_id, status="refused", problem=problem_of(item.problem))
    file = item.file
    return BatchCompleteItem(file_id=file.id, status="verified", path=file.path, size=file.size, sha256=file.sha256)


class BatchUploadController(Controller):
    path = "/products"
    tags = ["catalog"]

    @post(
        VERSION_PATH + "/uploads",
        summary="Register up to 1,000 files of a draft version and get where to upload each",
        status_code=200,
        security=BEARER,
        guards=[requires("catalog.write")],
        responses=problems(
            {
                409: "The version is not a draft (`version-frozen`), or a path of the batch was added to it "
                "meanwhile (`path-exists`: plan again)"
            }
        ),
    )
    async def plan_uploads(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        state: State,
        slug: FromPath[str],
        version: FromPath[str],
        data: JSONBody[BatchPlanIn],
    ) -> BatchPlanOut:
        """One item per file, in order. Files up to 8 MiB only (larger ones: ``POST …/files``, in parts). An item
        is ``upload`` with a presigned PUT: ``direct`` when the object store enforces the SHA-256 signed into the
        URL (then complete naming the `x-amz-version-id` of the PUT's answer), else ``single``; ``stored`` when
        the organisation already stores this content (complete without sending it; never said of content only
        other organisations hold); ``verified`` when the version has this path with this content already; or
        ``refused`` with a ``problem`` (a bad path or media type, a path the version has with other content,
        a path named twice), which changes nothing. Planning a pending file again with the same content resumes
        it with a fresh URL. More than 1,000 files: 422."""
        specs = [batch_uploads.FileSpec(f.path, f.size, f.sha256, f.media_type) for f in data.files]
        items = await batch_uploads.plan_batch(
            session, audit_context, principal, state.object_store, slug, version, specs
        )
        return BatchPlanOut(items=[_plan_item(item) for item in items])

    @post(
        VERSION_PATH + "/uploads/complete",
        summary="Finish the uploads of up to 1,000 files; the server verifies each one's size and SHA-256",
        status_code=200,
        security=BEARER,
        guards=[requires("catalog.write")],
        responses=problems({409: "The version is not a draft (`version-frozen`): published versions never change"}),
    )
    async def complete_uploads(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        state: State,
        slug: FromPath[str],
        version: FromPath[str],
        data: JSONBody[BatchCompleteIn],
    ) -> BatchCompleteOut:
        """One item per file, in order, each ``verified`` or ``refused`` with its ``problem``; the good ones count
        even when others are refused. ``upload-missing`` (nothing at the URL, or not the version named) changes
        nothing; ``checksum-mismatch`` / ``size-mismatch`` discard the upload and the pending file, as
        ``…/files/{file_id}/complete`` does; ``not-found`` for a file id of another version. Completing a verified
        file again answers ``verified``. Files uploaded in parts are completed one by one with their parts. Each
        file gets its audit event. More than 1,000 files: 422."""
        specs = [batch_uploads.CompleteSpec(f.file_id, f.version_id) for f in data.files]
        items = await batch_uploads.complete_batch(
            session, audit_context, principal, state.object_store, slug, version, specs
        )
        return BatchCompleteOut(items=[_complete_item(item) for item in items])
