"""Audit events are sequenced in batches after their transactions commit, so recording one locks nothing shared.

Until now a deferred trigger appended each ``audit_pending`` row to the chain at its transaction's commit, under
the chain head's row lock, so every transaction that recorded an event (every grant) committed one at a time.
Now the pending row is the event's durable record, committed with the change it describes, and
``audit_sequence(limit)`` moves up to ``limit`` committed pending rows into the log in one transaction: under the
head's lock it gives each the next ``seq``, its chain hash and Merkle leaf (extending the stored subtrees and the
frontier), inserts it into ``audit_events`` and deletes its pending row. The service's processes call it a few
times a second (app/audit/sequencer.py), one at a time.

``occurred_at`` is the time the event was recorded in its transaction (``recorded_at``, the database clock), raised
to the previous event's when a transaction that recorded earlier committed after later events were sequenced, so
it never decreases along the chain. ``audit_content_digest`` hashes an event's content without its position
(``seq``, ``occurred_at``), which a transaction can know before its event is sequenced: download receipts carry it.

Pending rows are part of the record, so they are guarded like the log: UPDATE and TRUNCATE are refused, and DELETE
outside ``audit_sequence`` (which marks its transaction) too. Migrated databases keep their chain as it is; the
direct appender ``audit_append`` is dropped.

Revision ID: 0021
Revises: 0020
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AUDIT_SEQUENCE = """
CREATE FUNCTION audit_sequence(p_limit integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint;
    v_hash bytea;
    v_frontier bytea;
    v_last timestamptz;
    v_time timestamptz;
    v_encoded bytea;
    v_leaf bytea;
    v_event record;
    v_ids bigint[] := '{}';
BEGIN
    -- Polled often: nothing committed is pending, so take no lock and write nothing.
    IF NOT EXISTS (SELECT FROM audit_pending) THEN
        RETURN 0;
    END IF;
    SELECT h.seq, h.hash, h.frontier INTO v_seq, v_hash, v_frontier FROM audit_head AS h WHERE h.id = 1 FOR UPDATE;
    SELECT e.occurred_at INTO v_last FROM audit_events AS e WHERE e.seq = v_seq;
    FOR v_event IN SELECT * FROM audit_pending ORDER BY id LIMIT p_limit LOOP
        v_seq := v_seq + 1;
        v_time := greatest(v_event.recorded_at, v_last);
        v_encoded := audit_canonical(v_seq, v_time, v_event.actor, v_event.org_id, v_event.action,
                                     v_event.target_type, v_event.target_id, v_event.request_id,
                                     v_event.client_addr, v_event.details);
        v_leaf := pg_catalog.sha256('\\x00'::bytea || v_encoded);
        INSERT INTO audit_events (seq, occurred_at, actor, org_id, action, target_type, target_id, request_id,
                                  client_addr, details, prev_hash, hash, leaf_hash)
        VALUES (v_seq, v_time, v_event.actor, v_event.org_id, v_event.action, v_event.target_type,
                v_event.target_id, v_event.request_id, v_event.client_addr, v_event.details, v_hash,
                pg_catalog.sha256(v_hash || v_encoded), v_leaf);
        v_hash := pg_catalog.sha256(v_hash || v_encoded);
        v_frontier := audit_tree_push(v_seq - 1, v_frontier, v_leaf);
        v_last := v_time;
        v_ids := v_ids || v_event.id;
    END LOOP;
    IF cardinality(v_ids) > 0 THEN
        PERFORM pg_catalog.set_config('corpora.audit_sequencing', 'on', true);
        DELETE FROM audit_pending WHERE id = ANY(v_ids);
        PERFORM pg_catalog.set_config('corpora.audit_sequencing', '', true);
        UPDATE audit_head SET seq = v_seq, hash = v_hash, frontier = v_frontier WHERE id = 1;
    END IF;
    RETURN cardinality(v_ids);
END
$$
"""

CONTENT_DIGEST = """
CREATE FUNCTION audit_content_digest(
    p_actor text, p_org_id uuid, p_action text, p_target_type text, p_target_id text, p_request_id text,
    p_client_addr text, p_details jsonb
) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT pg_catalog.sha256(pg_catalog.convert_to(
        '[' || pg_catalog.to_json(p_actor)
        || ',' || coalesce('"' || CAST(p_org_id AS text) || '"', 'null')
        || ',' || pg_catalog.to_json(p_action)
        || ',' || coalesce(CAST(pg_catalog.to_json(p_target_type) AS text), 'null')
        || ',' || coalesce(CAST(pg_catalog.to_json(p_target_id) AS text), 'null')
        || ',' || coalesce(CAST(pg_catalog.to_json(p_request_id) AS text), 'null')
        || ',' || coalesce(CAST(pg_catalog.to_json(p_client_addr) AS text), 'null')
        || ',' || CAST(p_details AS text)
        || ']',
        'UTF8'))
$$
"""

GUARD_PENDING = """
CREATE FUNCTION audit_pending_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND pg_catalog.current_setting('corpora.audit_sequencing', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% on % is refused: a recorded audit event leaves it only by joining the log', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""

# As in 0017, for the downgrade.
AUDIT_APPEND = """
CREATE FUNCTION audit_append(
    p_actor text, p_org_id uuid, p_action text, p_target_type text, p_target_id text,
    p_request_id text, p_client_addr text, p_details jsonb,
    OUT event_seq bigint, OUT event_time timestamptz, OUT event_prev_hash bytea, OUT event_hash bytea
) LANGUAGE plpgsql AS $$
DECLARE
    head_frontier bytea;
    encoded bytea;
    leaf bytea;
BEGIN
    SELECT h.seq + 1, h.hash, h.frontier INTO event_seq, event_prev_hash, head_frontier
    FROM audit_head AS h WHERE h.id = 1 FOR UPDATE;
    event_time := pg_catalog.clock_timestamp();
    encoded := audit_canonical(event_seq, event_time, p_actor, p_org_id, p_action, p_target_type, p_target_id,
                               p_request_id, p_client_addr, p_details);
    event_hash := pg_catalog.sha256(event_prev_hash || encoded);
    leaf := pg_catalog.sha256('\\x00'::bytea || encoded);
    INSERT INTO audit_events (seq, occurred_at, actor, org_id, action, target_type, target_id, request_id,
                              client_addr, details, prev_hash, hash, leaf_hash)
    VALUES (event_seq, event_time, p_actor, p_org_id, p_action, p_target_type, p_target_id, p_request_id,
            p_client_addr, p_details, event_prev_hash, event_hash, leaf);
    UPDATE audit_head SET seq = event_seq, hash = event_hash,
                          frontier = audit_tree_push(event_seq - 1, head_frontier, leaf)
    WHERE id = 1;
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

GUARDS = [
    ("audit_pending_refuse_update_delete", "BEFORE UPDATE OR DELETE ON audit_pending FOR EACH ROW"),
    ("audit_pending_refuse_truncate", "BEFORE TRUNCATE ON audit_pending FOR EACH STATEMENT"),
]


def upgrade() -> None:
    op.execute("DROP TRIGGER audit_pending_chain ON audit_pending")
    op.execute("DROP FUNCTION audit_chain_pending()")
    op.execute("DROP FUNCTION audit_append(text, uuid, text, text, text, text, text, jsonb)")
    op.add_column(
        "audit_pending",
        sa.Column(
            "recorded_at", sa.DateTime(timezone=True), server_default=sa.text("clock_timestamp()"), nullable=False
        ),
    )
    op.execute(AUDIT_SEQUENCE)
    op.execute(CONTENT_DIGEST)
    op.execute(GUARD_PENDING)
    for name, when in GUARDS:
        op.execute(f"CREATE TRIGGER {name} {when} EXECUTE FUNCTION audit_pending_guard()")
        op.execute(f"ALTER TABLE audit_pending ENABLE ALWAYS TRIGGER {name}")


def downgrade() -> None:
    op.execute("SELECT audit_sequence(2147483647)")  # nothing committed stays pending
    for name, _ in GUARDS:
        op.execute(f"DROP TRIGGER {name} ON audit_pending")
    op.execute("DROP FUNCTION audit_pending_guard()")
    op.execute("DROP FUNCTION audit_content_digest(text, uuid, text, text, text, text, text, jsonb)")
    op.execute("DROP FUNCTION audit_sequence(integer)")
    op.drop_column("audit_pending", "recorded_at")
    op.execute(AUDIT_APPEND)
    op.execute(CHAIN_PENDING)
    op.execute(
        "CREATE CONSTRAINT TRIGGER audit_pending_chain AFTER INSERT ON audit_pending"
        " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION audit_chain_pending()"
    )
    op.execute("ALTER TABLE audit_pending ENABLE ALWAYS TRIGGER audit_pending_chain")
