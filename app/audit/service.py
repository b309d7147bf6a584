"""Appending to and verifying the audit hash chain."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEvent, AuditHead
from app.db import utcnow

GENESIS_HASH = bytes(32)


@dataclasses.dataclass(frozen=True, slots=True)
class AuditContext:
    """Who did it and through which request: the part of an event that comes from the caller."""

    actor: str  # "user:<uuid>", "api_key:<uuid>", "anonymous", "system"
    request_id: str | None = None
    client_addr: str | None = None


SYSTEM = AuditContext(actor="system")


def canonical(
    *,
    seq: int,
    occurred_at: dt.datetime,
    actor: str,
    org_id: uuid.UUID | None,
    action: str,
    target_type: str | None,
    target_id: str | None,
    request_id: str | None,
    client_addr: str | None,
    details: Mapping[str, Any],
) -> bytes:
    """The byte encoding that is hashed: sorted-key compact JSON, UTC time with microseconds."""
    document = {
        "seq": seq,
        "occurred_at": occurred_at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
        "actor": actor,
        "org_id": str(org_id) if org_id is not None else None,
        "action": action,
        "target_type": target_type,
        "target_id": target_id,
        "request_id": request_id,
        "client_addr": client_addr,
        "details": details,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(prev_hash: bytes, encoded: bytes) -> bytes:
    return hashlib.sha256(prev_hash + encoded).digest()


def event_hash(event: AuditEvent) -> bytes:
    return chain_hash(
        event.prev_hash,
        canonical(
            seq=event.seq,
            occurred_at=event.occurred_at,
            actor=event.actor,
            org_id=event.org_id,
            action=event.action,
            target_type=event.target_type,
            target_id=event.target_id,
            request_id=event.request_id,
            client_addr=event.client_addr,
            details=event.details,
        ),
    )


async def record(
    session: AsyncSession,
    context: AuditContext,
    action: str,
    *,
    org_id: uuid.UUID | None = None,
    target_type: str | None = None,
    target_id: object | None = None,
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Append one event in the caller's transaction.

    Taking the head row's lock serialises appends until the transaction ends, so call this as the last
    write of a request. A rolled-back transaction takes its sequence number back with it: no gaps.
    """
    head = (
        await session.execute(
            update(AuditHead)
            .where(AuditHead.id == 1)
            .values(seq=AuditHead.seq + 1)
            .returning(AuditHead.seq, AuditHead.hash)
        )
    ).one()
    seq, prev_hash = head.seq, head.hash
    # Round-trip through JSON so the hashed details equal what JSONB gives back on verification.
    body = json.loads(json.dumps(dict(details or {}), default=str))
    event = AuditEvent(
        seq=seq,
        occurred_at=utcnow(),
        actor=context.actor,
        org_id=org_id,
        action=action,
        target_type=target_type,
        target_id=str(target_id) if target_id is not None else None,
        request_id=context.request_id,
        client_addr=context.client_addr,
        details=body,
        prev_hash=prev_hash,
        hash=b"",
    )
    event.hash = event_hash(event)
    await session.execute(
        insert(AuditEvent).values({c.key: getattr(event, c.key) for c in AuditEvent.__table__.columns})
    )
    await session.execute(update(AuditHead).where(AuditHead.id == 1).values(hash=event.hash))
    return event


@dataclasses.dataclass(slots=True)
class ChainReport:
    ok: bool
    events_checked: int
    head_seq: int
    head_hash: str | None
    first_bad_event: int | None
    problem: str | None


async def iter_events(session: AsyncSession, batch: int = 5000) -> AsyncIterator[AuditEvent]:
    """Every event in ``seq`` order, read in keyset batches."""
    after = 0
    while True:
        rows = (
            await session.scalars(
                select(AuditEvent).where(AuditEvent.seq > after).order_by(AuditEvent.seq).limit(batch)
            )
        ).all()
        if not rows:
            return
        for row in rows:
            yield row
        after = rows[-1].seq


async def verify_chain(session: AsyncSession, checkpoints: Mapping[int, bytes] | None = None) -> ChainReport:
    """Recompute the chain from the genesis and compare it with signed checkpoints (``seq → hash``).

    Detects a modified row (hash mismatch), a deleted row (sequence gap), reordered rows (broken links)
    and a truncated tail (a checkpoint beyond the last event, or one that no longer matches).
    """
    checkpoints = dict(checkpoints or {})
    expected_seq = 1
    prev = GENESIS_HASH
    checked = 0

    def bad(seq: int, problem: str) -> ChainReport:
        return ChainReport(False, checked, expected_seq - 1, prev.hex(), seq, problem)

    async for event in iter_events(session):
        if event.seq != expected_seq:
            return bad(expected_seq, f"event {expected_seq} is missing (next present is {event.seq})")
        if event.prev_hash != prev:
            return bad(event.seq, f"event {event.seq} does not link to the event before it")
        if event_hash(event) != event.hash:
            return bad(event.seq, f"event {event.seq} was altered: its content does not match its hash")
        if (signed := checkpoints.get(event.seq)) is not None and signed != event.hash:
            return bad(event.seq, f"event {event.seq} differs from the signed checkpoint at that position")
        prev = event.hash
        checked += 1
        expected_seq += 1
    last = expected_seq - 1
    beyond = [seq for seq in checkpoints if seq > last]
    if beyond:
        return ChainReport(
            False,
            checked,
            last,
            prev.hex() if checked else None,
            last + 1,
            f"the log ends at event {last} but a signed checkpoint covers event {max(beyond)}: the tail was truncated",
        )
    head = (await session.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1))).one_or_none()
    if head is not None and head.seq != last:
        return ChainReport(
            False, checked, last, prev.hex(), last + 1, f"the chain head says {head.seq} events, found {last}"
        )
    return ChainReport(True, checked, last, prev.hex() if checked else None, None, None)
