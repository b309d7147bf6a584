"""Proofs over HTTP: inclusion and consistency proofs of the audit tree, and evidence bundles."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from litestar import Response
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import QueryParameter
from sqlalchemy import select

from app.audit import bundle as bundles
from app.audit import proofs, queries, redaction
from app.audit.models import AuditEvent
from app.audit.schemas import ConsistencyProofOut, EvidenceBundleOut, InclusionProofOut
from app.auth.guards import requires
from app.auth.keys import KeyRing
from app.deps import Caller, Session
from app.errors import invalid, not_found
from app.handlers import get
from app.openapi import problems
from app.settings import Settings

BEARER: list[dict[str, list[str]]] = [{"BearerToken": []}]
Position = Annotated[int, QueryParameter(ge=1, le=2**62, description="an event's seq (1, 2, 3, …)")]
TreeSize = Annotated[
    int | None,
    QueryParameter(ge=1, le=2**62, description="the size of the tree to prove in; default the current log"),
]
SCOPE_RULES = (
    "Platform auditors and admins read every event; owners and auditors of an organisation read the events of "
    "their organisations (an API key: of its organisation, with the `audit:read` scope)."
)


async def _log_size(session: Session, asked: int | None, field: str) -> int:
    size = await queries.head_seq(session)
    if asked is None:
        return size
    if asked > size:
        raise invalid(field, f"the log holds {size} events")
    return asked


@get(
    "/proofs/inclusion",
    summary="The inclusion proof of one event in the audit tree",
    description=(
        "The RFC 9162 §2.1.3 audit path of event `seq` (leaf index `seq - 1`) in the Merkle tree of the first "
        "`tree_size` events (default: all of them). `leaf_hash` is sha256(0x00 || the event's canonical "
        "encoding); the path, leaf first, leads to the `root_hash` a signed checkpoint of that size carries. "
        + SCOPE_RULES
        + " An event the caller may not read is a 404."
    ),
    tags=["audit"],
    security=BEARER,
    guards=[requires("audit.prove")],
    responses=problems(
        {
            404: "No event `seq`, or the caller may not read it",
            422: "`tree_size` exceeds the log, or `seq` exceeds `tree_size`",
        }
    ),
)
async def inclusion(
    session: Session, principal: Caller, seq: Position, tree_size: TreeSize = None
) -> InclusionProofOut:
    scope = await queries.visible_scope(session, principal, None)
    visible = select(AuditEvent.seq).where(AuditEvent.seq == seq, *queries.conditions(queries.EventFilter(scope)))
    size = await _log_size(session, tree_size, "tree_size")
    if await session.scalar(visible) is None:
        raise not_found("audit event")
    if seq > size:
        raise invalid("seq", f"event {seq} is not in the tree of {size} events")
    proof = await proofs.inclusion_proof(session, seq, size)
    return InclusionProofOut(
        leaf_index=proof.leaf_index,
        tree_size=proof.tree_size,
        leaf_hash=proof.leaf_hash.hex(),
        audit_path=[digest.hex() for digest in proof.audit_path],
    )


@get(
    "/proofs/consistency",
    summary="The consistency proof between two sizes of the audit tree",
    description=(
        "The RFC 9162 §2.1.4 proof that the tree of the first `first` events is a prefix of the tree of the "
        "first `second` events: whoever holds signed checkpoints of both sizes can check that nothing before "
        "`first` changed. Empty when `first` equals `second`. Any caller who reads audit events may ask."
    ),
    tags=["audit"],
    security=BEARER,
    guards=[requires("audit.prove")],
    responses=problems(
        {
            403: "The caller reads no audit events (or not those of `org`)",
            404: "`org` does not exist or the caller does not belong to it",
            422: "`first` exceeds `second`, or `second` exceeds the log",
        }
    ),
)
async def consistency(
    session: Session,
    principal: Caller,
    first: Annotated[int, QueryParameter(ge=1, le=2**62, description="the smaller tree size")],
    second: Annotated[int, QueryParameter(ge=1, le=2**62, description="the larger tree size")],
    org: Annotated[
        str | None, QueryParameter(description="ask as a reader of this organisation's events (its slug)")
    ] = None,
) -> ConsistencyProofOut:
    await queries.visible_scope(session, principal, org)
    size = await _log_size(session, second, "second")
    if first > size:
        raise invalid("first", "must not exceed `second`")
    proof = await proofs.consistency_proof(session, first, size)
    return ConsistencyProofOut(first=proof.first, second=proof.second, proof=[d.hex() for d in proof.proof])


@get(
    "/bundle",
    summary="An evidence bundle: events with their inclusion proofs, a signed checkpoint and the JWKS",
    description=(
        "The events the caller may read (narrowed by `org`, `product`, `since`, `until`), oldest first, each in "
        "the exact form it was hashed (`details` as stored) with its chain hash, its leaf hash and its "
        "inclusion proof in the tree of `checkpoint.tree_size` events; the checkpoint of that tree, signed "
        "(EdDSA) when the bundle is made; and the JWKS. `corpora audit verify-bundle FILE` checks it offline. "
        f"At most {bundles.MAX_BUNDLE_EVENTS} events. "
        + SCOPE_RULES
        + " Events of another organisation are never included, except, for a provider, the grant events of its "
        "products: those are redacted (`redacted: true`, the actor a pseudonym, no request id or client address), "
        "so only their `leaf_hash` is proven, and their content is attested by that leaf alone."
    ),
    tags=["audit"],
    security=BEARER,
    guards=[requires("audit.bundle")],
    media_type="application/json",
    responses={
        200: ResponseSpec(data_container=EvidenceBundleOut, description="The evidence bundle"),
        **problems(
            {
                403: "The caller reads no audit events, or belongs to `org` without the owner or auditor role",
                404: "`org` or `product` does not exist or is not visible",
                422: f"More than {bundles.MAX_BUNDLE_EVENTS} events match",
            }
        ),
    },
)
async def bundle(
    state: State,
    session: Session,
    principal: Caller,
    org: Annotated[str | None, QueryParameter(description="only this organisation's events (its slug)")] = None,
    product: Annotated[str | None, QueryParameter(description="only events concerning this product (slug)")] = None,
    since: Annotated[dt.datetime | None, QueryParameter(description="events at or after this time")] = None,
    until: Annotated[dt.datetime | None, QueryParameter(description="events before this time")] = None,
) -> Response[bytes]:
    keyring: KeyRing = state.keyring
    settings: Settings = state.settings
    scope = await queries.visible_scope(session, principal, org)
    filters = queries.EventFilter(
        scope,
        since=since if since is None or since.tzinfo else since.replace(tzinfo=dt.UTC),
        until=until if until is None or until.tzinfo else until.replace(tzinfo=dt.UTC),
        product=await queries.check_product(session, product),
    )
    pseudonyms = redaction.Pseudonyms(redaction.secret(settings, keyring))
    body = await bundles.build_bundle(session, keyring, settings.jwt_issuer, filters, org=org, pseudonyms=pseudonyms)
    return Response(body, media_type="application/json")
