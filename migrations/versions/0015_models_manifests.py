"""Model manifests: which corpus versions, entitlements and uses trained a model.

Revision ID: 0015
Revises: 0014
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

USES = (
    "research",
    "evaluation",
    "pretraining",
    "fine_tuning",
    "rag_indexing",
    "synthetic_data_generation",
    "commercial_model_release",
    "open_weights_release",
    "redistribution",
    "derivative_datasets",
)


def upgrade() -> None:
    op.create_table(
        "model_manifests",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("org_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("document", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("manifest_digest", sa.String(length=71), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("manifest_digest ~ '^sha256:[0-9a-f]{64}$'", name=op.f("ck_model_manifests_digest_format")),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], name=op.f("fk_model_manifests_org_id_organizations")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_manifests")),
        sa.UniqueConstraint("org_id", "name", "version", name="uq_model_manifests_org_id_name_version"),
    )
    op.create_index("ix_model_manifests_org_id_created_at", "model_manifests", ["org_id", "created_at"])
    op.create_table(
        "model_training_items",
        sa.Column("manifest_id", sa.UUID(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("entitlement_id", sa.UUID(), nullable=False),
        sa.Column("version_id", sa.UUID(), nullable=False),
        sa.Column("use", sa.String(length=40), nullable=False),
        sa.Column("licence_id", sa.String(length=200), nullable=False),
        sa.Column("files_downloaded", sa.Integer(), nullable=False),
        sa.Column("bytes_downloaded", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "use IN (" + ", ".join(repr(u) for u in USES) + ")", name=op.f("ck_model_training_items_known_use")
        ),
        sa.CheckConstraint(
            "files_downloaded > 0 AND bytes_downloaded >= 0",
            name=op.f("ck_model_training_items_something_downloaded"),
        ),
        sa.ForeignKeyConstraint(
            ["entitlement_id"], ["entitlements.id"], name=op.f("fk_model_training_items_entitlement_id_entitlements")
        ),
        sa.ForeignKeyConstraint(
            ["licence_id"], ["licences.id"], name=op.f("fk_model_training_items_licence_id_licences")
        ),
        sa.ForeignKeyConstraint(
            ["manifest_id"], ["model_manifests.id"], name=op.f("fk_model_training_items_manifest_id_model_manifests")
        ),
        sa.ForeignKeyConstraint(
            ["version_id"], ["product_versions.id"], name=op.f("fk_model_training_items_version_id_product_versions")
        ),
        sa.PrimaryKeyConstraint("manifest_id", "position", name=op.f("pk_model_training_items")),
        sa.UniqueConstraint("manifest_id", "entitlement_id", "version_id", "use", name="uq_model_training_items_item"),
    )
    op.create_index("ix_model_training_items_version_id", "model_training_items", ["version_id"])
    op.create_index("ix_model_training_items_entitlement_id", "model_training_items", ["entitlement_id"])


def downgrade() -> None:
    op.drop_index("ix_model_training_items_entitlement_id", table_name="model_training_items")
    op.drop_index("ix_model_training_items_version_id", table_name="model_training_items")
    op.drop_table("model_training_items")
    op.drop_index("ix_model_manifests_org_id_created_at", table_name="model_manifests")
    op.drop_table("model_manifests")
