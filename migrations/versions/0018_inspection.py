"""Inspection: file profiles, sample reviews and their items, opt-out evidence, the product's ``preview`` flag.

Revision ID: 0018
Revises: 0017
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.text("now()")


def upgrade() -> None:
    op.add_column("products", sa.Column("preview", sa.Boolean(), server_default="false", nullable=False))
    op.create_table(
        "file_profiles",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("version_id", sa.UUID(), nullable=False),
        sa.Column("file_id", sa.UUID(), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.String(1000), nullable=True),
        sa.Column("profile", postgresql.JSONB(), nullable=True),
        sa.UniqueConstraint("file_id", name=op.f("uq_file_profiles_file_id")),
        sa.CheckConstraint(
            "(profile IS NOT NULL) = (finished_at IS NOT NULL)", name=op.f("ck_file_profiles_profile_when_finished")
        ),
        sa.CheckConstraint(
            "finished_at IS NULL OR failed_at IS NULL", name=op.f("ck_file_profiles_finished_or_failed")
        ),
        sa.ForeignKeyConstraint(
            ["version_id"], ["product_versions.id"], name=op.f("fk_file_profiles_version_id_product_versions")
        ),
        sa.ForeignKeyConstraint(
            ["file_id"], ["version_files.id"], name=op.f("fk_file_profiles_file_id_version_files"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_file_profiles")),
    )
    op.create_index("ix_file_profiles_version_id", "file_profiles", ["version_id"])
    op.create_table(
        "sample_reviews",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("version_id", sa.UUID(), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("drawn_by", sa.UUID(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pass_rate", sa.Float(), nullable=True),
        sa.Column("passed", sa.Boolean(), nullable=True),
        sa.Column("jws", sa.Text(), nullable=True),
        sa.CheckConstraint("kind IN ('manual', 'technical')", name=op.f("ck_sample_reviews_known_kind")),
        sa.CheckConstraint("size BETWEEN 1 AND 10000", name=op.f("ck_sample_reviews_size_range")),
        sa.CheckConstraint("threshold > 0 AND threshold <= 1", name=op.f("ck_sample_reviews_threshold_range")),
        sa.CheckConstraint(
            "(finished_at IS NULL) = (jws IS NULL) AND (finished_at IS NULL) = (pass_rate IS NULL)",
            name=op.f("ck_sample_reviews_signed_when_finished"),
        ),
        sa.ForeignKeyConstraint(
            ["version_id"], ["product_versions.id"], name=op.f("fk_sample_reviews_version_id_product_versions")
        ),
        sa.ForeignKeyConstraint(["drawn_by"], ["users.id"], name=op.f("fk_sample_reviews_drawn_by_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sample_reviews")),
    )
    op.create_index("ix_sample_reviews_version_id", "sample_reviews", ["version_id"])
    op.create_table(
        "sample_items",
        sa.Column("sample_id", sa.UUID(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("record_index", sa.BigInteger(), nullable=False),
        sa.Column("record_sha256", sa.String(64), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=True),
        sa.Column("category", sa.String(100), nullable=True),
        sa.Column("judged_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("(ok IS NULL) = (judged_at IS NULL)", name=op.f("ck_sample_items_judged_when_ok")),
        sa.CheckConstraint(
            "ok IS NULL OR ok OR category IS NOT NULL", name=op.f("ck_sample_items_failure_has_category")
        ),
        sa.ForeignKeyConstraint(
            ["sample_id"], ["sample_reviews.id"], name=op.f("fk_sample_items_sample_id_sample_reviews")
        ),
        sa.PrimaryKeyConstraint("sample_id", "index", name=op.f("pk_sample_items")),
    )
    op.create_table(
        "opt_out_evidence",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("version_id", sa.UUID(), nullable=False),
        sa.Column("source_index", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(500), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("robots_status", sa.Integer(), nullable=True),
        sa.Column("robots_sha256", sa.String(64), nullable=True),
        sa.Column("robots_disallows", postgresql.ARRAY(sa.String(50)), server_default="{}", nullable=False),
        sa.Column("tdmrep_status", sa.Integer(), nullable=True),
        sa.Column("tdmrep_sha256", sa.String(64), nullable=True),
        sa.Column("tdm_header", sa.String(200), nullable=True),
        sa.Column("tdm_reserved", sa.Boolean(), nullable=True),
        sa.Column("reserved_for_ai", sa.Boolean(), nullable=True),
        sa.Column("error", sa.String(1000), nullable=True),
        sa.UniqueConstraint("version_id", "source_index", name=op.f("uq_opt_out_evidence_version_id_source_index")),
        sa.ForeignKeyConstraint(
            ["version_id"], ["product_versions.id"], name=op.f("fk_opt_out_evidence_version_id_product_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_opt_out_evidence")),
    )
    op.create_index("ix_opt_out_evidence_version_id", "opt_out_evidence", ["version_id"])


def downgrade() -> None:
    op.drop_table("opt_out_evidence")
    op.drop_table("sample_items")
    op.drop_table("sample_reviews")
    op.drop_table("file_profiles")
    op.drop_column("products", "preview")
