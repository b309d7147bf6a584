"""Unicode identity: file paths fold to a key unique per version; e-mail addresses compare after NFKC and case
folding.

Revision ID: 0020
Revises: 0019
"""

import unicodedata
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _fold(text: str) -> str:
    # The rule of catalog.paths.path_key and app.accounts.service.normalise_email, as of this revision.
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def upgrade() -> None:
    bind = op.get_bind()
    op.add_column("version_files", sa.Column("path_key", sa.String(length=4096), nullable=True))
    files = bind.execute(sa.text("SELECT id, path FROM version_files")).all()
    if files:
        bind.execute(
            sa.text("UPDATE version_files SET path_key = :key WHERE id = :id"),
            [{"id": file_id, "key": _fold(path)} for file_id, path in files],
        )
    op.alter_column("version_files", "path_key", nullable=False)
    op.create_unique_constraint(
        op.f("uq_version_files_version_id_path_key"), "version_files", ["version_id", "path_key"]
    )
    # Addresses that only NFKC or case folding tell apart from another account's keep their stored form: two
    # accounts cannot be merged by a migration, and the sign-in rule finds the one whose form matches.
    users = bind.execute(sa.text("SELECT id, email FROM users")).all()
    taken = {email for _, email in users}
    for user_id, email in users:
        folded = _fold(email.strip()).lower()
        if folded != email and folded not in taken:
            bind.execute(sa.text("UPDATE users SET email = :email WHERE id = :id"), {"id": user_id, "email": folded})
            taken.add(folded)


def downgrade() -> None:
    op.drop_constraint(op.f("uq_version_files_version_id_path_key"), "version_files", type_="unique")
    op.drop_column("version_files", "path_key")
