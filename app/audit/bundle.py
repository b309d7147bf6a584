"""Building evidence bundles: the events a caller may read, each with its inclusion proof, the signed
checkpoint of the tree they are proven in, and the JWKS that verifies it (see ``app.audit.bundle_format``).

The checkpoint is signed for the head read in the bundle's own transaction, so every event the bundle holds
is in its tree; it is not stored (the checkpointer stores its own), and it verifies like a stored one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import checkpoints, proofs, queries, redaction
from app.audit.bundle_format import FORMAT, Bundle, BundleCheckpoint, BundleEvent
from app.audit.models import AuditEvent, AuditHead
from app.audit.service import CHAIN_COLUMNS
from app.auth.keys import KeyRing
from app.errors import ProblemError

MAX_BUNDLE_EVENTS = 100_000


def too_many(count: int) -> ProblemError:
    return ProblemError(
        422,
        "bundle-too-large",
        "Bundle too large",
        f"more than {MAX_BUNDLE_EVENTS} events match; narrow the bundle with `since` and `until`",
        extra={"limit": MAX_BUNDLE_EVENTS, "matched_at_least": count},
    )


async def _events(session: AsyncSession, filters: queries.EventFilter, up_to: int) -> Sequence[Any]:
    query = (
        select(*CHAIN_COLUMNS, queries.provider_column(filters.scope))
        .where(*queries.conditions(filters), AuditEvent.seq <= up_to)
        .order_by(AuditEvent.seq)
        .limit(MAX_BUNDLE_EVENTS + 1)
    )
    rows: Sequence[Any] = (await session.execute(query)).all()
    if len(rows) > MAX_BUNDLE_EVENTS:
        raise too_many(len(rows))
    return rows


async def build_bundle(
    session: AsyncSession,
    keyring: KeyRing,
    issuer: str,
    filters: queries.EventFilter,
    *,
    org: str | None,
    pseudonyms: redaction.Pseudonyms,
) -> bytes:
    """The bundle as JSON bytes (``details`` are copied byte for byte from PostgreSQL's rendering). Events the
    scope redacts (``app.audit.redaction``) carry a pseudonym for their actor, no request id or client address,
    and ``redacted: true``."""
    head = (
        await session.execute(select(AuditHead.seq, AuditHead.hash, AuditHead.frontier).where(AuditHead.id == 1))
    ).one()
    rows = await _events(session, filters, head.seq)
    paths = await proofs.inclusion_proofs(session, [row.seq for row in rows], head.seq) if rows else []
    signed = checkpoints.sign_head(keyring, issuer, head.seq, head.hash, head.frontier)
    assert signed.root_hash is not None
    bundle = Bundle(
        format=FORMAT,
        issuer=issuer,
        generated_at=signed.issued_at,
        org=org,
        product=filters.product,
        since=filters.since.isoformat() if filters.since else None,
        until=filters.until.isoformat() if filters.until else None,
        checkpoint=BundleCheckpoint(
            seq=head.seq,
            head_hash=head.hash.hex(),
            tree_size=head.seq,
            root_hash=signed.root_hash.hex(),
            issued_at=signed.issued_at,
            kid=signed.kid,
            jws=signed.jws,
        ),
        jwks=keyring.jwks(),
        events=[_event(row, path, filters.scope, pseudonyms) for row, path in zip(rows, paths, strict=True)],
    )
    return msgspec.json.encode(bundle)


def _event(row: Any, path: list[bytes], scope: queries.Scope, pseudonyms: redaction.Pseudonyms) -> BundleEvent:
    redacted = scope.redacts(row.org_id)
    return BundleEvent(
        seq=row.seq,
        occurred_at=row.occurred_at,
        actor=pseudonyms(row.provider_org_id, row.actor) if redacted else row.actor,
        org_id=row.org_id,
        action=row.action,
        target_type=row.target_type,
        target_id=row.target_id,
        request_id=None if redacted else row.request_id,
        client_addr=None if redacted else row.client_addr,
        details=msgspec.Raw(row.details.encode()),
        prev_hash=row.prev_hash.hex(),
        hash=row.hash.hex(),
        leaf_hash=row.leaf_hash.hex(),
        audit_path=[digest.hex() for digest in path],
        redacted=redacted,
    )
