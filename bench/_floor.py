"""The physical floor of a metered grant, served exactly as ``corpora serve`` serves the API.

``floor_app`` is a Litestar app with one endpoint, ``POST /floor``, that runs one transaction on the service's own
database through the same engine settings (pool size, deadlines) and the same per-request session dependency
as the API: a conditional ``UPDATE … RETURNING`` that takes one unit of a quota row only while some remains, and
one ``INSERT`` of a grant row. Any metered grant does at least this; everything else a grant does (checks,
audit, receipt, URL) is measured against it. It is a bench-only app: the production app has no such route.

``python bench/_floor.py --port P --workers N`` serves it with granian as app/cli.py's ``cmd_serve`` does, with
the settings in the environment (``CORPORA_*``, as the benchmarks pass them to ``corpora serve``).
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path
from typing import Any

from litestar import Litestar, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import create_engine, provide_session
from app.process import freeze_startup_heap
from app.settings import Settings

FLOOR_PATH = "/floor"
BENCH_DIR = Path(__file__).resolve().parent

# Created by the benchmark (not a migration): the floor's tables are no part of the product's schema.
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS bench_floor_quota (id integer PRIMARY KEY, remaining bigint NOT NULL)",
    "CREATE TABLE IF NOT EXISTS bench_floor_grants (id uuid PRIMARY KEY, quota_id integer NOT NULL,"
    " remaining bigint NOT NULL, granted_at timestamptz NOT NULL DEFAULT now())",
)

_TAKE = text(
    "UPDATE bench_floor_quota SET remaining = remaining - 1 WHERE id = :quota AND remaining > 0 RETURNING remaining"
)
_INSERT = text("INSERT INTO bench_floor_grants (id, quota_id, remaining) VALUES (:id, :quota, :remaining)")


def floor_app() -> Litestar:
    settings = Settings.from_env()
    assert settings.database_url is not None
    engine = create_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        connect_timeout=settings.db_connect_timeout_seconds,
        statement_timeout=settings.db_statement_timeout_seconds,
        pool_timeout=settings.db_pool_timeout_seconds,
    )

    @post(FLOOR_PATH, status_code=201)
    async def floor(session: AsyncSession, data: dict[str, Any]) -> dict[str, Any]:
        quota = int(data["quota"])
        remaining = (await session.execute(_TAKE, {"quota": quota})).scalar_one_or_none()
        if remaining is None:
            raise HTTPException(status_code=429, detail="quota exhausted")
        grant_id = uuid.uuid4()
        await session.execute(_INSERT, {"id": grant_id, "quota": quota, "remaining": remaining})
        return {"id": str(grant_id), "remaining": remaining}

    @get(FLOOR_PATH)
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    app = Litestar(
        route_handlers=[floor, ready],
        dependencies={"session": Provide(provide_session)},
        state=State({"sessionmaker": async_sessionmaker(engine, expire_on_commit=False)}),
        openapi_config=None,
    )
    freeze_startup_heap()  # as the API's workers do (app.main.app_from_env)
    return app


def serve(port: int, workers: int) -> None:
    """Granian set up as ``corpora serve`` sets it up (app/cli.py ``cmd_serve``)."""
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings
    from granian.server import Server

    settings = Settings.from_env()
    Server(
        "_floor:floor_app",
        address="127.0.0.1",
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        factory=True,
        log_access=False,
        http1_settings=HTTP1Settings(header_read_timeout=settings.header_timeout_seconds * 1000),
        backlog=max(1024, settings.max_connections),
        backpressure=settings.max_connections,
        working_dir=BENCH_DIR,
    ).serve()


def command(port: int, workers: int) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--port", str(port), "--workers", str(workers)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="serve the metered-grant floor app with granian")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    serve(args.port, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
