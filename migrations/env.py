"""Alembic environment: runs migrations over the service's own async engine."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from app.db import create_engine
from migrations.metadata import include_name, target_metadata

config = context.config


# Several replicas may start (and migrate) at once: the first to take this lock migrates, the others then find
# the schema at head. Held to the end of the migration transaction.
MIGRATION_LOCK = 0x636F72706F7261  # "corpora"


def run_with(connection: Connection) -> None:
    context.configure(
        connection=connection, target_metadata=target_metadata, compare_type=True, include_name=include_name
    )
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        context.run_migrations()


async def run_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        run_with(connectable)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "", pool_size=1)
    async with engine.connect() as connection:
        await connection.run_sync(run_with)
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline SQL generation is not supported; run `corpora migrate` against a database")
asyncio.run(run_online())
