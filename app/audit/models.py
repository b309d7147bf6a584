"""The append-only, hash-chained audit log."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Identity, Index, LargeBinary, SmallInteger, String, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class AuditEvent(Base):
    """One event. ``hash = sha256(prev_hash || canonical(event))``; ``seq`` has no gaps.

    UPDATE, DELETE and TRUNCATE are refused by triggers created in the migration.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        CheckConstraint("seq > 0", "seq_positive"),
        CheckConstraint("octet_length(hash) = 32 AND octet_length(prev_hash) = 32", "hash_lengths"),
        CheckConstraint("octet_length(leaf_hash) = 32", "leaf_hash_length"),
        Index("ix_audit_events_org_id_seq", "org_id", "seq"),
    )

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    occurred_at: Mapped[dt.datetime]
    actor: Mapped[str] = mapped_column(String(80))
    org_id: Mapped[uuid.UUID | None]
    action: Mapped[str] = mapped_column(String(80))
    target_type: Mapped[str | None] = mapped_column(String(40))
    target_id: Mapped[str | None] = mapped_column(String(200))
    request_id: Mapped[str | None] = mapped_column(String(64))
    client_addr: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSONB)
    prev_hash: Mapped[bytes] = mapped_column(LargeBinary)
    hash: Mapped[bytes] = mapped_column(LargeBinary)
    # sha256(0x00 || canonical(event)): the event as leaf seq - 1 of the Merkle tree (RFC 9162)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary)


class AuditHead(Base):
    """The single row holding the chain head; its row lock serialises sequencing batches (migration 0021)."""

    __tablename__ = "audit_head"
    __table_args__ = (
        CheckConstraint("id = 1", "single_row"),
        CheckConstraint("octet_length(frontier) % 32 = 0", "frontier_whole_hashes"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[bytes] = mapped_column(LargeBinary)
    # The roots of the complete subtrees along the tree's right edge, largest first, 32 bytes each.
    frontier: Mapped[bytes] = mapped_column(LargeBinary, server_default=text("''"))


class AuditTreeNode(Base):
    """The hash of the complete, aligned subtree of ``2**level`` leaves starting at leaf ``idx * 2**level``.

    Stored for ``level >= 6`` as the subtree completes (smaller ones are hashed from leaves when needed);
    append-only like the events.
    """

    __tablename__ = "audit_tree_nodes"
    __table_args__ = (
        CheckConstraint("level >= 6 AND level < 64 AND idx >= 0", "position"),
        CheckConstraint("octet_length(hash) = 32", "hash_length"),
    )

    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary)


class AuditPending(Base):
    """An event recorded in its transaction and not yet sequenced into the log.

    Committed with the change it describes; the sequencer (app/audit/sequencer.py, ``audit_sequence`` of migration
    0021) moves committed rows into ``audit_events`` in batches shortly after, deleting them. Triggers refuse any
    other UPDATE, DELETE or TRUNCATE.
    """

    __tablename__ = "audit_pending"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    actor: Mapped[str] = mapped_column(String(80))
    org_id: Mapped[uuid.UUID | None]
    action: Mapped[str] = mapped_column(String(80))
    target_type: Mapped[str | None] = mapped_column(String(40))
    target_id: Mapped[str | None] = mapped_column(String(200))
    request_id: Mapped[str | None] = mapped_column(String(64))
    client_addr: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # when the transaction recorded it (database clock): the event's occurred_at, unless an event already
    # sequenced has a later one
    recorded_at: Mapped[dt.datetime] = mapped_column(server_default=text("clock_timestamp()"))
