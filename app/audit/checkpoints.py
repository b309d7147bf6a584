"""Signed checkpoints of the audit chain head, written to the object store."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.keys import KeyRing
from app.objectstore import ObjectStore
from app.settings import Settings


async def run_checkpointer(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], store: ObjectStore, keyring: KeyRing
) -> None:
    while True:
        await asyncio.sleep(settings.audit_checkpoint_every_seconds)
