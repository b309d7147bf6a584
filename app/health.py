"""Liveness, readiness (database and object store) and Prometheus metrics, at the root."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Coroutine
from typing import Any

from litestar import Response
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.plugins.prometheus import PrometheusController
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth.guards import requires
from app.errors import RETRY_AFTER_SECONDS, not_found, unauthorized
from app.handlers import get
from app.objectstore import ObjectStore
from app.settings import Settings

# Routes with this option check their own credentials: the auth middleware leaves the Authorization header be.
OWN_AUTH = "own_auth"


@get(
    "/healthz",
    summary="Liveness: the process answers",
    tags=["operations"],
    include_in_schema=True,
    guards=[requires("public")],
)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


READY_DEADLINE_SECONDS = 1.5  # /readyz answers within two seconds whatever hangs


async def _check(probe: Coroutine[Any, Any, object]) -> str:
    task = asyncio.ensure_future(probe)
    done, _ = await asyncio.wait({task}, timeout=READY_DEADLINE_SECONDS)
    if not done:
        task.cancel()  # not awaited: however long giving up takes, the answer does not wait for it
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no "never retrieved" noise
        return f"unavailable: no answer within {READY_DEADLINE_SECONDS}s"
    if (exc := task.exception()) is not None:  # readiness reports every failure as "not ready"
        return f"unavailable: {type(exc).__name__}"
    return "ok"


async def _database(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


@get(
    "/readyz",
    summary="Readiness: the database and the object store answer",
    tags=["operations"],
    responses={503: ResponseSpec(dict[str, Any], description="Not ready: the checks say which dependency fails")},
    guards=[requires("public")],
)
async def readyz(state: State) -> Response[dict[str, Any]]:
    engine: AsyncEngine = state.engine
    store: ObjectStore = state.object_store
    database, object_store = await asyncio.gather(_check(_database(engine)), _check(store.ping()))
    checks = {"database": database, "object_store": object_store}
    ready = all(value == "ok" for value in checks.values())
    return Response(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
        headers={} if ready else {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def metrics_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """/metrics is off the public API: it answers with ``CORPORA_METRICS_TOKEN`` as a bearer token, to
    anyone only with ``CORPORA_METRICS_PUBLIC=true``, and is a 404 otherwise."""
    settings: Settings = connection.app.state.settings
    if settings.metrics_public:
        return
    if settings.metrics_token is None:
        raise not_found("/metrics")
    scheme, _sep, presented = (connection.headers.get("authorization") or "").partition(" ")
    expected = settings.metrics_token.encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), expected):
        raise unauthorized("/metrics needs 'Authorization: Bearer <CORPORA_METRICS_TOKEN>'")


class MetricsController(PrometheusController):
    path = "/metrics"
    tags = ["operations"]
    guards = [requires("public"), metrics_guard]
    opt = {OWN_AUTH: True}

    @get(media_type=CONTENT_TYPE_LATEST, summary="Prometheus metrics, in the text exposition format")
    async def get(self) -> Response[bytes]:
        response: Response[bytes] = await PrometheusController.get.fn(self)
        return response
