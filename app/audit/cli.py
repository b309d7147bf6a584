"""``corpora audit verify``: the chain checked against the database and the signed checkpoints."""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker

from app.audit.service import verify_chain
from app.db import create_engine
from app.settings import Settings


async def verify(settings: Settings) -> dict[str, Any]:
    assert settings.database_url is not None
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        async with async_sessionmaker(engine)() as session:
            report = await verify_chain(session)
    finally:
        await engine.dispose()
    return dataclasses.asdict(report)
