"""Search: facet terms indexed beside the search terms; facet counts per value instead of per combination.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 16:45:00.000000

The per-combination counts of 0003 grew to 21,000 rows for 100,000 seeded products (and toward one row
per product with many providers); counts per facet value stay at a few dozen rows per provider, and
filters are now answered by a GIN index on facet terms.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The facet values of a product as terms ("industry:finance", "language:zh-Hans", "org:<uuid>", ...): a GIN
# index on them intersects filters with the words of a query inside the index, so a common word narrowed by
# a rare filter visits only the rows that pass both.
FACET_TERMS = """
CREATE FUNCTION catalog_facet_terms(
    industry varchar, modality varchar, access varchar, languages varchar[], org_id uuid
) RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ARRAY['industry:' || industry, 'modality:' || modality, 'access:' || access, 'org:' || org_id::text]
        || ARRAY(SELECT 'language:' || language FROM unnest(languages) AS language)
$$
"""
FACET_TERMS_OF_PRODUCT = "catalog_facet_terms(industry, modality, access, languages, org_id)"

KEY = "status, org_id, facet, value"


def _values(rows: str, sign: int) -> str:
    """(status, org_id, facet, value, n) of every facet value of the products in ``rows``."""
    return " UNION ALL ".join(
        f"SELECT status, org_id, '{facet}', {value}, {sign} FROM {rows}{source}"  # noqa: S608 - constants
        for facet, value, source in (
            ("industry", "industry", ""),
            ("modality", "modality", ""),
            ("access", "access", ""),
            ("language", "language", ", unnest(languages) AS language"),
        )
    )


def _apply(changes: str) -> str:
    # Counts that go down are updated in place (the row exists: the product was counted), counts that go
    # up are upserted, keys in a fixed order so concurrent writers lock rows in the same order. Changes
    # that move no facet (a new title) add up to zero and write nothing.
    return f"""
        WITH delta AS (
            SELECT status, org_id, facet, value, sum(n) AS n
            FROM ({changes}) AS changes (status, org_id, facet, value, n)
            GROUP BY {KEY}
            HAVING sum(n) <> 0
        ), decremented AS (
            UPDATE product_facet_values AS c SET products = c.products + d.n
            FROM delta AS d
            WHERE d.n < 0 AND (c.status, c.org_id, c.facet, c.value) = (d.status, d.org_id, d.facet, d.value)
        )
        INSERT INTO product_facet_values AS c ({KEY}, products)
        SELECT {KEY}, n FROM delta WHERE n > 0 ORDER BY {KEY}
        ON CONFLICT ({KEY}) DO UPDATE SET products = c.products + excluded.products;
    """  # noqa: S608 - constants


# Statement-level triggers with transition tables: one statement per INSERT, UPDATE or DELETE of products
# whatever its size (the bulk COPY of ``corpora seed`` included).
COUNT_FACETS = f"""
CREATE FUNCTION catalog_count_facets() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        {_apply(_values("new_rows", 1))}
    ELSIF TG_OP = 'DELETE' THEN
        {_apply(_values("old_rows", -1))}
    ELSE
        {_apply(_values("new_rows", 1) + " UNION ALL " + _values("old_rows", -1))}
    END IF;
    RETURN NULL;
END
$$
"""


COMBINATION_TRIGGERS = ("products_count_facets_insert", "products_count_facets_update", "products_count_facets_delete")


def upgrade() -> None:
    for trigger in COMBINATION_TRIGGERS:
        op.execute(f"DROP TRIGGER {trigger} ON products")
    op.execute("DROP FUNCTION catalog_count_facets()")
    op.drop_table("product_facet_counts")
    op.execute(FACET_TERMS)
    op.add_column(
        "products",
        sa.Column(
            "facet_terms",
            postgresql.ARRAY(sa.Text()),
            sa.Computed(FACET_TERMS_OF_PRODUCT, persisted=True),
            nullable=False,
        ),
    )
    op.create_index("ix_products_facet_terms", "products", ["facet_terms"], unique=False, postgresql_using="gin")
    op.create_index(
        "ix_product_versions_released",
        "product_versions",
        ["product_id", "licence_id"],
        unique=False,
        postgresql_where="state IN ('published', 'deprecated')",
    )
    op.create_table(
        "product_facet_values",
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("org_id", sa.UUID(), nullable=False),
        sa.Column("facet", sa.String(length=10), nullable=False),
        sa.Column("value", sa.String(length=35), nullable=False),
        sa.Column("products", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("products >= 0", name=op.f("ck_product_facet_values_not_negative")),
        sa.CheckConstraint(
            "facet IN ('industry', 'modality', 'access', 'language')", name=op.f("ck_product_facet_values_known_facet")
        ),
        sa.PrimaryKeyConstraint("status", "org_id", "facet", "value", name=op.f("pk_product_facet_values")),
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
        f"INSERT INTO product_facet_values ({KEY}, products) "  # noqa: S608 - constants
        f"SELECT {KEY}, sum(n) FROM ({_values('products', 1)}) AS v ({KEY}, n) GROUP BY {KEY}"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER products_count_facets_delete ON products")
    op.execute("DROP TRIGGER products_count_facets_update ON products")
    op.execute("DROP TRIGGER products_count_facets_insert ON products")
    op.execute("DROP FUNCTION catalog_count_facets()")
    op.drop_table("product_facet_values")
    op.drop_index(
        "ix_product_versions_released",
        table_name="product_versions",
        postgresql_where="state IN ('published', 'deprecated')",
    )
    op.drop_index("ix_products_facet_terms", table_name="products", postgresql_using="gin")
    op.drop_column("products", "facet_terms")
    op.execute("DROP FUNCTION catalog_facet_terms(varchar, varchar, varchar, varchar[], uuid)")
    # the per-combination counts of 0003, rebuilt
    from importlib import import_module

    combinations = import_module("migrations.versions.0003_search")
    combinations.upgrade()
