"""Database plumbing: the declarative base, the engine, and the one-transaction-per-request session."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator

from litestar.datastructures import State
from sqlalchemy import DateTime, MetaData, func
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        dt.datetime: DateTime(timezone=True),
        uuid.UUID: UUID(as_uuid=True),
    }


def uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(primary_key=True, default=uuid.uuid4)


def server_now() -> Mapped[dt.datetime]:
    return mapped_column(server_default=func.now())


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def async_url(url: str) -> str:
    """``postgresql://…`` as given by operators, with the asyncpg driver the service uses."""
    parsed = make_url(url)
    if parsed.drivername in {"postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"}:
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        # No pre-ping: it costs three round trips per checkout. A connection that died is detected on use,
        # the request answers 503, and SQLAlchemy invalidates the pool so the next checkout reconnects.
        pool_recycle=1800,
        pool_timeout=10,
        connect_args={"timeout": 5, "command_timeout": 30},
    )


class CommitThenRaise(Exception):
    """Raised through the session dependency to commit what was written, then answer with ``error``.

    Failed logins and refresh-token reuse must leave their audit events and counters behind even though
    the request is refused.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


async def provide_session(state: State) -> AsyncIterator[AsyncSession]:
    """One session and one transaction per request: committed when the handler returns, else rolled back.

    Litestar runs this cleanup before the response is sent, so a failed commit becomes an error response.
    """
    sessionmaker: async_sessionmaker[AsyncSession] = state.sessionmaker
    async with sessionmaker() as session:
        try:
            yield session
        except CommitThenRaise as marker:
            await session.commit()
            raise marker.error from None
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()


def sql_in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def sql_subset(column: str, values: tuple[str, ...]) -> str:
    return f"{column} <@ ARRAY[{', '.join(repr(v) for v in values)}]::text[]"
