"""The migrations are the schema: the models must describe exactly what they create."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from app.db import create_engine
from migrations.metadata import target_metadata
from tests.conftest import Servers


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, target_metadata))


async def test_models_match_migrations(servers: Servers) -> None:
    engine = create_engine(servers.database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            differences = await connection.run_sync(_differences)
    finally:
        await engine.dispose()
    assert differences == [], f"models and migrations disagree: {differences}"
