"""Attempt counters lock by window, not by a stored deadline.

Revision ID: 0014
Revises: 0009
Create Date: 2026-12-05 08:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # app.auth.throttle: an attempt beyond the limit waits for the window to end; counters restart from zero.
    op.execute("DELETE FROM login_throttles")
    op.drop_column("login_throttles", "locked_until")


def downgrade() -> None:
    op.add_column("login_throttles", sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True))
