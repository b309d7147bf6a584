"""``corpora audit verify``: the chain checked against the database and the signed checkpoints."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker

from app.audit import checkpoints
from app.auth.keys import load_keyring
from app.db import create_engine
from app.objectstore import ObjectStore
from app.settings import Settings


async def verify(settings: Settings, *, checkpoint: bool = False) -> dict[str, Any]:
    """Recompute the chain and compare it with every signed checkpoint in the object store.

    The answer is the same document as ``GET /api/v1/audit/verify``. With ``checkpoint=True`` a chain that
    verified is anchored by signing a checkpoint of its head (never a broken one: that would bless it).
    """
    assert settings.database_url is not None
    engine = create_engine(settings.database_url, pool_size=1)
    store = ObjectStore(settings)
    keyring = load_keyring(settings)
    try:
        sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        async with sessionmaker() as session:
            report = await checkpoints.verify(session, store, keyring, settings)
        if checkpoint and report["ok"]:
            written = await checkpoints.write_checkpoint(settings, sessionmaker, store, keyring)
            report["checkpoint_written"] = written.key if written is not None else None
    finally:
        await engine.dispose()
    return report
