"""Attempt counters lock by window, not by a stored deadline; prices are at most 1,000,000,000.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 08:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # app.auth.throttle: an attempt beyond the limit waits for the window to end; counters restart from zero.
    op.execute("DELETE FROM login_throttles")
    op.drop_column("login_throttles", "locked_until")
    op.create_check_constraint(op.f("ck_offers_price_at_most_a_billion"), "offers", "price_amount <= 1000000000")


def downgrade() -> None:
    op.drop_constraint("ck_offers_price_at_most_a_billion", "offers", type_="check")
    op.add_column("login_throttles", sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True))
