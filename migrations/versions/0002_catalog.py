"""Catalogue: products, versions, files, content-addressed blobs; published versions frozen.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 15:10:56.903035
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Once a version leaves review it is frozen: only its lifecycle may move on (published → deprecated →
# withdrawn), and its files can no longer be added, changed or removed. SQLSTATE 55000
# (object_not_in_prerequisite_state) lets the API answer 409 should a write ever get this far.
VERSION_GUARD = """
CREATE FUNCTION catalog_version_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    lifecycle CONSTANT text[] := ARRAY['state', 'deprecated_at', 'withdrawn_at', 'withdrawn_reason'];
BEGIN
    IF OLD.state IN ('published', 'deprecated', 'withdrawn') THEN
        IF TG_OP = 'DELETE' THEN
            RAISE EXCEPTION 'version % is % and cannot be deleted', OLD.version, OLD.state
                USING ERRCODE = '55000';
        END IF;
        IF (to_jsonb(NEW) - lifecycle) IS DISTINCT FROM (to_jsonb(OLD) - lifecycle) THEN
            RAISE EXCEPTION 'version % is % and its content cannot change', OLD.version, OLD.state
                USING ERRCODE = '55000';
        END IF;
        IF NOT (NEW.state = OLD.state
                OR (OLD.state = 'published' AND NEW.state IN ('deprecated', 'withdrawn'))
                OR (OLD.state = 'deprecated' AND NEW.state = 'withdrawn')) THEN
            RAISE EXCEPTION 'version % cannot go from % to %', OLD.version, OLD.state, NEW.state
                USING ERRCODE = '55000';
        END IF;
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END
$$
"""

FILES_GUARD = """
CREATE FUNCTION catalog_files_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    version_state text;
BEGIN
    SELECT state INTO version_state FROM product_versions
        WHERE id = (CASE WHEN TG_OP = 'DELETE' THEN OLD.version_id ELSE NEW.version_id END);
    IF version_state IS DISTINCT FROM 'draft' THEN
        RAISE EXCEPTION 'the files of a version in state % cannot change', version_state
            USING ERRCODE = '55000';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name=op.f("ck_blobs_sha256_hex")),
        sa.CheckConstraint("size >= 0 AND size <= 5497558138880", name=op.f("ck_blobs_size_range")),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_blobs")),
    )
    op.create_table(
        "products",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("listed_seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("org_id", sa.UUID(), nullable=False),
        sa.Column("slug", sa.String(length=80), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("summary", sa.String(length=1000), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("industry", sa.String(length=20), nullable=False),
        sa.Column("modality", sa.String(length=20), nullable=False),
        sa.Column("languages", postgresql.ARRAY(sa.String(length=35)), nullable=False),
        sa.Column("tags", postgresql.ARRAY(sa.String(length=50)), nullable=False),
        sa.Column("access", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("search_terms", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("access IN ('open', 'gated', 'paid')", name=op.f("ck_products_known_access")),
        sa.CheckConstraint(
            "industry IN ('finance', 'healthcare', 'transport', 'retail', 'education', 'media', 'legal', 'manufacturing', 'energy', 'government', 'science', 'general')",
            name=op.f("ck_products_known_industry"),
        ),
        sa.CheckConstraint(
            "modality IN ('text', 'image', 'audio', 'video', 'tabular', 'multimodal')",
            name=op.f("ck_products_known_modality"),
        ),
        sa.CheckConstraint("slug ~ '^[a-z0-9][a-z0-9-]{1,79}$'", name=op.f("ck_products_slug_format")),
        sa.CheckConstraint("status IN ('draft', 'published', 'archived')", name=op.f("ck_products_known_status")),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], name=op.f("fk_products_org_id_organizations")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_products")),
        sa.UniqueConstraint("listed_seq", name=op.f("uq_products_listed_seq")),
        sa.UniqueConstraint("slug", name=op.f("uq_products_slug")),
    )
    op.create_index("ix_products_languages", "products", ["languages"], unique=False, postgresql_using="gin")
    op.create_index("ix_products_listing", "products", ["status", "listed_seq"], unique=False)
    op.create_index("ix_products_org_id_listed_seq", "products", ["org_id", "listed_seq"], unique=False)
    op.create_index("ix_products_search_terms", "products", ["search_terms"], unique=False, postgresql_using="gin")
    op.create_table(
        "product_versions",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("product_id", sa.UUID(), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("major", sa.Integer(), nullable=False),
        sa.Column("minor", sa.Integer(), nullable=False),
        sa.Column("patch", sa.Integer(), nullable=False),
        sa.Column("prerelease", sa.String(length=60), nullable=True),
        sa.Column("changelog", sa.Text(), nullable=False),
        sa.Column("licence_id", sa.String(length=200), nullable=True),
        sa.Column("provenance", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("manifest_digest", sa.String(length=71), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reviewed_by", sa.UUID(), nullable=True),
        sa.Column("review_reason", sa.String(length=1000), nullable=True),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deprecated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("withdrawn_reason", sa.String(length=1000), nullable=True),
        sa.Column("synthetic_fraction", sa.Double(), nullable=True),
        sa.CheckConstraint(
            "state IN ('draft', 'in_review') OR (manifest_digest IS NOT NULL AND published_at IS NOT NULL)",
            name=op.f("ck_product_versions_published_has_manifest"),
        ),
        sa.CheckConstraint(
            "state IN ('draft', 'in_review', 'published', 'deprecated', 'withdrawn')",
            name=op.f("ck_product_versions_known_state"),
        ),
        sa.CheckConstraint(
            "synthetic_fraction IS NULL OR synthetic_fraction BETWEEN 0 AND 1",
            name=op.f("ck_product_versions_fraction_range"),
        ),
        sa.ForeignKeyConstraint(["product_id"], ["products.id"], name=op.f("fk_product_versions_product_id_products")),
        sa.ForeignKeyConstraint(["reviewed_by"], ["users.id"], name=op.f("fk_product_versions_reviewed_by_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_product_versions")),
        sa.UniqueConstraint("product_id", "version", name=op.f("uq_product_versions_product_id_version")),
    )
    op.create_index(op.f("ix_product_versions_product_id"), "product_versions", ["product_id"], unique=False)
    op.create_table(
        "version_files",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("version_id", sa.UUID(), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("media_type", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("upload_id", sa.String(length=500), nullable=True),
        sa.Column("part_size", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(status = 'verified') = (verified_at IS NOT NULL)", name=op.f("ck_version_files_verified_when_verified")
        ),
        sa.CheckConstraint(
            "path !~ '(^/|\\\\|(^|/)\\.\\.?(/|$)|//)' AND length(path) BETWEEN 1 AND 1024",
            name=op.f("ck_version_files_safe_path"),
        ),
        sa.CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name=op.f("ck_version_files_sha256_hex")),
        sa.CheckConstraint("status IN ('pending', 'verified')", name=op.f("ck_version_files_known_status")),
        sa.CheckConstraint("size >= 0 AND size <= 5497558138880", name=op.f("ck_version_files_size_range")),
        sa.ForeignKeyConstraint(
            ["version_id"], ["product_versions.id"], name=op.f("fk_version_files_version_id_product_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_version_files")),
        sa.UniqueConstraint("version_id", "path", name=op.f("uq_version_files_version_id_path")),
    )
    op.create_index(
        "ix_version_files_pending", "version_files", ["created_at"], unique=False, postgresql_where="status = 'pending'"
    )
    op.create_index("ix_version_files_sha256", "version_files", ["sha256"], unique=False)

    op.execute(VERSION_GUARD)
    op.execute(
        "CREATE TRIGGER product_versions_frozen BEFORE UPDATE OR DELETE ON product_versions "
        "FOR EACH ROW EXECUTE FUNCTION catalog_version_frozen()"
    )
    op.execute(FILES_GUARD)
    op.execute(
        "CREATE TRIGGER version_files_frozen BEFORE INSERT OR UPDATE OR DELETE ON version_files "
        "FOR EACH ROW EXECUTE FUNCTION catalog_files_frozen()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER version_files_frozen ON version_files")
    op.execute("DROP FUNCTION catalog_files_frozen()")
    op.execute("DROP TRIGGER product_versions_frozen ON product_versions")
    op.execute("DROP FUNCTION catalog_version_frozen()")
    op.drop_index("ix_version_files_sha256", table_name="version_files")
    op.drop_index("ix_version_files_pending", table_name="version_files", postgresql_where="status = 'pending'")
    op.drop_table("version_files")
    op.drop_index(op.f("ix_product_versions_product_id"), table_name="product_versions")
    op.drop_table("product_versions")
    op.drop_index("ix_products_search_terms", table_name="products", postgresql_using="gin")
    op.drop_index("ix_products_org_id_listed_seq", table_name="products")
    op.drop_index("ix_products_listing", table_name="products")
    op.drop_index("ix_products_languages", table_name="products", postgresql_using="gin")
    op.drop_table("products")
    op.drop_table("blobs")
