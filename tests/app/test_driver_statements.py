"""Statements compiled once for the driver (``app.db.DriverStatement``) run in the session's own transaction, bind
the values they carry, and are refused on the driver's connection before that transaction has begun."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import Integer, String, bindparam, column, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.db import DriverStatement, create_engine, driver_connection
from app.settings import Settings

SETTING = "corpora.test_marker"


@pytest_asyncio.fixture(loop_scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings.database_url or "", pool_size=1)
    yield engine
    await engine.dispose()


async def test_the_driver_connection_runs_inside_the_sessions_transaction(engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session:
        began = (await session.execute(text("SELECT txid_current()"))).scalar_one()
        driver = await driver_connection(session)
        assert await driver.fetchval("SELECT txid_current()") == began
        # A transaction-local setting made on the driver's connection is seen by SQLAlchemy's next statement ...
        await driver.execute(f"SELECT set_config('{SETTING}', 'marked', true)")
        seen = (await session.execute(text(f"SELECT current_setting('{SETTING}', true)"))).scalar_one()
        assert seen == "marked"
        await session.rollback()
        # ... and goes with that transaction's rollback.
        after = (await session.execute(text(f"SELECT current_setting('{SETTING}', true)"))).scalar_one()
        assert after in ("", None)


async def test_the_driver_connection_is_refused_before_the_transaction_began(engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session:
        with pytest.raises(RuntimeError, match="has not begun"):
            await driver_connection(session)


async def test_a_driver_statement_answers_as_sqlalchemy_does_with_its_own_values_bound(engine: AsyncEngine) -> None:
    statement = select(
        func.coalesce(bindparam("given", type_=Integer), 0) + bindparam("carried", 40, type_=Integer),
        column("label", String).op("||")(bindparam("suffix", type_=String)),
    ).select_from(text("(VALUES ('x')) AS v(label)"))
    compiled = DriverStatement(statement)
    params = {"given": 2, "suffix": "-y"}
    async with AsyncSession(engine) as session:
        connection = await session.connection()
        expected = (await connection.execute(statement, params)).one()
        driven = (await connection.exec_driver_sql(compiled.sql, compiled.args(params))).one()
        fetched = await (await driver_connection(session)).fetchrow(compiled.sql, *compiled.args(params))
    assert tuple(expected) == tuple(driven) == tuple(fetched) == (42, "x-y")
    with pytest.raises(KeyError):
        compiled.args({"given": 2})  # a parameter the statement does not carry must be given


def test_a_statement_with_an_in_list_is_refused() -> None:
    with pytest.raises(ValueError, match="ANY"):
        DriverStatement(select(column("n")).where(column("n").in_([1, 2])))
