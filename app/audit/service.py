"""Appending to and verifying the audit hash chain.

``hash = sha256(prev_hash || canonical(event))``, starting from 32 zero bytes. ``canonical`` is a compact
JSON array with the fields in this fixed order::

    [seq, "occurred_at", "actor", "org_id"|null, "action", "target_type"|null, "target_id"|null,
     "request_id"|null, "client_addr"|null, details]

``occurred_at`` is written ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC, microseconds), ``org_id`` as the
lowercase hyphenated UUID, strings with JSON's minimal escaping (``"``, ``\\`` and control characters;
everything else as UTF-8), and ``details`` exactly as PostgreSQL prints the stored ``jsonb`` value
(``details::text``). Hashing the database's own rendering of ``details`` keeps the chain independent of
how any client would re-serialise numbers or order keys.

The database function ``audit_sequence`` (migration 0021) renders these bytes in SQL when an event joins the
chain, in a batch shortly after its transaction committed (app/audit/sequencer.py); verification renders them
again in Python from the column values, independently of that SQL.

An event's position (``seq``, ``occurred_at``, its hashes) is only known once it is sequenced. What a transaction
can state about its own event is :func:`content_digest`: the same canonical form without ``seq`` and
``occurred_at``, ``sha256([actor, org_id, action, target_type, target_id, request_id, client_addr, details])``,
which ``audit_content_digest`` computes in SQL (download receipts carry it).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from sqlalchemy import BigInteger, Integer, Text, bindparam, cast, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.merkle import TreeBuilder
from app.audit.models import AuditEvent, AuditHead, AuditPending
from app.audit.proofs import stored_nodes

GENESIS_HASH = bytes(32)
VERIFY_BATCH = 20_000

_encode = msgspec.json.Encoder().encode
_sha256 = hashlib.sha256
_Raw = msgspec.Raw


@dataclasses.dataclass(frozen=True, slots=True)
class AuditContext:
    """Who did it and through which request: the part of an event that comes from the caller."""

    actor: str  # "user:<uuid>", "api_key:<uuid>", "anonymous", "system"
    request_id: str | None = None
    client_addr: str | None = None


SYSTEM = AuditContext(actor="system")


def format_time(moment: dt.datetime) -> str:
    """The hashed form of ``occurred_at``: UTC, microseconds, ``Z``."""
    return f"{moment.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%S.%fZ}"


def canonical(
    *,
    seq: int,
    occurred_at: dt.datetime | str,
    actor: str,
    org_id: uuid.UUID | str | None,
    action: str,
    target_type: str | None,
    target_id: str | None,
    request_id: str | None,
    client_addr: str | None,
    details_json: str | bytes,
) -> bytes:
    """The bytes that are hashed for one event; ``details_json`` is the stored ``jsonb`` as PostgreSQL prints it."""
    return _encode(
        (
            seq,
            occurred_at if isinstance(occurred_at, str) else format_time(occurred_at),
            actor,
            str(org_id) if org_id is not None else None,
            action,
            target_type,
            target_id,
            request_id,
            client_addr,
            _Raw(details_json),
        )
    )


# The columns verification reads, as plain values in the text forms that ``canonical`` hashes.
CHAIN_COLUMNS = (
    AuditEvent.seq,
    func.to_char(func.timezone("UTC", AuditEvent.occurred_at), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"', type_=Text).label(
        "occurred_at"
    ),
    AuditEvent.actor,
    cast(AuditEvent.org_id, Text).label("org_id"),
    AuditEvent.action,
    AuditEvent.target_type,
    AuditEvent.target_id,
    AuditEvent.request_id,
    AuditEvent.client_addr,
    cast(AuditEvent.details, Text).label("details"),
    AuditEvent.prev_hash,
    AuditEvent.hash,
    AuditEvent.leaf_hash,
)


def content_digest(
    *,
    actor: str,
    org_id: uuid.UUID | str | None,
    action: str,
    target_type: str | None,
    target_id: str | None,
    request_id: str | None,
    client_addr: str | None,
    details_json: str | bytes,
) -> bytes:
    """The digest of an event's content, without its position in the log (see the module's description)."""
    org = str(org_id) if org_id is not None else None
    encoded = _encode((actor, org, action, target_type, target_id, request_id, client_addr, _Raw(details_json)))
    return _sha256(encoded).digest()


def row_hash(row: Sequence[Any]) -> bytes:
    """The hash a row of ``CHAIN_COLUMNS`` should carry, from its own ``prev_hash`` and content."""
    seq, occurred, actor, org, action, ttype, tid, rid, addr, details, prev_hash = row[:11]
    encoded = _encode((seq, occurred, actor, org, action, ttype, tid, rid, addr, _Raw(details)))
    return _sha256(prev_hash + encoded).digest()


def encode_details(details: Mapping[str, Any] | None) -> str:
    """``details`` as JSON text for ``jsonb``; values JSON lacks (UUIDs, datetimes, …) become strings."""
    encoded = msgspec.json.encode(dict(details or {}), enc_hook=str)
    if b"\\u0000" in encoded:  # jsonb cannot store NUL characters
        encoded = msgspec.json.encode(_without_nul(msgspec.json.decode(encoded)))
    return encoded.decode()


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


_PENDING = text(
    "INSERT INTO audit_pending (actor, org_id, action, target_type, target_id, request_id, client_addr, details)"
    " VALUES (:actor, CAST(:org_id AS uuid), :action, :target_type, :target_id, :request_id, :client_addr,"
    " CAST(CAST(:details AS text) AS jsonb))"
)


def _event_values(
    context: AuditContext,
    action: str,
    org_id: uuid.UUID | None,
    target_type: str | None,
    target_id: object | None,
    details: Mapping[str, Any] | None,
) -> dict[str, Any]:
    return {
        "actor": context.actor,
        "org_id": str(org_id) if org_id is not None else None,
        "action": action,
        "target_type": target_type,
        "target_id": str(target_id) if target_id is not None else None,
        "request_id": context.request_id,
        "client_addr": context.client_addr,
        "details": encode_details(details),
    }


async def record(
    session: AsyncSession,
    context: AuditContext,
    action: str,
    *,
    org_id: uuid.UUID | None = None,
    target_type: str | None = None,
    target_id: object | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Record one event in the caller's transaction; it joins the log shortly after the transaction commits.

    Nothing shared is locked: the event is a row of ``audit_pending`` committed with the caller's change, and the
    sequencer gives it its sequence number and hashes within a second of the commit. A rolled-back transaction
    records nothing and leaves no gap.
    """
    await session.execute(_PENDING, _event_values(context, action, org_id, target_type, target_id, details))


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One event of ``record_many``."""

    action: str
    org_id: uuid.UUID | None = None
    target_type: str | None = None
    target_id: object | None = None
    details: Mapping[str, Any] | None = None


# The events as one statement over arrays, in their order: as many inserts as events cost PostgreSQL an
# execution each, and the API an encoding of every parameter each.
_PENDING_MANY = text(
    "INSERT INTO audit_pending (actor, org_id, action, target_type, target_id, request_id, client_addr, details)"
    " SELECT CAST(:actor AS text), e.org_id, e.action, e.target_type, e.target_id, CAST(:request_id AS text),"
    " CAST(:client_addr AS text), e.details"
    " FROM unnest(CAST(:org_ids AS uuid[]), CAST(:actions AS text[]), CAST(:target_types AS text[]),"
    " CAST(:target_ids AS text[]), CAST(:details AS jsonb[]))"
    " WITH ORDINALITY AS e(org_id, action, target_type, target_id, details, n) ORDER BY e.n"
)


async def record_many(session: AsyncSession, context: AuditContext, events: Sequence[Event]) -> None:
    """``record`` for many events in one statement (a batch of file uploads): each is its own event."""
    if events:
        await session.execute(
            _PENDING_MANY,
            {
                "actor": context.actor,
                "request_id": context.request_id,
                "client_addr": context.client_addr,
                "org_ids": [str(e.org_id) if e.org_id is not None else None for e in events],
                "actions": [e.action for e in events],
                "target_types": [e.target_type for e in events],
                "target_ids": [str(e.target_id) if e.target_id is not None else None for e in events],
                "details": [encode_details(e.details) for e in events],
            },
        )


@dataclasses.dataclass(slots=True)
class ChainReport:
    ok: bool
    events_checked: int
    head_seq: int
    head_hash: str | None
    first_bad_event: int | None
    problem: str | None
    checkpoints_checked: int = 0
    last_checkpoint_seq: int | None = None
    tree_size: int = 0
    root_hash: str | None = None
    roots_checked: int = 0
    pending_events: int = 0  # committed, not yet sequenced (a normal state for up to about a second)


_CHAIN_QUERY = (
    select(*CHAIN_COLUMNS)
    .where(AuditEvent.seq > bindparam("after", type_=BigInteger))
    .where(AuditEvent.seq <= bindparam("until", type_=BigInteger))
    .order_by(AuditEvent.seq)
    .limit(bindparam("batch", type_=Integer))
)


async def chain_rows(session: AsyncSession, *, after: int, until: int, batch: int = VERIFY_BATCH) -> Sequence[Any]:
    """One keyset batch of ``CHAIN_COLUMNS`` tuples with ``after < seq <= until``, in ``seq`` order.

    The Core select is run on the driver connection of the session's own connection (in its transaction):
    asyncpg's records are plain tuples already, and skipping SQLAlchemy's per-row result objects more than
    halves the client-side cost of reading the chain.
    """
    connection = await session.connection()
    values = {"after": after, "until": until, "batch": batch}
    driver: Any = (await connection.get_raw_connection()).driver_connection
    compiled = _CHAIN_QUERY.compile(dialect=connection.dialect)
    positions = getattr(compiled, "positiontup", None)
    if not hasattr(driver, "fetch") or positions is None:  # not asyncpg: the ordinary Core path
        return (await connection.execute(_CHAIN_QUERY, values)).all()
    params = {**compiled.params, **values}
    rows: Sequence[Any] = await driver.fetch(compiled.string, *(params[name] for name in positions))
    return rows


async def verify_chain(
    session: AsyncSession,
    checkpoints: Mapping[int, bytes] | None = None,
    *,
    batch: int = VERIFY_BATCH,
    roots: Mapping[int, bytes] | None = None,
) -> ChainReport:
    """Recompute the chain and the Merkle tree from the genesis; compare them with signed checkpoints (``seq →
    hash``) and signed tree roots (``tree_size → root_hash``).

    Detects a modified row (hash or leaf hash mismatch), a deleted row (sequence gap), reordered rows (broken
    links or hashes), a truncated tail (the head row, or a checkpoint beyond the last event), a consistent
    rewrite (the recomputed chain or tree no longer matches a signed checkpoint), and a stored tree node or
    frontier that differs from the recomputed tree (proofs served from it would not verify).

    Only events up to the head read at the start are checked, so appends running concurrently neither
    disturb nor slow the check. Read the checkpoints *before* calling this: every checkpoint then covers
    an event that was committed before the head was read.
    """
    checkpoints = dict(checkpoints or {})
    roots = dict(roots or {})
    head = (
        await session.execute(select(AuditHead.seq, AuditHead.hash, AuditHead.frontier).where(AuditHead.id == 1))
    ).one_or_none()
    if head is None:
        return ChainReport(False, 0, 0, None, 1, "the chain head row is missing")
    head_seq: int = head.seq

    expected = 1
    prev = GENESIS_HASH
    checked = 0
    compared = 0
    roots_compared = 0
    good_checkpoint = 0  # the last signed checkpoint the recomputed chain and tree matched
    tree = TreeBuilder()

    def report(first_bad: int | None, problem: str | None) -> ChainReport:
        return ChainReport(
            ok=problem is None,
            events_checked=checked,
            head_seq=expected - 1,
            head_hash=prev.hex() if expected > 1 else None,
            first_bad_event=first_bad,
            problem=problem,
            checkpoints_checked=compared,
            last_checkpoint_seq=good_checkpoint or None,
            tree_size=tree.size,
            root_hash=tree.root().hex() if problem is None else None,
            roots_checked=roots_compared,
        )

    encode = _encode
    raw = _Raw
    sha256 = _sha256
    signed_at = checkpoints.get
    root_at = roots.get
    push = tree.push
    after = 0
    while after < head_seq:
        rows = await chain_rows(session, after=after, until=head_seq, batch=batch)
        if not rows:
            break
        completed: list[tuple[int, int, bytes, int]] = []  # stored subtrees this batch completes, with their seq
        for seq, occurred, actor, org, action, ttype, tid, rid, addr, details, prev_hash, stored, leaf in rows:
            if seq != expected:
                return report(expected, f"event {expected} is missing (the next present is {seq})")
            encoded = encode((seq, occurred, actor, org, action, ttype, tid, rid, addr, raw(details)))
            if sha256(prev_hash + encoded).digest() != stored:
                return report(seq, f"event {seq} was altered: its content does not match its hash")
            if prev_hash != prev:
                # The row is self-consistent, so the one before it was rewritten with a new hash.
                return report(seq - 1, f"event {seq} does not link to event {seq - 1}: event {seq - 1} was altered")
            if sha256(b"\x00" + encoded).digest() != leaf:
                return report(seq, f"event {seq} was altered: its content does not match its Merkle leaf hash")
            completed.extend((level, idx, digest, seq) for level, idx, digest in push(leaf))
            signed, signed_root = signed_at(seq), root_at(seq)
            if signed is not None or signed_root is not None:
                compared += 1
                roots_compared += signed_root is not None
                rewritten = signed is not None and signed != stored
                if rewritten or (signed_root is not None and signed_root != tree.root()):
                    return report(
                        good_checkpoint + 1,
                        f"event {seq} differs from the signed checkpoint at that position: events "
                        f"{good_checkpoint + 1}..{seq} were rewritten",
                    )
                good_checkpoint = seq
            prev = stored
            checked += 1
            expected += 1
        if completed:
            found = await stored_nodes(session, [(level, idx) for level, idx, _, _ in completed])
            for level, idx, digest, seq in completed:
                if found.get((level, idx)) != digest:
                    first = (idx << level) + 1
                    return report(
                        first,
                        f"the stored Merkle subtree of events {first}..{seq} does not match the events: "
                        "proofs served from it would not verify",
                    )
        after = expected - 1
    last = expected - 1
    if last < head_seq:
        return report(last + 1, f"the chain head records {head_seq} events but the log ends at event {last}")
    if checked and head.hash != prev:
        return report(last, f"the chain head's hash does not match event {last}")
    if head.frontier != b"".join(tree.frontier):
        return report(last, "the chain head's Merkle frontier does not match the events")
    beyond = [seq for seq in (*checkpoints, *roots) if seq > last]
    if beyond:
        return report(
            last + 1,
            f"the log ends at event {last} but a signed checkpoint covers event {max(beyond)}: the tail was truncated",
        )
    verified = report(None, None)
    # Committed events the sequencer has not reached yet: part of the record, not yet of the log.
    verified.pending_events = int(await session.scalar(select(func.count()).select_from(AuditPending)) or 0)
    return verified
