"""Audit proofs: every event is also a leaf of an RFC 9162 Merkle tree.

``leaf_hash = sha256(0x00 || canonical(event))`` is stored with each event; interior nodes are
``sha256(0x01 || left || right)``. The hashes of complete, aligned subtrees of 2**6 leaves and more are
stored in ``audit_tree_nodes`` as they complete, so any inclusion or consistency proof needs at most a few
dozen stored hashes and two blocks of 64 leaf hashes. The head keeps the tree's frontier (the roots of the
complete subtrees at the right edge, largest first), so appending hashes about once per event and the root of
the current tree is a fold of at most 64 hashes. Existing events are hashed into the tree here.

Revision ID: 0017
Revises: 0016
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The bytes both the chain and the tree hash, as app.audit.service.canonical describes them.
AUDIT_CANONICAL = """
CREATE FUNCTION audit_canonical(
    p_seq bigint, p_time timestamptz, p_actor text, p_org_id uuid, p_action text, p_target_type text,
    p_target_id text, p_request_id text, p_client_addr text, p_details jsonb
) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT pg_catalog.convert_to(
        '[' || p_seq
        || ',"' || pg_catalog.to_char(p_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
        || '",' || pg_catalog.to_json(p_actor)
        || ',' || coalesce('"' || CAST(p_org_id AS text) || '"', 'null')
        || ',' || pg_catalog.to_json(p_action)
        || ',' || coalesce(CAST(pg_catalog.to_json(p_target_type) AS text), 'null')
        || ',' || coalesce(CAST(pg_catalog.to_json(p_target_id) AS text), 'null')
        || ',' || coalesce(CAST(pg_catalog.to_json(p_request_id) AS text), 'null')
        || ',' || coalesce(CAST(pg_catalog.to_json(p_client_addr) AS text), 'null')
        || ',' || CAST(p_details AS text)
        || ']',
        'UTF8')
$$
"""

# Appends leaf index ``p_size`` (the tree's size before it) to the frontier and stores each completed
# subtree of level >= 6; returns the new frontier.
AUDIT_TREE_PUSH = """
CREATE FUNCTION audit_tree_push(p_size bigint, p_frontier bytea, p_leaf bytea) RETURNS bytea
LANGUAGE plpgsql AS $$
DECLARE
    v_node bytea := p_leaf;
    v_frontier bytea := p_frontier;
    v_level integer := 0;
BEGIN
    WHILE ((p_size >> v_level) & 1) = 1 LOOP
        v_node := pg_catalog.sha256('\\x01'::bytea || substr(v_frontier, length(v_frontier) - 31, 32) || v_node);
        v_frontier := substr(v_frontier, 1, length(v_frontier) - 32);
        v_level := v_level + 1;
        IF v_level >= 6 THEN
            INSERT INTO audit_tree_nodes (level, idx, hash) VALUES (v_level, p_size >> v_level, v_node);
        END IF;
    END LOOP;
    RETURN v_frontier || v_node;
END
$$
"""

AUDIT_APPEND = """
CREATE OR REPLACE FUNCTION audit_append(
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
    -- Taken under the lock, so occurred_at does not decrease along the chain.
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

BACKFILL = """
DO $$
DECLARE
    v_frontier bytea := ''::bytea;
    v_event record;
BEGIN
    FOR v_event IN SELECT seq, leaf_hash FROM audit_events ORDER BY seq LOOP
        v_frontier := audit_tree_push(v_event.seq - 1, v_frontier, v_event.leaf_hash);
    END LOOP;
    UPDATE audit_head SET frontier = v_frontier WHERE id = 1;
END
$$
"""

OLD_AUDIT_APPEND = """
CREATE OR REPLACE FUNCTION audit_append(
    p_actor text, p_org_id uuid, p_action text, p_target_type text, p_target_id text,
    p_request_id text, p_client_addr text, p_details jsonb,
    OUT event_seq bigint, OUT event_time timestamptz, OUT event_prev_hash bytea, OUT event_hash bytea
) LANGUAGE plpgsql AS $$
BEGIN
    SELECT h.seq + 1, h.hash INTO event_seq, event_prev_hash FROM audit_head AS h WHERE h.id = 1 FOR UPDATE;
    event_time := pg_catalog.clock_timestamp();
    event_hash := pg_catalog.sha256(event_prev_hash || audit_canonical(event_seq, event_time, p_actor, p_org_id,
        p_action, p_target_type, p_target_id, p_request_id, p_client_addr, p_details));
    INSERT INTO audit_events (seq, occurred_at, actor, org_id, action, target_type, target_id, request_id,
                              client_addr, details, prev_hash, hash)
    VALUES (event_seq, event_time, p_actor, p_org_id, p_action, p_target_type, p_target_id, p_request_id,
            p_client_addr, p_details, event_prev_hash, event_hash);
    UPDATE audit_head SET seq = event_seq, hash = event_hash WHERE id = 1;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "audit_tree_nodes",
        sa.Column("level", sa.SmallInteger(), nullable=False),
        sa.Column("idx", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("level >= 6 AND level < 64 AND idx >= 0", name=op.f("ck_audit_tree_nodes_position")),
        sa.CheckConstraint("octet_length(hash) = 32", name=op.f("ck_audit_tree_nodes_hash_length")),
        sa.PrimaryKeyConstraint("level", "idx", name=op.f("pk_audit_tree_nodes")),
    )
    for name, when in (
        ("audit_tree_nodes_refuse_update_delete", "BEFORE UPDATE OR DELETE ON audit_tree_nodes FOR EACH ROW"),
        ("audit_tree_nodes_refuse_truncate", "BEFORE TRUNCATE ON audit_tree_nodes FOR EACH STATEMENT"),
    ):
        op.execute(f"CREATE TRIGGER {name} {when} EXECUTE FUNCTION audit_refuse_change()")
        op.execute(f"ALTER TABLE audit_tree_nodes ENABLE ALWAYS TRIGGER {name}")
    op.add_column("audit_head", sa.Column("frontier", sa.LargeBinary(), server_default=sa.text("''"), nullable=False))
    op.create_check_constraint("frontier_whole_hashes", "audit_head", "octet_length(frontier) % 32 = 0")
    op.add_column("audit_events", sa.Column("leaf_hash", sa.LargeBinary(), nullable=True))
    op.execute(AUDIT_CANONICAL)
    op.execute(AUDIT_TREE_PUSH)
    # The one rewrite the log ever allows: existing events gain their leaf hash.
    op.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_refuse_update_delete")
    op.execute(
        "UPDATE audit_events SET leaf_hash = sha256('\\x00'::bytea || audit_canonical(seq, occurred_at, actor,"
        " org_id, action, target_type, target_id, request_id, client_addr, details))"
    )
    op.execute("ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_refuse_update_delete")
    op.alter_column("audit_events", "leaf_hash", nullable=False)
    op.create_check_constraint("leaf_hash_length", "audit_events", "octet_length(leaf_hash) = 32")
    op.execute(BACKFILL)
    op.execute(AUDIT_APPEND)


def downgrade() -> None:
    op.execute(OLD_AUDIT_APPEND)
    op.execute("DROP FUNCTION audit_tree_push(bigint, bytea, bytea)")
    op.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_refuse_update_delete")
    op.drop_constraint("ck_audit_events_leaf_hash_length", "audit_events")
    op.drop_column("audit_events", "leaf_hash")
    op.execute("ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_refuse_update_delete")
    op.drop_constraint("ck_audit_head_frontier_whole_hashes", "audit_head")
    op.drop_column("audit_head", "frontier")
    op.drop_table("audit_tree_nodes")
