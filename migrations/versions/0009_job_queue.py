"""The job queue: procrastinate's schema (tables procrastinate_*, their functions and triggers).

The SQL is procrastinate's own ``schema.sql`` as shipped with the pinned version, kept beside this migration
so that this revision always creates the same schema; a test compares it with the installed package, and an
upgrade of procrastinate comes with a migration that applies the package's ``sql/migrations`` files in between.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 08:00:00.000000
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op
from sqlalchemy.util import await_only

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = Path(__file__).resolve().parent.parent / "sql" / "procrastinate-3.10.0.sql"


def _run_script(sql: str) -> None:
    # The script has many statements and PL/pgSQL bodies: sent as one simple query, as psql would.
    driver_connection = op.get_bind().connection.driver_connection
    await_only(driver_connection.execute(sql))


def upgrade() -> None:
    _run_script(SCHEMA.read_text(encoding="utf-8"))


def downgrade() -> None:
    _run_script(
        """
        DO $$
        DECLARE item record;
        BEGIN
            DROP TABLE procrastinate_events, procrastinate_periodic_defers, procrastinate_jobs,
                procrastinate_workers CASCADE;
            FOR item IN SELECT p.oid::regprocedure AS signature FROM pg_proc p
                JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE p.proname LIKE 'procrastinate\\_%' AND n.nspname = current_schema()
            LOOP
                EXECUTE 'DROP FUNCTION ' || item.signature || ' CASCADE';
            END LOOP;
            DROP TYPE procrastinate_job_to_defer_v1, procrastinate_job_event_type, procrastinate_job_status;
        END;
        $$;
        """
    )
