"""Takedowns: complaints and decisions, the content they withdrew, affected downloaders and their attestations.

Revision ID: 0016
Revises: 0015
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}"))


def upgrade() -> None:
    op.create_table(
        "takedowns",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("product_id", sa.UUID(), nullable=False),
        sa.Column("version_id", sa.UUID(), nullable=True),
        sa.Column("provider_org_id", sa.UUID(), nullable=False),
        sa.Column("claimant_user_id", sa.UUID(), nullable=False),
        sa.Column("claimant_name", sa.String(length=200), nullable=False),
        sa.Column("claimant_email", sa.String(length=320), nullable=False),
        sa.Column("rights_holder", sa.String(length=200), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("paths", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("sha256", postgresql.ARRAY(sa.String(length=64)), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("decision", sa.String(length=10), nullable=True),
        sa.Column("decision_reason", sa.Text(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.UUID(), nullable=True),
        sa.Column("reach", sa.String(length=10), nullable=True),
        sa.CheckConstraint("decision IN ('uphold', 'dismiss')", name=op.f("ck_takedowns_known_decision")),
        sa.CheckConstraint("reach IN ('provider', 'platform')", name=op.f("ck_takedowns_known_reach")),
        sa.CheckConstraint("cardinality(sha256) > 0", name=op.f("ck_takedowns_names_content")),
        sa.CheckConstraint(
            "(decision IS NULL) = (decided_at IS NULL) AND (decision IS NULL) = (decided_by IS NULL)",
            name=op.f("ck_takedowns_decided_once_with_decider"),
        ),
        sa.CheckConstraint(
            "(reach IS NOT NULL) = (decision IS NOT DISTINCT FROM 'uphold')", name=op.f("ck_takedowns_upheld_has_reach")
        ),
        _fk("takedowns", "product_id", "products"),
        _fk("takedowns", "version_id", "product_versions"),
        _fk("takedowns", "provider_org_id", "organizations"),
        _fk("takedowns", "claimant_user_id", "users"),
        _fk("takedowns", "decided_by", "users"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_takedowns")),
    )
    op.create_index(
        "ix_takedowns_provider_org_id_received_at", "takedowns", ["provider_org_id", "received_at"], unique=False
    )
    op.create_index("ix_takedowns_claimant_user_id", "takedowns", ["claimant_user_id"], unique=False)
    op.create_table(
        "withdrawn_content",
        sa.Column("takedown_id", sa.UUID(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("provider_org_id", sa.UUID(), nullable=True),
        sa.Column("withdrawn_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        _fk("withdrawn_content", "takedown_id", "takedowns"),
        _fk("withdrawn_content", "provider_org_id", "organizations"),
        sa.PrimaryKeyConstraint("takedown_id", "sha256", name=op.f("pk_withdrawn_content")),
    )
    op.create_index("ix_withdrawn_content_sha256", "withdrawn_content", ["sha256"], unique=False)
    op.create_table(
        "takedown_affected",
        sa.Column("takedown_id", sa.UUID(), nullable=False),
        sa.Column("entitlement_id", sa.UUID(), nullable=False),
        sa.Column("org_id", sa.UUID(), nullable=False),
        sa.Column("sha256", postgresql.ARRAY(sa.String(length=64)), nullable=False),
        sa.Column("last_downloaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("cardinality(sha256) > 0", name=op.f("ck_takedown_affected_names_content")),
        _fk("takedown_affected", "takedown_id", "takedowns"),
        _fk("takedown_affected", "entitlement_id", "entitlements"),
        _fk("takedown_affected", "org_id", "organizations"),
        sa.PrimaryKeyConstraint("takedown_id", "entitlement_id", name=op.f("pk_takedown_affected")),
    )
    op.create_index("ix_takedown_affected_org_id", "takedown_affected", ["org_id"], unique=False)
    op.create_table(
        "takedown_attestations",
        sa.Column("takedown_id", sa.UUID(), nullable=False),
        sa.Column("org_id", sa.UUID(), nullable=False),
        sa.Column("statement", sa.Text(), nullable=False),
        sa.Column("attested_by", sa.UUID(), nullable=False),
        sa.Column("attested_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        _fk("takedown_attestations", "takedown_id", "takedowns"),
        _fk("takedown_attestations", "org_id", "organizations"),
        _fk("takedown_attestations", "attested_by", "users"),
        sa.PrimaryKeyConstraint("takedown_id", "org_id", name=op.f("pk_takedown_attestations")),
    )


def downgrade() -> None:
    op.drop_table("takedown_attestations")
    op.drop_index("ix_takedown_affected_org_id", table_name="takedown_affected")
    op.drop_table("takedown_affected")
    op.drop_index("ix_withdrawn_content_sha256", table_name="withdrawn_content")
    op.drop_table("withdrawn_content")
    op.drop_index("ix_takedowns_claimant_user_id", table_name="takedowns")
    op.drop_index("ix_takedowns_provider_org_id_received_at", table_name="takedowns")
    op.drop_table("takedowns")
