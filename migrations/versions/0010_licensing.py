"""Licensing: licences with AI-use terms (seeded with the licences corpora carry), offers, orders, entitlements.

Revision ID: 0010
Revises: 0002
Create Date: 2026-11-26 15:20:13.347332
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ALL_USES = [
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
]
NON_COMMERCIAL = [
    "research",
    "evaluation",
    "pretraining",
    "fine_tuning",
    "rag_indexing",
    "synthetic_data_generation",
    "redistribution",
    "derivative_datasets",
]
NO_DERIVATIVES = ["research", "evaluation", "rag_indexing", "redistribution"]

# (SPDX id, name, permitted AI uses, duties, the reading behind them)
SEEDED = [
    (
        "CC0-1.0",
        "Creative Commons Zero v1.0 Universal",
        ALL_USES,
        [],
        "Public-domain dedication: every use, no conditions.",
    ),
    (
        "PDDL-1.0",
        "Open Data Commons Public Domain Dedication & License 1.0",
        ALL_USES,
        [],
        "Public-domain dedication for databases: every use, no conditions.",
    ),
    (
        "CC-BY-4.0",
        "Creative Commons Attribution 4.0 International",
        ALL_USES,
        ["attribution"],
        "Every use, commercial included, when the source is credited.",
    ),
    (
        "CC-BY-SA-4.0",
        "Creative Commons Attribution Share Alike 4.0 International",
        ALL_USES,
        ["attribution", "share_alike"],
        "Every use; adapted material (derived datasets, redistributed copies) must carry the same licence.",
    ),
    (
        "CC-BY-NC-4.0",
        "Creative Commons Attribution Non Commercial 4.0 International",
        NON_COMMERCIAL,
        ["attribution"],
        "Non-commercial uses only: no commercial model release, and no open weights that others may use commercially.",
    ),
    (
        "CC-BY-NC-SA-4.0",
        "Creative Commons Attribution Non Commercial Share Alike 4.0 International",
        NON_COMMERCIAL,
        ["attribution", "share_alike"],
        "Non-commercial uses only, and adapted material under the same licence.",
    ),
    (
        "CC-BY-ND-4.0",
        "Creative Commons Attribution No Derivatives 4.0 International",
        NO_DERIVATIVES,
        ["attribution"],
        "Read conservatively: training adapts the material, so only research, evaluation, retrieval indexing "
        "and verbatim redistribution.",
    ),
    (
        "CC-BY-NC-ND-4.0",
        "Creative Commons Attribution Non Commercial No Derivatives 4.0 International",
        ["research", "evaluation"],
        ["attribution"],
        "Read conservatively: non-commercial research and evaluation only.",
    ),
    (
        "CDLA-Permissive-2.0",
        "Community Data License Agreement Permissive 2.0",
        ALL_USES,
        ["attribution"],
        "Every use; the licence states that trained models and other results carry no obligations.",
    ),
    (
        "CDLA-Sharing-1.0",
        "Community Data License Agreement Sharing 1.0",
        ALL_USES,
        ["attribution", "share_alike"],
        "Every use; data published again, changed or not, must be shared under the same terms.",
    ),
    (
        "ODC-By-1.0",
        "Open Data Commons Attribution License v1.0",
        ALL_USES,
        ["attribution"],
        "Every use when the database is credited.",
    ),
    (
        "ODbL-1.0",
        "Open Data Commons Open Database License v1.0",
        ALL_USES,
        ["attribution", "share_alike"],
        "Every use; derived databases used publicly must be offered under the ODbL.",
    ),
    ("Apache-2.0", "Apache License 2.0", ALL_USES, ["attribution"], "Every use with the notice and licence kept."),
    ("MIT", "MIT License", ALL_USES, ["attribution"], "Every use with the copyright notice kept."),
]


def upgrade() -> None:
    op.create_table(
        "licences",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("spdx", sa.String(length=300), nullable=True),
        sa.Column("url", sa.String(length=2000), nullable=True),
        sa.Column("text_sha256", sa.String(length=64), nullable=True),
        sa.Column("uses", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("duties", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("territories", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("owner_org_id", sa.UUID(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "duties <@ ARRAY['attribution', 'share_alike', 'usage_reporting', 'delete_on_termination']::text[]",
            name=op.f("ck_licences_known_duties"),
        ),
        sa.CheckConstraint("id ~ '^[A-Za-z0-9][A-Za-z0-9.+-]{0,199}$'", name=op.f("ck_licences_id_format")),
        sa.CheckConstraint(
            "owner_org_id IS NOT NULL OR id NOT LIKE 'LicenseRef-%'", name=op.f("ck_licences_custom_has_owner")
        ),
        sa.CheckConstraint(
            "text_sha256 IS NULL OR text_sha256 ~ '^[0-9a-f]{64}$'", name=op.f("ck_licences_text_sha256_hex")
        ),
        sa.CheckConstraint(
            "uses <@ ARRAY['research', 'evaluation', 'pretraining', 'fine_tuning', 'rag_indexing', 'synthetic_data_generation', 'commercial_model_release', 'open_weights_release', 'redistribution', 'derivative_datasets']::text[]",
            name=op.f("ck_licences_known_uses"),
        ),
        sa.ForeignKeyConstraint(
            ["owner_org_id"], ["organizations.id"], name=op.f("fk_licences_owner_org_id_organizations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_licences")),
    )
    op.create_table(
        "offers",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("product_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("licence_id", sa.String(length=200), nullable=False),
        sa.Column("price_amount", sa.Numeric(precision=18, scale=2), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("term_days", sa.Integer(), nullable=False),
        sa.Column("quota_downloads", sa.BigInteger(), nullable=True),
        sa.Column("quota_bytes", sa.BigInteger(), nullable=True),
        sa.Column("versions", sa.String(length=10), nullable=False),
        sa.Column("approval", sa.String(length=10), nullable=False),
        sa.Column("purposes", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("target_org_ids", postgresql.ARRAY(sa.Uuid()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("approval IN ('automatic', 'manual')", name=op.f("ck_offers_known_approval")),
        sa.CheckConstraint("currency ~ '^[A-Z]{3}$'", name=op.f("ck_offers_currency_format")),
        sa.CheckConstraint(
            "purposes <@ ARRAY['research', 'evaluation', 'pretraining', 'fine_tuning', 'rag_indexing', 'synthetic_data_generation', 'commercial_model_release', 'open_weights_release', 'redistribution', 'derivative_datasets']::text[] AND cardinality(purposes) > 0",
            name=op.f("ck_offers_known_purposes"),
        ),
        sa.CheckConstraint("versions IN ('latest', 'all')", name=op.f("ck_offers_known_versions")),
        sa.CheckConstraint("price_amount >= 0", name=op.f("ck_offers_price_not_negative")),
        sa.CheckConstraint("quota_bytes IS NULL OR quota_bytes > 0", name=op.f("ck_offers_bytes_positive")),
        sa.CheckConstraint("quota_downloads IS NULL OR quota_downloads > 0", name=op.f("ck_offers_downloads_positive")),
        sa.CheckConstraint("term_days BETWEEN 1 AND 3660", name=op.f("ck_offers_term_range")),
        sa.ForeignKeyConstraint(["licence_id"], ["licences.id"], name=op.f("fk_offers_licence_id_licences")),
        sa.ForeignKeyConstraint(["product_id"], ["products.id"], name=op.f("fk_offers_product_id_products")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_offers")),
    )
    op.create_index(op.f("ix_offers_product_id"), "offers", ["product_id"], unique=False)
    op.create_table(
        "orders",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("buyer_org_id", sa.UUID(), nullable=False),
        sa.Column("offer_id", sa.UUID(), nullable=False),
        sa.Column("product_id", sa.UUID(), nullable=False),
        sa.Column("purpose", sa.String(length=40), nullable=False),
        sa.Column("form_answers", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("request_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.UUID(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.UUID(), nullable=True),
        sa.Column("decision_reason", sa.String(length=500), nullable=True),
        sa.Column("paid_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("payment_reference", sa.String(length=200), nullable=True),
        sa.CheckConstraint(
            "purpose IN ('research', 'evaluation', 'pretraining', 'fine_tuning', 'rag_indexing', 'synthetic_data_generation', 'commercial_model_release', 'open_weights_release', 'redistribution', 'derivative_datasets')",
            name=op.f("ck_orders_known_purpose"),
        ),
        sa.CheckConstraint(
            "status IN ('pending_approval', 'awaiting_payment', 'fulfilled', 'rejected', 'cancelled', 'expired')",
            name=op.f("ck_orders_known_status"),
        ),
        sa.CheckConstraint(
            "decision_reason IS NULL OR length(decision_reason) <= 500", name=op.f("ck_orders_reason_length")
        ),
        sa.ForeignKeyConstraint(
            ["buyer_org_id"], ["organizations.id"], name=op.f("fk_orders_buyer_org_id_organizations")
        ),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name=op.f("fk_orders_created_by_users")),
        sa.ForeignKeyConstraint(["decided_by"], ["users.id"], name=op.f("fk_orders_decided_by_users")),
        sa.ForeignKeyConstraint(["offer_id"], ["offers.id"], name=op.f("fk_orders_offer_id_offers")),
        sa.ForeignKeyConstraint(["product_id"], ["products.id"], name=op.f("fk_orders_product_id_products")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
        sa.UniqueConstraint("created_by", "idempotency_key", name=op.f("uq_orders_created_by_idempotency_key")),
    )
    op.create_index("ix_orders_buyer_org_id_created_at", "orders", ["buyer_org_id", "created_at"], unique=False)
    op.create_index("ix_orders_product_id_status", "orders", ["product_id", "status"], unique=False)
    op.create_table(
        "entitlements",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("order_id", sa.UUID(), nullable=False),
        sa.Column("buyer_org_id", sa.UUID(), nullable=False),
        sa.Column("product_id", sa.UUID(), nullable=False),
        sa.Column("offer_id", sa.UUID(), nullable=False),
        sa.Column("licence_id", sa.String(length=200), nullable=False),
        sa.Column("terms", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("terms_digest", sa.String(length=71), nullable=False),
        sa.Column("purposes", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("versions", sa.String(length=10), nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("valid_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("downloads_limit", sa.BigInteger(), nullable=True),
        sa.Column("downloads_used", sa.BigInteger(), nullable=False),
        sa.Column("bytes_limit", sa.BigInteger(), nullable=True),
        sa.Column("bytes_used", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("status_reason", sa.String(length=500), nullable=True),
        sa.Column("suspended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "(status = 'revoked') = (revoked_at IS NOT NULL)", name=op.f("ck_entitlements_revoked_when_revoked")
        ),
        sa.CheckConstraint(
            "status IN ('active', 'suspended', 'revoked', 'expired')", name=op.f("ck_entitlements_known_status")
        ),
        sa.CheckConstraint(
            "bytes_limit IS NULL OR bytes_used <= bytes_limit", name=op.f("ck_entitlements_bytes_within_limit")
        ),
        sa.CheckConstraint(
            "downloads_limit IS NULL OR downloads_used <= downloads_limit",
            name=op.f("ck_entitlements_downloads_within_limit"),
        ),
        sa.CheckConstraint("downloads_used >= 0 AND bytes_used >= 0", name=op.f("ck_entitlements_usage_not_negative")),
        sa.CheckConstraint("valid_until > valid_from", name=op.f("ck_entitlements_valid_period")),
        sa.ForeignKeyConstraint(
            ["buyer_org_id"], ["organizations.id"], name=op.f("fk_entitlements_buyer_org_id_organizations")
        ),
        sa.ForeignKeyConstraint(["licence_id"], ["licences.id"], name=op.f("fk_entitlements_licence_id_licences")),
        sa.ForeignKeyConstraint(["offer_id"], ["offers.id"], name=op.f("fk_entitlements_offer_id_offers")),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], name=op.f("fk_entitlements_order_id_orders")),
        sa.ForeignKeyConstraint(["product_id"], ["products.id"], name=op.f("fk_entitlements_product_id_products")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_entitlements")),
        sa.UniqueConstraint("order_id", name=op.f("uq_entitlements_order_id")),
    )
    op.create_index("ix_entitlements_buyer_org_id", "entitlements", ["buyer_org_id"], unique=False)
    op.create_index("ix_entitlements_product_id", "entitlements", ["product_id"], unique=False)

    licences = sa.table(
        "licences",
        sa.column("id", sa.String),
        sa.column("name", sa.String),
        sa.column("spdx", sa.String),
        sa.column("url", sa.String),
        sa.column("uses", postgresql.ARRAY(sa.Text)),
        sa.column("duties", postgresql.ARRAY(sa.Text)),
        sa.column("territories", postgresql.ARRAY(sa.Text)),
        sa.column("note", sa.Text),
    )
    op.bulk_insert(
        licences,
        [
            {
                "id": spdx,
                "name": name,
                "spdx": spdx,
                "url": f"https://spdx.org/licenses/{spdx}.html",
                "uses": uses,
                "duties": duties,
                "territories": [],
                "note": note,
            }
            for spdx, name, uses, duties, note in SEEDED
        ],
    )
    # Versions now name a licence of the catalogue.
    op.create_foreign_key(
        op.f("fk_product_versions_licence_id_licences"), "product_versions", "licences", ["licence_id"], ["id"]
    )


def downgrade() -> None:
    op.drop_constraint(op.f("fk_product_versions_licence_id_licences"), "product_versions", type_="foreignkey")
    op.drop_index("ix_entitlements_product_id", table_name="entitlements")
    op.drop_index("ix_entitlements_buyer_org_id", table_name="entitlements")
    op.drop_table("entitlements")
    op.drop_index("ix_orders_product_id_status", table_name="orders")
    op.drop_index("ix_orders_buyer_org_id_created_at", table_name="orders")
    op.drop_table("orders")
    op.drop_index(op.f("ix_offers_product_id"), table_name="offers")
    op.drop_table("offers")
    op.drop_table("licences")
