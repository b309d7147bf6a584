"""Count the SQL statements a request runs: SQLAlchemy engine events on the app's own engine.

The app is served over ASGI without its lifespan, so no background task (checkpoints, janitor, jobs) shares the
engine while a request is counted, and requests are made one at a time: every statement counted is the
request's. Access tokens (not API keys) keep authentication off the database.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from sqlalchemy import event

from app.main import create_app
from app.settings import Settings


class StatementCounter:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.statements: list[str] = []

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.statements.append(statement)

    async def count(self, method: str, url: str, **kwargs: Any) -> tuple[httpx.Response, int]:
        """The response and how many statements the request ran."""
        self.statements.clear()
        response = await self.client.request(method, url, **kwargs)
        return response, len(self.statements)


@contextlib.asynccontextmanager
async def counting_client(settings: Settings) -> AsyncIterator[StatementCounter]:
    app = create_app(settings)
    engine = app.state.engine
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # litestar's ASGI types are narrower
    counter = None
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local", timeout=60) as client:
            counter = StatementCounter(client)
            event.listen(engine.sync_engine, "before_cursor_execute", counter._seen)
            yield counter
    finally:
        if counter is not None:
            event.remove(engine.sync_engine, "before_cursor_execute", counter._seen)
        await engine.dispose()
