"""Database plumbing: the declarative base, the engine, and the one-transaction-per-request session."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import asyncpg
from litestar.datastructures import State
from sqlalchemy import DateTime, MetaData, func
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

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


DEFAULT_PORT = 5432
HOSTS_PLACEHOLDER = "hosts.invalid"


def parse_url(url: str) -> URL:
    """An operator's PostgreSQL URL, with one host or several.

    Several hosts are written as libpq writes them, ``postgresql://u@h1:5432,h2:5432/db``, or as SQLAlchemy does,
    ``postgresql://u@/db?host=h1:5432&host=h2:5432``; either comes back in SQLAlchemy's form, which its asyncpg
    dialect connects with. With ``?target_session_attrs=read-write`` a connection goes to the host that is
    writable at that moment, so after a failover new connections find the new primary by themselves."""
    scheme, sep, rest = url.partition("://")
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    userinfo, at, hostlist = rest[:end].rpartition("@")
    hosts = hostlist.split(",")
    if not sep or len(hosts) < 2:  # one host, or hosts in the query already
        parsed = make_url(url)
        listed = parsed.query.get("host")
        if isinstance(listed, tuple):  # asyncpg needs every host's port
            parsed = parsed.update_query_dict({"host": [h if ":" in h else f"{h}:{DEFAULT_PORT}" for h in listed]})
        return parsed
    path_and_query = rest[end:]
    path, _, query = path_and_query.partition("?")
    host_params = "&".join(f"host={h if ':' in h else f'{h}:{DEFAULT_PORT}'}" for h in hosts)
    return make_url(f"{scheme}://{userinfo}{at}{path or '/'}?{host_params}{'&' + query if query else ''}")


def async_url(url: str) -> str:
    """``postgresql://…`` as given by operators, with the asyncpg driver the service uses."""
    parsed = parse_url(url)
    if parsed.drivername in {"postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"}:
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    """The same URL as libpq (psycopg) and ``asyncpg.connect`` read it: several hosts as ``h1:p1,h2:p2``."""
    parsed = parse_url(url).set(drivername="postgresql")
    hosts = parsed.query.get("host")
    if not isinstance(hosts, tuple):
        return parsed.render_as_string(hide_password=False)
    query = {k: v for k, v in parsed.query.items() if k != "host"}
    # The host list goes where libpq expects it (URL.set would quote its commas and colons).
    rendered = parsed.set(host=HOSTS_PLACEHOLDER, port=None, query=query).render_as_string(hide_password=False)
    return rendered.replace(HOSTS_PLACEHOLDER, ",".join(hosts), 1)


def create_engine(
    url: str,
    *,
    pool_size: int = 10,
    connect_timeout: float = 5,
    statement_timeout: float | None = None,
    pool_timeout: float = 10,
) -> AsyncEngine:
    """An engine whose every wait has a deadline: connecting, a pool checkout and (with
    ``statement_timeout``) each statement. The server cancels a statement at the deadline, leaving the
    connection usable; the client gives up half a second later, for a server that does not answer at all
    (a stopped server costs a little more: the driver's next step on that connection waits once more)."""
    connect_args: dict[str, object] = {"timeout": connect_timeout, "command_timeout": 30}
    if statement_timeout is not None:
        connect_args["command_timeout"] = statement_timeout + 0.5
        connect_args["server_settings"] = {"statement_timeout": str(int(statement_timeout * 1000))}
    return create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        # No pre-ping: it costs three round trips per checkout. A connection that died is detected on use,
        # the request answers 503, and SQLAlchemy invalidates the pool so the next checkout reconnects.
        pool_recycle=1800,
        pool_timeout=pool_timeout,
        connect_args=connect_args,
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


_ASYNCPG = make_url("postgresql+asyncpg://").get_dialect()()


class DriverStatement:
    """A statement compiled once to asyncpg's SQL (``$1``, ``$2``, …), with the order of its parameters and the
    values of those it binds itself. For the hottest statements only, where SQLAlchemy's execution costs more
    CPU than the driver's (a grant's two: 100 to 250 µs each on top of the driver's 140 to 230): run it with
    ``connection.exec_driver_sql(s.sql, s.args(params))`` or on ``driver_connection(session)``."""

    def __init__(self, statement: ClauseElement) -> None:
        compiled = statement.compile(dialect=_ASYNCPG)
        assert isinstance(compiled, SQLCompiler)
        names = compiled.positiontup or []
        expanding = [name for name in names if compiled.binds[name].expanding]
        if expanding:  # an IN list is rendered per execution: compare with ANY of an array instead
            raise ValueError(f"parameters {expanding} are expanded per execution; use = ANY(array)")
        self.sql = compiled.string
        self._names = tuple(names)
        self._bound = {name: compiled.binds[name].value for name in names if compiled.binds[name].value is not None}

    def args(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        """The positional arguments: each named parameter from ``params``, else the value the statement binds."""
        return tuple(params[name] if name in params else self._bound[name] for name in self._names)


async def driver_connection(session: AsyncSession) -> asyncpg.Connection:
    """The asyncpg connection under the session's transaction. SQLAlchemy sends ``BEGIN`` with the transaction's
    first statement, so only a later statement may go here: one sent first would run, and commit, on its own."""
    driver: asyncpg.Connection = (await (await session.connection()).get_raw_connection()).driver_connection
    if not driver.is_in_transaction():
        raise RuntimeError("the session's transaction has not begun: send its first statement through SQLAlchemy")
    return driver
