"""Fixtures shared by the audit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import create_engine
from app.settings import Settings


@pytest_asyncio.fixture(loop_scope="session")
async def sessionmaker(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on the test's own event loop (the app's engine belongs to the test client's loop)."""
    assert settings.database_url is not None
    engine = create_engine(settings.database_url, pool_size=2)
    yield async_sessionmaker(engine, expire_on_commit=False)
    await engine.dispose()
