"""Notify listeners when what GET /me answers changes: users, memberships and organisations.

Each worker keeps the answers it served in memory and evicts them on these notifications, which
PostgreSQL delivers at commit (never for a rolled-back change). The payload is the user's id, or ``*``
when an organisation changes (its name and kind appear in every member's answer).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 23:40:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _notify_user_function(name: str, column: str) -> str:
    """A row trigger function announcing the user id in ``column`` (both ids when an update moves it)."""
    return f"""
CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM pg_notify('accounts_changed', CAST(OLD.{column} AS text));
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM pg_notify('accounts_changed', CAST(NEW.{column} AS text));
    END IF;
    RETURN NULL;
END
$$
"""


NOTIFY_ALL = """
CREATE FUNCTION accounts_notify_all() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('accounts_changed', '*');
    RETURN NULL;
END
$$
"""

# (trigger, table, events, function); PostgreSQL folds identical notifications of one transaction.
TRIGGERS = (
    ("users_notify", "users", "UPDATE OR DELETE", "FOR EACH ROW", "accounts_notify_user_id"),
    ("memberships_notify", "memberships", "INSERT OR UPDATE OR DELETE", "FOR EACH ROW", "accounts_notify_member"),
    ("organizations_notify", "organizations", "UPDATE OR DELETE", "FOR EACH STATEMENT", "accounts_notify_all"),
)


def upgrade() -> None:
    op.execute(_notify_user_function("accounts_notify_user_id", "id"))
    op.execute(_notify_user_function("accounts_notify_member", "user_id"))
    op.execute(NOTIFY_ALL)
    for trigger, table, events, level, function in TRIGGERS:
        op.execute(f"CREATE TRIGGER {trigger} AFTER {events} ON {table} {level} EXECUTE FUNCTION {function}()")


def downgrade() -> None:
    for trigger, table, _, _, function in TRIGGERS:
        op.execute(f"DROP TRIGGER {trigger} ON {table}")
        op.execute(f"DROP FUNCTION {function}()")
