"""Audit events join the hash chain at commit, holding the chain head's lock only while committing.

``audit_append`` is the one place the chain is extended: it locks the head, hashes the event exactly as
``app.audit.service.canonical`` describes, inserts it and advances the head. A transaction that records
an event inserts it into ``audit_pending``; a deferred constraint trigger calls ``audit_append`` for each
pending row, in insertion order, when the transaction commits, and deletes the pending row. The head's
lock is thus held from the commit's start to its end, with no client round trip inside, instead of from
the append to the commit. A rolled-back transaction leaves neither a pending row nor a gap. Callers that
need the chain hash before committing (download receipts) call ``audit_append`` directly.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 23:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AUDIT_APPEND = """
CREATE FUNCTION audit_append(
    p_actor text, p_org_id uuid, p_action text, p_target_type text, p_target_id text,
    p_request_id text, p_client_addr text, p_details jsonb,
    OUT event_seq bigint, OUT event_time timestamptz, OUT event_prev_hash bytea, OUT event_hash bytea
) LANGUAGE plpgsql AS $$
BEGIN
    SELECT h.seq + 1, h.hash INTO event_seq, event_prev_hash FROM audit_head AS h WHERE h.id = 1 FOR UPDATE;
    -- Taken under the lock, so occurred_at does not decrease along the chain.
    event_time := pg_catalog.clock_timestamp();
    event_hash := pg_catalog.sha256(event_prev_hash || pg_catalog.convert_to(
        '[' || event_seq
        || ',"' || pg_catalog.to_char(event_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
        || '",' || pg_catalog.to_json(p_actor)
        || ',' || coalesce('"' || CAST(p_org_id AS text) || '"', 'null')
        || ',' || pg_catalog.to_json(p_action)
        || ',' || coalesce(CAST(pg_catalog.to_json(p_target_type) AS text), 'null')
        || ',' || coalesce(CAST(pg_catalog.to_json(p_target_id) AS text), 'null')
        || ',' || coalesce(CAST(pg_catalog.to_json(p_request_id) AS text), 'null')
        || ',' || coalesce(CAST(pg_catalog.to_json(p_client_addr) AS text), 'null')
        || ',' || CAST(p_details AS text)
        || ']',
        'UTF8'));
    INSERT INTO audit_events (seq, occurred_at, actor, org_id, action, target_type, target_id, request_id,
                              client_addr, details, prev_hash, hash)
    VALUES (event_seq, event_time, p_actor, p_org_id, p_action, p_target_type, p_target_id, p_request_id,
            p_client_addr, p_details, event_prev_hash, event_hash);
    UPDATE audit_head SET seq = event_seq, hash = event_hash WHERE id = 1;
END
$$
"""

CHAIN_PENDING = """
CREATE FUNCTION audit_chain_pending() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM audit_append(NEW.actor, NEW.org_id, NEW.action, NEW.target_type, NEW.target_id, NEW.request_id,
                         NEW.client_addr, NEW.details);
    DELETE FROM audit_pending WHERE id = NEW.id;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "audit_pending",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("actor", sa.String(length=80), nullable=False),
        sa.Column("org_id", sa.UUID(), nullable=True),
        sa.Column("action", sa.String(length=80), nullable=False),
        sa.Column("target_type", sa.String(length=40), nullable=True),
        sa.Column("target_id", sa.String(length=200), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("client_addr", sa.String(length=64), nullable=True),
        sa.Column("details", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_pending")),
    )
    op.execute(AUDIT_APPEND)
    op.execute(CHAIN_PENDING)
    op.execute(
        "CREATE CONSTRAINT TRIGGER audit_pending_chain AFTER INSERT ON audit_pending"
        " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION audit_chain_pending()"
    )
    # Like the refusal triggers: also under session_replication_role = replica.
    op.execute("ALTER TABLE audit_pending ENABLE ALWAYS TRIGGER audit_pending_chain")


def downgrade() -> None:
    op.execute("DROP TRIGGER audit_pending_chain ON audit_pending")
    op.execute("DROP FUNCTION audit_chain_pending()")
    op.execute("DROP FUNCTION audit_append(text, uuid, text, text, text, text, text, jsonb)")
    op.drop_table("audit_pending")
