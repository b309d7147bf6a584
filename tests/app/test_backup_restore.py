"""A logical backup (pg_dump) restored into a fresh database passes `corpora audit verify` against the
checkpoints the object store holds: the procedure deploy/README.md gives for a restore."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient

from app.audit.cli import verify
from app.db import libpq_url
from app.embedded import _postgres_bin
from app.settings import Settings
from tests.conftest import create_database, sequence_audit, sign_up


def run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


async def test_a_dump_restored_into_a_fresh_database_verifies(
    client: AsyncTestClient[Any], db: asyncpg.Connection, settings: Settings, tmp_path: Path
) -> None:
    assert settings.database_url is not None
    await sign_up(client)  # audit events to back up
    await sequence_audit(db)
    anchored = await verify(settings, checkpoint=True)
    assert anchored["ok"], anchored
    assert anchored["checkpoint_written"]

    dump = tmp_path / "corpora.dump"
    source = libpq_url(settings.database_url)
    await asyncio.to_thread(run, [_postgres_bin("pg_dump"), "--format=custom", "--file", str(dump), source])
    restored_url = await create_database(settings.database_url, f"corpora_restored_{secrets.token_hex(4)}")
    restore = [_postgres_bin("pg_restore"), "--no-owner", "--exit-on-error", "--dbname", libpq_url(restored_url)]
    await asyncio.to_thread(run, [*restore, str(dump)])

    report = await verify(dataclasses.replace(settings, database_url=restored_url))
    assert report["ok"], report
    assert report["events_checked"] >= anchored["events_checked"]
    assert report["head_hash"] == anchored["head_hash"] or report["events_checked"] > anchored["events_checked"]
