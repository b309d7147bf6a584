"""The migrations are the schema: the models must describe exactly what they create."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

import asyncpg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from app.db import create_engine
from app.migrate import alembic_config
from migrations.metadata import include_name, target_metadata
from tests.conftest import Servers, asyncpg_dsn, create_database


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True, "include_name": include_name})
    return list(compare_metadata(context, target_metadata))


async def test_models_match_migrations(servers: Servers) -> None:
    engine = create_engine(servers.database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            differences = await connection.run_sync(_differences)
    finally:
        await engine.dispose()
    assert differences == [], f"models and migrations disagree: {differences}"


async def test_replicas_starting_together_migrate_once(servers: Servers, tmp_path: Path) -> None:
    """Four `corpora migrate` processes on one fresh database at once: all succeed, the schema is at head."""
    url = await create_database(servers.database_url, f"corpora_migrate_{secrets.token_hex(4)}")
    env = os.environ | {"CORPORA_DATABASE_URL": url, "CORPORA_DATA_DIR": str(tmp_path)}
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app.cli", "migrate", env=env, stdout=PIPE, stderr=PIPE
        )
        for _ in range(4)
    ]
    outcomes = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in processes)), timeout=120)
    assert [p.returncode for p in processes] == [0] * 4, [err.decode()[-2000:] for _, err in outcomes]
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        version = await connection.fetchval("SELECT version_num FROM alembic_version")
    finally:
        await connection.close()
    assert version == ScriptDirectory.from_config(alembic_config(url)).get_current_head()
