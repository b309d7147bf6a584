"""Search: facet counts of the catalogue, kept exact by triggers on products.

Revision ID: 0003
Revises: 0011
Create Date: 2026-11-26 15:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = "status, org_id, industry, modality, access, languages"

# Statement-level triggers with transition tables: one upsert per statement whatever its size (a bulk COPY
# of the seed included), keys in a fixed order so concurrent writers lock count rows in the same order.
# Counts that would go down are applied with UPDATE (the row exists: the product was counted); counts that
# go up with INSERT … ON CONFLICT. Updates that change no facet (titles, descriptions) write nothing.
COUNT_FACETS = f"""
CREATE FUNCTION catalog_count_facets() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO product_facet_counts AS c ({KEY}, products)
        SELECT {KEY}, count(*) FROM new_rows GROUP BY {KEY} ORDER BY {KEY}
        ON CONFLICT ({KEY}) DO UPDATE SET products = c.products + excluded.products;
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE product_facet_counts AS c SET products = c.products - d.n
        FROM (SELECT {KEY}, count(*) AS n FROM old_rows GROUP BY {KEY}) AS d
        WHERE (c.status, c.org_id, c.industry, c.modality, c.access, c.languages)
            = (d.status, d.org_id, d.industry, d.modality, d.access, d.languages);
    ELSE
        WITH delta AS (
            SELECT {KEY}, sum(n) AS n
            FROM (SELECT {KEY}, 1 AS n FROM new_rows UNION ALL SELECT {KEY}, -1 AS n FROM old_rows) AS changes
            GROUP BY {KEY}
            HAVING sum(n) <> 0
        ), decremented AS (
            UPDATE product_facet_counts AS c SET products = c.products + d.n
            FROM delta AS d
            WHERE d.n < 0 AND (c.status, c.org_id, c.industry, c.modality, c.access, c.languages)
                = (d.status, d.org_id, d.industry, d.modality, d.access, d.languages)
        )
        INSERT INTO product_facet_counts AS c ({KEY}, products)
        SELECT {KEY}, n FROM delta WHERE n > 0 ORDER BY {KEY}
        ON CONFLICT ({KEY}) DO UPDATE SET products = c.products + excluded.products;
    END IF;
    RETURN NULL;
END
$$
"""  # noqa: S608 - composed of constants


def upgrade() -> None:
    op.create_table(
        "product_facet_counts",
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("org_id", sa.UUID(), nullable=False),
        sa.Column("industry", sa.String(length=20), nullable=False),
        sa.Column("modality", sa.String(length=20), nullable=False),
        sa.Column("access", sa.String(length=10), nullable=False),
        sa.Column("languages", postgresql.ARRAY(sa.String(length=35)), nullable=False),
        sa.Column("products", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("products >= 0", name=op.f("ck_product_facet_counts_not_negative")),
        sa.PrimaryKeyConstraint(
            "status", "org_id", "industry", "modality", "access", "languages", name=op.f("pk_product_facet_counts")
        ),
    )
    # No product may change between counting the existing ones and the triggers taking over.
    op.execute("LOCK TABLE products IN SHARE MODE")
    op.execute(COUNT_FACETS)
    op.execute(
        "CREATE TRIGGER products_count_facets_insert AFTER INSERT ON products REFERENCING NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION catalog_count_facets()"
    )
    op.execute(
        "CREATE TRIGGER products_count_facets_update AFTER UPDATE ON products "
        "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION catalog_count_facets()"
    )
    op.execute(
        "CREATE TRIGGER products_count_facets_delete AFTER DELETE ON products REFERENCING OLD TABLE AS old_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION catalog_count_facets()"
    )
    op.execute(
        f"INSERT INTO product_facet_counts ({KEY}, products) SELECT {KEY}, count(*) FROM products GROUP BY {KEY}"  # noqa: S608
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER products_count_facets_delete ON products")
    op.execute("DROP TRIGGER products_count_facets_update ON products")
    op.execute("DROP TRIGGER products_count_facets_insert ON products")
    op.execute("DROP FUNCTION catalog_count_facets()")
    op.drop_table("product_facet_counts")
