"""Access: when each API key was last used, one active entitlement per buyer org and offer, the review queue.

Revision ID: 0014
Revises: 0013
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    # Entitlements that were ordered twice before this rule keep only the newest one active.
    op.execute(
        """
        UPDATE entitlements e SET status = 'revoked', revoked_at = now(),
               status_reason = 'superseded: one active entitlement per organisation and offer'
        WHERE e.status IN ('active', 'suspended') AND EXISTS (
            SELECT 1 FROM entitlements newer
            WHERE newer.buyer_org_id = e.buyer_org_id AND newer.offer_id = e.offer_id
              AND newer.status IN ('active', 'suspended')
              AND (newer.created_at, newer.id) > (e.created_at, e.id))
        """
    )
    op.create_index(
        "uq_entitlements_current_offer",
        "entitlements",
        ["buyer_org_id", "offer_id"],
        unique=True,
        postgresql_where=sa.text("status IN ('active', 'suspended')"),
    )
    op.create_index(
        "ix_product_versions_in_review",
        "product_versions",
        ["submitted_at", "id"],
        postgresql_where=sa.text("state = 'in_review'"),
    )
    op.create_index(
        "ix_entitlements_valid_until_current",
        "entitlements",
        ["valid_until"],
        postgresql_where=sa.text("status IN ('active', 'suspended')"),
    )


def downgrade() -> None:
    op.drop_index("ix_entitlements_valid_until_current", "entitlements")
    op.drop_index("ix_product_versions_in_review", "product_versions")
    op.drop_index("uq_entitlements_current_offer", "entitlements")
    op.drop_column("api_keys", "last_used_at")
