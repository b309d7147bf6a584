"""Orders awaiting payment expire: those placed before this migration get a deadline a week from now.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 05:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # licensing.service.PAYMENT_TTL
    op.execute(
        "UPDATE orders SET expires_at = now() + interval '7 days' "
        "WHERE status = 'awaiting_payment' AND expires_at IS NULL"
    )


def downgrade() -> None:
    """Deadlines given here cannot be told from later ones, so they stay."""
