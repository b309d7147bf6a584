"""The audit trail over HTTP: events, export, verification and the signed checkpoints."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any, Literal

import msgspec
from litestar import Router
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery, QueryParameter
from litestar.response import Stream
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import pagination
from app.audit import checkpoints, queries, redaction
from app.audit.proof_routes import bundle, consistency, inclusion
from app.audit.schemas import (
    AuditEventOut,
    AuditEventPage,
    CheckpointOut,
    CheckpointPage,
    VerifyOut,
)
from app.auth.guards import requires
from app.auth.keys import KeyRing
from app.auth.principal import Principal
from app.deps import Caller, Session
from app.errors import PROBLEM_MEDIA_TYPE, Problem
from app.handlers import get
from app.objectstore import ObjectStore
from app.openapi import ALSO_ANSWERS
from app.settings import Settings

log = logging.getLogger("corpora.audit")

BEARER: list[dict[str, list[str]]] = [{"BearerToken": []}]
EXPORT_BATCH = 2000
JSONL_MEDIA_TYPE = "application/x-ndjson"
CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
CSV_COLUMNS = (
    "seq",
    "occurred_at",
    "actor",
    "org",
    "action",
    "target_type",
    "target_id",
    "request_id",
    "client_addr",
    "details",
    "prev_hash",
    "hash",
)

Limit = Annotated[int, QueryParameter(ge=1, le=500, description="page size, 1 to 500 (default 50)")]
OrgSlug = Annotated[
    str | None, QueryParameter(description="only this organisation's events (its slug); 404 if not visible")
]
Action = Annotated[str | None, QueryParameter(description='only this action, e.g. "org.created"')]
ProductSlug = Annotated[
    str | None,
    QueryParameter(description="only events naming this product (its slug): its own, its offers, orders and grants"),
]
Actor = Annotated[str | None, QueryParameter(description='only this actor, e.g. "user:<id>" or "api_key:<id>"')]
Since = Annotated[dt.datetime | None, QueryParameter(description="events at or after this time (ISO 8601)")]
Until = Annotated[dt.datetime | None, QueryParameter(description="events before this time (ISO 8601)")]

READ_GUARDS = [requires("audit.read")]
PLATFORM_GUARDS = [requires("audit.platform")]


def _problem(description: str) -> ResponseSpec:
    return ResponseSpec(Problem, description=description, media_type=PROBLEM_MEDIA_TYPE)


UNAUTHORIZED = _problem("No bearer token, or an invalid or expired one")
VISIBILITY_ERRORS: dict[int, ResponseSpec] = {
    400: _problem("An invalid cursor"),
    401: UNAUTHORIZED,
    403: _problem(
        "The caller reads no audit events: neither a platform auditor or admin, nor an owner or auditor of an "
        "organisation (or of the one named by `org`); or an API key without the audit:read scope"
    ),
    404: _problem(
        "The organisation named by `org` does not exist or the caller does not belong to it, or no product is "
        "named `product`"
    ),
}
PLATFORM_ERRORS: dict[int, ResponseSpec] = {
    401: UNAUTHORIZED,
    403: _problem("The caller is not a platform auditor or admin"),
}

VISIBILITY_RULES = (
    "Platform auditors and admins read every event; owners and auditors of an organisation read the events of "
    "their organisations (an API key: of its organisation, and only with the `audit:read` scope), and of a "
    "provider also the grant events (`download.granted`, `download.refreshed`) of its products by other "
    "organisations, redacted (`redacted: true`): the buyer organisation is named, the actor is a pseudonym "
    "stable for that provider, and the request id and client address are null; an `actor` filter matches no "
    "redacted event. Anyone else gets 403. `org` narrows to one organisation: 404 if the caller does not belong "
    "to it, 403 if they belong without the owner or auditor role."
)


def _encode_cursor(order: str, seq: int) -> str:
    return pagination.encode((order, seq))


def _decode_cursor(cursor: str | None, order: str) -> int | None:
    """The seq a page continues after; the cursor must come from a listing in the same ``order``."""
    decoded = pagination.decode(cursor, (str, int))
    if decoded is None:
        return None
    found_order, seq = decoded
    if found_order != order:
        raise pagination.invalid_cursor()
    return int(seq)


def _utc(moment: dt.datetime | None) -> dt.datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=dt.UTC)  # a time without an offset is read as UTC


@dataclasses.dataclass(frozen=True, slots=True)
class View:
    """How rows are shown: another organisation's grant event of the caller's product is redacted."""

    scope: queries.Scope
    pseudonyms: redaction.Pseudonyms

    def event(self, row: Any) -> AuditEventOut:
        redacted = self.scope.redacts(row.org_id)
        return AuditEventOut(
            seq=row.seq,
            occurred_at=row.occurred_at,
            actor=self.pseudonyms(row.provider_org_id, row.actor) if redacted else row.actor,
            org=row.org,
            action=row.action,
            target_type=row.target_type,
            target_id=row.target_id,
            request_id=None if redacted else row.request_id,
            client_addr=None if redacted else row.client_addr,
            details=row.details,
            prev_hash=row.prev_hash.hex(),
            hash=row.hash.hex(),
            redacted=redacted,
        )


def _view(state: State, scope: queries.Scope) -> View:
    return View(scope, redaction.Pseudonyms(redaction.secret(state.settings, state.keyring)))


async def _filters(
    session: AsyncSession,
    principal: Principal,
    org: str | None,
    action: str | None,
    actor: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    product: str | None = None,
) -> queries.EventFilter:
    scope = await queries.visible_scope(session, principal, org)
    return queries.EventFilter(
        scope=scope,
        action=action,
        actor=actor,
        since=_utc(since),
        until=_utc(until),
        product=await queries.check_product(session, product),
    )


@get(
    "/events",
    summary="Audit events the caller may read, newest first",
    description=(
        "Events of the hash-chained audit log, filtered by organisation, action, actor and time, in keyset pages "
        "(`cursor`, `limit` up to 500). Each event carries its `prev_hash` and `hash` (hex) so a reader can "
        "check the links. `order=asc` pages oldest first. An event is listed once it is sequenced into the log, "
        "within about a second of the commit of the change it records. " + VISIBILITY_RULES
    ),
    tags=["audit"],
    security=BEARER,
    guards=READ_GUARDS,
    responses=VISIBILITY_ERRORS,
)
async def list_events(
    state: State,
    session: Session,
    principal: Caller,
    org: OrgSlug = None,
    action: Action = None,
    actor: Actor = None,
    since: Since = None,
    until: Until = None,
    product: ProductSlug = None,
    order: FromQuery[Literal["desc", "asc"]] = "desc",
    cursor: FromQuery[str | None] = None,
    limit: Limit = 50,
) -> AuditEventPage:
    filters = await _filters(session, principal, org, action, actor, since, until, product)
    descending = order == "desc"
    rows = await queries.list_events(
        session, filters, after=_decode_cursor(cursor, order), limit=limit + 1, descending=descending
    )
    more = len(rows) > limit
    rows = rows[:limit]
    view = _view(state, filters.scope)
    return AuditEventPage(
        items=[view.event(row) for row in rows],
        next_cursor=_encode_cursor(order, rows[-1].seq) if more else None,
    )


def _jsonl(rows: Sequence[Any], view: View) -> bytes:
    encode = msgspec.json.encode
    return b"".join(encode(view.event(row)) + b"\n" for row in rows)


def _csv(rows: Sequence[Any], view: View, *, header: bool) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    for event in map(view.event, rows):
        writer.writerow(
            (
                event.seq,
                event.occurred_at.isoformat(),
                event.actor,
                event.org or "",
                event.action,
                event.target_type or "",
                event.target_id or "",
                event.request_id or "",
                event.client_addr or "",
                msgspec.json.encode(event.details).decode(),
                event.prev_hash,
                event.hash,
            )
        )
    return buffer.getvalue().encode()


async def _export_chunks(
    sessionmaker: async_sessionmaker[AsyncSession], filters: queries.EventFilter, view: View, up_to: int, fmt: str
) -> AsyncIterator[bytes]:
    """Batches read oldest first, each in its own short transaction, up to the head seen at the start."""
    after = 0
    first = True
    try:
        while True:
            async with sessionmaker() as session:
                rows = await queries.list_events(session, filters, after=after, limit=EXPORT_BATCH, up_to=up_to)
            if fmt == "csv":
                if rows or first:
                    yield _csv(rows, view, header=first)
            elif rows:
                yield _jsonl(rows, view)
            first = False
            if len(rows) < EXPORT_BATCH:
                return
            after = rows[-1].seq
    except Exception:
        # The status line is sent already; the truncated body is all a client can be told.
        log.exception("audit export failed after event %d", after)
        raise


@get(
    "/export",
    summary="Export audit events as JSON Lines or CSV",
    description=(
        "Every event the caller may read (same filters and visibility as `/audit/events`), oldest first, up to "
        "the chain head at the time of the request, streamed: `format=jsonl` (default; "
        f"`{JSONL_MEDIA_TYPE}`, one JSON object per line, the shape of an `/audit/events` item) or `format=csv` "
        f"(`{CSV_MEDIA_TYPE}`, a header row then one row per event, `details` as JSON). " + VISIBILITY_RULES
    ),
    tags=["audit"],
    security=BEARER,
    guards=READ_GUARDS,
    media_type=JSONL_MEDIA_TYPE,
    opt={ALSO_ANSWERS: (CSV_MEDIA_TYPE,)},
    responses={
        200: ResponseSpec(
            data_container=str,
            media_type=JSONL_MEDIA_TYPE,
            description=f"One event per line; with `format=csv` the body is `{CSV_MEDIA_TYPE}` instead",
        ),
        **VISIBILITY_ERRORS,
        422: _problem("An unknown `format`"),
    },
)
async def export_events(
    state: State,
    session: Session,
    principal: Caller,
    fmt: Annotated[
        Literal["jsonl", "csv"], QueryParameter(name="format", description="jsonl (default) or csv")
    ] = "jsonl",
    org: OrgSlug = None,
    action: Action = None,
    actor: Actor = None,
    since: Since = None,
    until: Until = None,
    product: ProductSlug = None,
) -> Stream:
    filters = await _filters(session, principal, org, action, actor, since, until, product)
    up_to = await queries.head_seq(session)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return Stream(
        _export_chunks(state.sessionmaker, filters, _view(state, filters.scope), up_to, fmt),
        headers={
            # An explicit header, as the route's declared media type would otherwise win.
            "Content-Type": CSV_MEDIA_TYPE if fmt == "csv" else JSONL_MEDIA_TYPE,
            "Content-Disposition": f'attachment; filename="audit-events-{stamp}.{fmt}"',
        },
    )


@get(
    "/verify",
    summary="Verify the audit chain against the signed checkpoints",
    description=(
        "Recomputes the SHA-256 chain from the first event and compares it with every signed checkpoint in the "
        "object store (each checkpoint's Ed25519 signature is verified first; a rejected one makes `ok` false). "
        "Detects altered, deleted and reordered events, a truncated tail and a consistent rewrite of the chain "
        "before a checkpoint. `first_bad_event` is the first event that cannot be trusted; `pending_events` counts "
        "committed events not yet sequenced into the log. Platform auditors and admins only."
    ),
    tags=["audit"],
    security=BEARER,
    guards=PLATFORM_GUARDS,
    responses=PLATFORM_ERRORS,
)
async def verify(state: State, session: Session) -> VerifyOut:
    store: ObjectStore = state.object_store
    keyring: KeyRing = state.keyring
    settings: Settings = state.settings
    report = await checkpoints.verify(session, store, keyring, settings)
    return msgspec.convert(report, VerifyOut)


@get(
    "/checkpoints",
    summary="The signed checkpoints of the chain head",
    description=(
        "The checkpoint objects in the object store (`audit/checkpoints/<seq>.jws`), oldest first, each with "
        "its verified content (`seq`, `head_hash`, `tree_size`, `root_hash`, `issued_at`, `kid`) and the raw "
        "compact JWS, which anyone can check against `/.well-known/jwks.json`. One whose signature, key or content "
        "is rejected is listed with `valid: false` and the reason. Platform auditors and admins only."
    ),
    tags=["audit"],
    security=BEARER,
    guards=PLATFORM_GUARDS,
    responses={**PLATFORM_ERRORS, 400: _problem("An invalid cursor")},
)
async def list_checkpoints(state: State, cursor: FromQuery[str | None] = None, limit: Limit = 50) -> CheckpointPage:
    store: ObjectStore = state.object_store
    keyring: KeyRing = state.keyring
    settings: Settings = state.settings
    decoded = pagination.decode(cursor, (str,))
    start_after = decoded[0] if decoded is not None else None
    if start_after is not None and not start_after.startswith(checkpoints.PREFIX):
        raise pagination.invalid_cursor()
    keys = await checkpoints.list_checkpoint_keys(store, start_after=start_after, limit=limit + 1)
    more = len(keys) > limit
    keys = keys[:limit]
    good, bad = await checkpoints.read_checkpoints(store, keyring, settings.jwt_issuer, [(k, None) for k in keys])
    items = [
        CheckpointOut(
            key=c.key,
            valid=True,
            seq=c.seq,
            head_hash=c.hash.hex(),
            tree_size=c.tree_size,
            root_hash=c.root_hash.hex() if c.root_hash is not None else None,
            hash=c.hash.hex(),
            issued_at=c.issued_at,
            kid=c.kid,
            jws=c.jws,
        )
        for c in good
    ] + [
        CheckpointOut(
            key=b.key,
            valid=False,
            seq=checkpoints.seq_from_key(b.key),
            head_hash=None,
            tree_size=None,
            root_hash=None,
            hash=None,
            issued_at=None,
            kid=None,
            jws=b.jws,
            problem=b.problem,
        )
        for b in bad
    ]
    items.sort(key=lambda item: item.key)
    next_cursor = pagination.encode((keys[-1],)) if more else None
    return CheckpointPage(items=items, next_cursor=next_cursor)


router = Router(
    path="/audit",
    route_handlers=[list_events, export_events, verify, list_checkpoints, inclusion, consistency, bundle],
)
