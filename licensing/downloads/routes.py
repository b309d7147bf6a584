"""HTTP routes of metered downloads: grants, refreshes, proxy delivery with ranges, usage."""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import uuid
from collections.abc import Iterable
from typing import Annotated, Any

import anyio
from litestar import Request, Response
from litestar.datastructures import Cookie, State
from litestar.enums import MediaType
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter
from litestar.response import Redirect, Stream
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import ControllerRouterHandler, Receive, Scope, Send, TypeEncodersMap
from litestar.utils.helpers import get_enum_string_value
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.admission import arrived_at
from app.audit.service import AuditContext
from app.auth.guards import provide_audit_context, provide_principal, requires
from app.auth.principal import Principal
from app.deps import BEARER, Caller, Session
from app.errors import ProblemError, invalid
from app.handlers import get, head, post
from app.metrics import BYTES_SERVED, GRANTS, REFRESHES, REFUSALS
from app.objectstore import ObjectStore
from app.openapi import ALSO_ANSWERS, problems
from app.settings import Settings
from catalog.search import Use
from catalog.uploads import blob_key
from licensing.downloads import delivery, grants
from licensing.downloads.models import DownloadGrant
from licensing.downloads.schemas import (
    DownloadIn,
    DownloadList,
    DownloadOut,
    ManifestIn,
    ManifestOut,
    RefreshIn,
    UsageOut,
)
from licensing.downloads.usage import buyer_usage, provider_usage


class _ClosingStreamingResponse(ASGIStreamingResponse):
    """Closes its iterator whatever ends the response. When the client goes away Litestar cancels the send loop
    but leaves the iterator suspended for the garbage collector (and a server whose ``send`` raises leaves it
    the same way, or never starts the body), and with it the object store connection and the record of the
    bytes sent."""

    __slots__ = ()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()


class ClosingStream(Stream):
    """A ``Stream`` whose generator is closed as soon as the response ends, however it ends."""

    def to_asgi_response(
        self,
        app: Any,
        request: Request[Any, Any, Any],
        *,
        background: Any = None,
        cookies: Iterable[Cookie] | None = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: MediaType | str | None = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> ASGIResponse:
        return _ClosingStreamingResponse(
            background=self.background or background,
            content_length=0,
            cookies=self.cookies if cookies is None else itertools.chain(self.cookies, cookies),
            encoded_headers=encoded_headers,
            encoding=self.encoding,
            headers={**headers, **self.headers} if headers is not None else self.headers,
            is_head_response=is_head_response,
            iterator=self.iterator,  # type: ignore[arg-type]
            media_type=get_enum_string_value(self.media_type or media_type or MediaType.TEXT),
            status_code=self.status_code or status_code,
        )


class HeadersOnly(Response[None]):
    """The answer to a ``HEAD``: the headers a ``GET`` would carry, ``Content-Length`` included, and no body."""

    def to_asgi_response(
        self,
        app: Any,
        request: Request[Any, Any, Any],
        *,
        background: Any = None,
        cookies: Iterable[Cookie] | None = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: MediaType | str | None = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> ASGIResponse:
        return ASGIResponse(
            body=b"",
            cookies=self.cookies if cookies is None else itertools.chain(self.cookies, cookies),
            encoded_headers=encoded_headers,
            headers={**headers, **self.headers} if headers is not None else self.headers,
            is_head_response=True,
            media_type=get_enum_string_value(self.media_type or media_type or MediaType.TEXT),
            status_code=self.status_code or status_code,
        )


# RFC 7725: content withdrawn by an upheld takedown.
_TAKEN_DOWN = "The content was taken down after a rights holder's complaint (`taken-down`)"
TAKEN_DOWN = problems({451: _TAKEN_DOWN})
# A grant also charges the quota: a full quota is its own refusal.
GRANT_REFUSALS = problems(
    {451: _TAKEN_DOWN, 429: "The entitlement's quota has no room for what was asked (`quota-exceeded`)"}
)


def _url_seconds(settings: Settings) -> int:
    return min(settings.presign_ttl_seconds, 3600)


def _locator(request: Request[Any, Any, Any], store: ObjectStore, settings: Settings) -> grants.Locate:
    async def locate(row: DownloadGrant) -> str:
        if row.mode == "presigned":
            return await store.presigned_get(
                blob_key(row.sha256), _url_seconds(settings), content_disposition=delivery.content_disposition(row.path)
            )
        return str(request.url_for("download-content", download_id=row.id))

    return locate


def _out(grant: grants.Grant) -> DownloadOut:
    row = grant.row
    return DownloadOut(
        download_id=row.id,
        url=grant.url,
        expires_at=row.url_expires_at,
        size=row.size,
        sha256=row.sha256,
        mode=row.mode,
        receipt=grant.receipt,
        product=grant.product,
        version=grant.version,
        path=row.path,
        manifest_digest=row.manifest_digest,
        window_ends_at=row.window_ends_at,
    )


# A grant is CPU work in this process around a few round trips (and grants under one entitlement commit one at a
# time, see licensing.downloads.grants.grant), so a process gains nothing from working on more than a few at once;
# the rest wait here, costing nothing, rather than in the event loop's queue, where every one of them would delay
# the commits that the others are waiting for. They are let in by arrival (app/admission.py).
GRANTS_IN_FLIGHT = 4


def _caller(request: Request[Any, Any, Any]) -> tuple[Principal, AuditContext]:
    """The caller and its audit context, as their dependency functions make them. The routes that grant take them
    from here and declare only the session: Litestar resolves a handler's independent dependencies concurrently,
    in a task group, which cost a grant about 200 µs of CPU (a tenth of it) for two values read off the scope."""
    return provide_principal(request), provide_audit_context(request)


async def _grant(
    request: Request[Any, Any, Any],
    session: AsyncSession,
    audit_context: AuditContext,
    principal: Principal,
    state: State,
    *,
    entitlement_id: uuid.UUID,
    product: str,
    version: str,
    paths: list[str] | None,
    patterns: list[str] | None,
    purpose: str,
    lawful_only: bool = False,
) -> list[grants.Grant]:
    settings: Settings = state.settings
    try:
        async with state.grant_slots.slot(arrived_at(request.scope)):
            granted = await grants.grant(
                session,
                audit_context,
                principal,
                state.keyring,
                entitlement_id=entitlement_id,
                slug=product,
                version=version,
                paths=paths,
                patterns=patterns,
                purpose=purpose,
                lawful_only=lawful_only,
                mode=settings.download_mode,
                url_seconds=_url_seconds(settings),
                issuer=settings.jwt_issuer,
                locate=_locator(request, state.object_store, settings),
                charge_turn=state.charge_turn,
            )
    except grants.Refused as refused:
        REFUSALS.labels(reason=refused.reason).inc()
        raise
    GRANTS.labels(mode=settings.download_mode).inc(len(granted))
    return granted


async def _refresh(
    request: Request[Any, Any, Any],
    session: AsyncSession,
    audit_context: AuditContext,
    principal: Principal,
    state: State,
    download_ids: list[uuid.UUID],
) -> list[grants.Grant]:
    settings: Settings = state.settings
    refreshed = await grants.refresh(
        session,
        audit_context,
        principal,
        state.keyring,
        download_ids,
        url_seconds=_url_seconds(settings),
        issuer=settings.jwt_issuer,
        locate=_locator(request, state.object_store, settings),
    )
    REFRESHES.inc(len(refreshed))
    return refreshed


@post(
    "/downloads",
    summary="Grant one download of one file under an entitlement",
    status_code=201,
    tags=["downloads"],
    security=BEARER,
    guards=[requires("downloads.grant")],
    responses=GRANT_REFUSALS,
)
async def create_download(
    request: Request[Any, Any, Any],
    session: Session,
    state: State,
    data: JSONBody[DownloadIn],
) -> DownloadOut:
    """Charges one download and the file's size against the entitlement's quota (refused with 429
    ``quota-exceeded`` and what remains, charging nothing); 403 when the entitlement is revoked, suspended or
    expired, the purpose is not among its purposes, or the version is withdrawn or not covered. The answer
    carries a signed ``receipt`` (Ed25519 JWS, keys at ``/.well-known/jwks.json``)."""
    principal, audit_context = _caller(request)
    granted = await _grant(
        request,
        session,
        audit_context,
        principal,
        state,
        entitlement_id=data.entitlement_id,
        product=data.product,
        version=data.version,
        paths=[data.path],
        patterns=None,
        purpose=data.purpose,
    )
    return _out(granted[0])


@post(
    "/downloads/manifest",
    summary="Grant every file of a version (or those matching globs) at once",
    status_code=201,
    tags=["downloads"],
    security=BEARER,
    guards=[requires("downloads.grant")],
    responses=GRANT_REFUSALS,
)
async def create_manifest(
    request: Request[Any, Any, Any],
    session: Session,
    state: State,
    data: JSONBody[ManifestIn],
) -> ManifestOut:
    """One grant per file, charged together (all or nothing), every URL pinned to the version's manifest
    digest. Refresh them as a set with ``POST /downloads/refresh``. ``include`` selects files by globs;
    ``paths`` (up to 1,000, instead of ``include``) names them exactly: a path the version lacks is 404. Either
    way, files withdrawn by an upheld takedown are left out (451 when nothing else is left)."""
    principal, audit_context = _caller(request)
    if data.paths is not None and data.include != ["*"]:
        raise invalid("paths", "give paths or include, not both")
    granted = await _grant(
        request,
        session,
        audit_context,
        principal,
        state,
        entitlement_id=data.entitlement_id,
        product=data.product,
        version=data.version,
        paths=data.paths,
        patterns=None if data.paths is not None else data.include,
        purpose=data.purpose,
        lawful_only=True,
    )
    items = [_out(g) for g in granted]
    return ManifestOut(data.product, data.version, items[0].manifest_digest, items)


@post(
    "/downloads/refresh",
    summary="Fresh URLs for grants still in their window, without charging again",
    status_code=200,
    tags=["downloads"],
    security=BEARER,
    guards=[requires("downloads.grant")],
    responses=TAKEN_DOWN,
)
async def refresh_downloads(
    request: Request[Any, Any, Any],
    session: Session,
    state: State,
    data: JSONBody[RefreshIn],
) -> DownloadList:
    principal, audit_context = _caller(request)
    refreshed = await _refresh(request, session, audit_context, principal, state, data.download_ids)
    return DownloadList([_out(g) for g in refreshed])


@post(
    "/downloads/{download_id:uuid}/refresh",
    summary="A fresh URL for one grant, without charging again",
    status_code=200,
    tags=["downloads"],
    security=BEARER,
    guards=[requires("downloads.grant")],
    responses=TAKEN_DOWN,
)
async def refresh_download(
    request: Request[Any, Any, Any],
    session: Session,
    state: State,
    download_id: FromPath[uuid.UUID],
) -> DownloadOut:
    principal, audit_context = _caller(request)
    refreshed = await _refresh(request, session, audit_context, principal, state, [download_id])
    return _out(refreshed[0])


def _content_answer(
    row: DownloadGrant, range_header: str | None, if_range: str | None
) -> tuple[int, dict[str, str], delivery.ByteRange]:
    """The status, headers and byte range a request for the granted file gets, before any byte is read."""
    etag = f'"{row.sha256}"'
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Content-Disposition": delivery.content_disposition(row.path),
        "Cache-Control": "private, no-store",
    }
    byte_range: delivery.ByteRange | None = None
    if range_header is not None and (if_range is None or if_range == etag):
        try:
            byte_range = delivery.parse_range(range_header, row.size)
        except delivery.RangeNotSatisfiable as exc:
            raise ProblemError(
                416,
                "range-not-satisfiable",
                "Range not satisfiable",
                str(exc),
                headers={"Content-Range": f"bytes */{row.size}"},
            ) from None
        except delivery.MalformedRange as exc:
            raise ProblemError(400, "malformed-range", "Malformed Range header", str(exc)) from None
    status = 206 if byte_range is not None else 200
    if byte_range is None:
        byte_range = delivery.ByteRange(0, row.size - 1)
    else:
        headers["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{row.size}"
    headers["Content-Length"] = str(byte_range.length)
    return status, headers, byte_range


_RANGE = Annotated[str | None, HeaderParameter(name="Range", description="bytes=START-END")]
# What a Range asks for, besides the whole file and the refusals every grant shares.
CONTENT_ANSWERS = {
    **TAKEN_DOWN,
    206: ResponseSpec(
        bytes,
        description="The part of the file the `Range` asked for, named in `Content-Range`",
        media_type="application/octet-stream",
        generate_examples=False,
    ),
    **problems({416: "The `Range` starts beyond the end of the file (`range-not-satisfiable`)"}),
}
_IF_RANGE = Annotated[str | None, HeaderParameter(name="If-Range", description="the ETag")]


@get(
    "/downloads/{download_id:uuid}/content",
    name="download-content",
    summary="Stream a granted file (proxy mode)",
    tags=["downloads"],
    security=BEARER,
    guards=[requires("downloads.grant")],
    media_type="application/octet-stream",
    response_description="The whole file",
    responses=CONTENT_ANSWERS,
)
async def download_content(
    session: Session,
    principal: Caller,
    state: State,
    download_id: FromPath[uuid.UUID],
    range_header: _RANGE = None,
    if_range: _IF_RANGE = None,
) -> Response[Any]:
    """Honours ``Range`` (206 with ``Content-Range``; 416 beyond the end; a unit other than bytes is ignored),
    ``If-Range`` and ``ETag`` (the file's SHA-256), so interrupted transfers resume. Every request re-checks the
    entitlement and the version: a revocation or withdrawal cuts the next request. Bytes actually sent are
    recorded."""
    row = await grants.grant_for_content(session, principal, download_id)
    status, headers, byte_range = _content_answer(row, range_header, if_range)
    sessionmaker: async_sessionmaker[AsyncSession] = state.sessionmaker

    async def record(sent: int) -> None:
        BYTES_SERVED.inc(sent)
        async with sessionmaker() as recording, recording.begin():
            await grants.record_served(recording, download_id, sent)

    # Opened here, before any header: an unreachable object store is a 503, not a body that breaks off.
    stream = await delivery.start(delivery.stream_object(state.object_store, blob_key(row.sha256), byte_range, record))
    return ClosingStream(
        stream,
        status_code=status,
        headers=headers,
        media_type="application/octet-stream",
    )


@head(
    "/downloads/{download_id:uuid}/content",
    name="download-content-head",
    summary="The headers of a granted file, without its bytes (proxy mode)",
    tags=["downloads"],
    security=BEARER,
    guards=[requires("downloads.grant")],
    response_description="The whole file's headers",
    responses=CONTENT_ANSWERS,
)
async def download_content_head(
    session: Session,
    principal: Caller,
    download_id: FromPath[uuid.UUID],
    range_header: _RANGE = None,
    if_range: _IF_RANGE = None,
) -> Response[None]:
    """What ``GET`` answers (status, ``Content-Length``, ``ETag``, ``Content-Range``) with no body: the same
    checks, nothing read from the object store and nothing recorded as served."""
    row = await grants.grant_for_content(session, principal, download_id)
    status, headers, _ = _content_answer(row, range_header, if_range)
    headers["Content-Type"] = "application/octet-stream"
    return HeadersOnly(None, status_code=status, headers=headers)


@get(
    "/products/{slug:str}/versions/{version:str}/files/{path:path}",
    summary="Redirect to a fresh download URL (for curl -L)",
    status_code=307,
    tags=["downloads"],
    security=BEARER,
    guards=[requires("downloads.grant")],
    responses=GRANT_REFUSALS,
)
async def file_redirect(
    request: Request[Any, Any, Any],
    session: Session,
    state: State,
    slug: FromPath[str],
    version: FromPath[str],
    path: FromPath[str],
    entitlement_id: FromQuery[uuid.UUID],
    purpose: Annotated[Use, QueryParameter(description="one of the entitlement's purposes")],
) -> Redirect:
    """Grants the download (charged like ``POST /downloads``) and answers 307 to its URL. A request with a
    ``Range`` header resumes a transfer (``curl -L -C -``): it refreshes the caller's grant of this file, if one
    is still in its window, and charges nothing new."""
    principal, audit_context = _caller(request)
    path = path.lstrip("/")
    resumed = None
    if "range" in request.headers:
        resumed = await grants.resumable_grant(
            session,
            principal,
            entitlement_id=entitlement_id,
            slug=slug,
            version=version,
            path=path,
            purpose=purpose,
        )
    if resumed is not None:
        granted = await _refresh(request, session, audit_context, principal, state, [resumed])
    else:
        granted = await _grant(
            request,
            session,
            audit_context,
            principal,
            state,
            entitlement_id=entitlement_id,
            product=slug,
            version=version,
            paths=[path],
            patterns=None,
            purpose=purpose,
        )
    out = _out(granted[0])
    return Redirect(out.url, status_code=307, headers={"X-Corpora-Download-Id": str(out.download_id)})


@get(
    "/usage",
    summary="Metered usage per entitlement, product and day (CSV with Accept: text/csv)",
    tags=["downloads"],
    security=BEARER,
    guards=[requires("usage.read")],
    opt={ALSO_ANSWERS: ("text/csv",)},
    responses={
        200: ResponseSpec(
            UsageOut,
            description="The buyer's and the provider's views; with `Accept: text/csv`, the same rows as CSV "
            "(a header row, then one row per view, day, product, buyer organisation and entitlement)",
            generate_examples=False,
        )
    },
)
async def usage(
    request: Request[Any, Any, Any],
    session: Session,
    principal: Caller,
    days: Annotated[int, QueryParameter(ge=1, le=366, description="how many days back")] = 30,
) -> Response[Any]:
    """``buyer``: grants, bytes charged and bytes served for the caller's organisations, per entitlement,
    product and day. ``provider``: the same for the caller's products, per product and buyer organisation
    (no buyer member is named)."""
    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    buyer = await buyer_usage(session, principal, since)
    provider = await provider_usage(session, principal, since)
    if request.accept.best_match(["application/json", "text/csv"], default="application/json") == "text/csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(
            ["view", "day", "product", "buyer_org", "entitlement_id", "grants", "bytes_charged", "bytes_served"]
        )
        for view, rows in (("buyer", buyer), ("provider", provider)):
            for r in rows:
                writer.writerow(
                    [
                        view,
                        r["day"],
                        r["product"],
                        r["buyer_org"],
                        r.get("entitlement_id", ""),
                        r["grants"],
                        r["bytes_charged"],
                        r["bytes_served"],
                    ]
                )
        return Response(out.getvalue(), media_type="text/csv")  # Litestar adds the charset
    return Response(UsageOut(since=since.date(), buyer=buyer, provider=provider))


route_handlers: list[ControllerRouterHandler] = [
    create_download,
    create_manifest,
    refresh_downloads,
    refresh_download,
    download_content,
    download_content_head,
    file_redirect,
    usage,
]
