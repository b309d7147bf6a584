"""Model flags: the model manifests an upheld takedown found to record withdrawn content.

Revision ID: 0019
Revises: 0018
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_flags",
        sa.Column("takedown_id", sa.UUID(), nullable=False),
        sa.Column("manifest_id", sa.UUID(), nullable=False),
        sa.Column("sha256", postgresql.ARRAY(sa.String(length=64)), nullable=False),
        sa.Column("flagged_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("cardinality(sha256) > 0", name=op.f("ck_model_flags_names_content")),
        sa.ForeignKeyConstraint(["takedown_id"], ["takedowns.id"], name=op.f("fk_model_flags_takedown_id_takedowns")),
        sa.ForeignKeyConstraint(
            ["manifest_id"], ["model_manifests.id"], name=op.f("fk_model_flags_manifest_id_model_manifests")
        ),
        sa.PrimaryKeyConstraint("takedown_id", "manifest_id", name=op.f("pk_model_flags")),
    )
    op.create_index("ix_model_flags_manifest_id", "model_flags", ["manifest_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_model_flags_manifest_id", table_name="model_flags")
    op.drop_table("model_flags")
