"""Liveness, readiness (database and object store) and Prometheus metrics, at the root."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from litestar.datastructures import State
from litestar.plugins.prometheus import PrometheusController
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth.guards import requires
from app.errors import RETRY_AFTER_SECONDS
from app.objectstore import ObjectStore


@get(
    "/healthz",
    summary="Liveness: the process answers",
    tags=["operations"],
    include_in_schema=True,
    guards=[requires("public")],
)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get(
    "/readyz",
    summary="Readiness: the database and the object store answer",
    tags=["operations"],
    guards=[requires("public")],
)
async def readyz(state: State) -> Response[dict[str, Any]]:
    engine: AsyncEngine = state.engine
    store: ObjectStore = state.object_store
    checks: dict[str, str] = {}
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # readiness reports every failure as "not ready"
        checks["database"] = f"unavailable: {type(exc).__name__}"
    try:
        await store.ping()
        checks["object_store"] = "ok"
    except Exception as exc:
        checks["object_store"] = f"unavailable: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    return Response(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
        headers={} if ready else {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


class MetricsController(PrometheusController):
    path = "/metrics"
    tags = ["operations"]
    guards = [requires("public")]
