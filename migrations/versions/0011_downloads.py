"""Download grants: one authorised, metered download of one file under one entitlement.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-26 15:31:07.905418
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "download_grants",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("entitlement_id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("api_key_id", sa.UUID(), nullable=True),
        sa.Column("file_id", sa.UUID(), nullable=False),
        sa.Column("version_id", sa.UUID(), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("purpose", sa.String(length=40), nullable=False),
        sa.Column("mode", sa.String(length=10), nullable=False),
        sa.Column("manifest_digest", sa.String(length=71), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("url_expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("refreshed", sa.Integer(), nullable=False),
        sa.Column("bytes_charged", sa.BigInteger(), nullable=False),
        sa.Column("bytes_served", sa.BigInteger(), nullable=False),
        sa.Column("audit_hash", sa.String(length=64), nullable=False),
        sa.CheckConstraint("mode IN ('presigned', 'proxy')", name=op.f("ck_download_grants_known_mode")),
        sa.CheckConstraint("bytes_served >= 0", name=op.f("ck_download_grants_served_not_negative")),
        sa.CheckConstraint("window_ends_at > granted_at", name=op.f("ck_download_grants_window_after_grant")),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], name=op.f("fk_download_grants_api_key_id_api_keys")),
        sa.ForeignKeyConstraint(
            ["entitlement_id"], ["entitlements.id"], name=op.f("fk_download_grants_entitlement_id_entitlements")
        ),
        sa.ForeignKeyConstraint(
            ["file_id"], ["version_files.id"], name=op.f("fk_download_grants_file_id_version_files")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_download_grants_user_id_users")),
        sa.ForeignKeyConstraint(
            ["version_id"], ["product_versions.id"], name=op.f("fk_download_grants_version_id_product_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_download_grants")),
    )
    op.create_index(
        "ix_download_grants_entitlement_id_granted_at",
        "download_grants",
        ["entitlement_id", "granted_at"],
        unique=False,
    )
    op.create_index(
        "ix_download_grants_refresh",
        "download_grants",
        ["entitlement_id", "file_id", "user_id", "window_ends_at"],
        unique=False,
    )
    op.create_index("ix_download_grants_sha256", "download_grants", ["sha256"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_download_grants_sha256", table_name="download_grants")
    op.drop_index("ix_download_grants_refresh", table_name="download_grants")
    op.drop_index("ix_download_grants_entitlement_id_granted_at", table_name="download_grants")
    op.drop_table("download_grants")
