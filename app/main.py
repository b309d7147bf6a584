"""The application factory: ``create_app(settings)`` wires the kernel, accounts, auth, audit and domains."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

from litestar import Litestar, Router
from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from sqlalchemy.ext.asyncio import async_sessionmaker

from app import docs, health, redact
from app.access_log import access_log
from app.accounts import routes as accounts_routes
from app.accounts.me_cache import MeCache
from app.accounts.passwords import PASSWORD_HASHES_WAITING, HashingGate
from app.admission import OldestFirst
from app.audit import routes as audit_routes
from app.audit.checkpoints import run_checkpointer
from app.audit.sequencer import run_sequencer
from app.auth import routes as auth_routes
from app.auth.guards import provide_audit_context, provide_optional_principal, provide_principal
from app.auth.keys import KeyRing, load_keyring
from app.auth.middleware import AuthMiddleware
from app.client_guard import ClientGuard
from app.db import create_engine, provide_session
from app.errors import exception_handlers
from app.metrics import RequestMetrics
from app.notifications import routes as notifications_routes
from app.objectstore import ObjectStore, ObjectStoreUnavailable
from app.openapi import document_problems
from app.process import die_with_parent, freeze_startup_heap
from app.replica import ReadRouting, provide_read_session
from app.settings import Settings
from app.validation import check_request
from app.wiring import load_tasks
from catalog import batch_routes
from catalog import routes as catalog_routes
from catalog.inspection import routes as inspection_routes
from catalog.janitor import run_janitor
from licensing import routes as licensing_routes
from licensing.downloads import routes as downloads_routes

log = logging.getLogger("corpora")

API_PREFIX = "/api/v1"


async def _ensure_bucket(store: ObjectStore, settings: Settings) -> None:
    """Create the bucket, retrying in the background while the object store is still starting or down."""
    delay = 0.5
    while True:
        try:
            if not await store.ensure_bucket() and settings.audit_retention_days:
                log.error(
                    "bucket %s has no object lock, so audit checkpoints cannot be retained and will fail to be "
                    "written: give the service a bucket created with object lock (it creates one itself when the "
                    "bucket is missing), or set CORPORA_AUDIT_RETENTION_DAYS=0 to store them without retention",
                    store.bucket,
                )
            return
        except ObjectStoreUnavailable as exc:
            log.warning("object store not reachable yet (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)


def create_app(settings: Settings, *, keyring: KeyRing | None = None) -> Litestar:
    if settings.database_url is None or settings.s3_endpoint is None:
        raise ValueError("create_app needs a database URL and an S3 endpoint; `corpora serve` starts embedded ones")
    load_tasks()  # services enqueue jobs by name
    keyring = keyring or load_keyring(settings)
    engine = create_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        connect_timeout=settings.db_connect_timeout_seconds,
        statement_timeout=settings.db_statement_timeout_seconds,
        pool_timeout=settings.db_pool_timeout_seconds,
    )
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    # Background upkeep (audit checkpoints, the storage janitor) may run statements longer than a request's
    # deadline: its own small pool, with a connect deadline only.
    upkeep_engine = create_engine(
        settings.database_url, pool_size=1, connect_timeout=settings.db_connect_timeout_seconds
    )
    # The audit sequencer keeps one connection of its own, so a busy pool never delays it.
    sequencer_engine = create_engine(
        settings.database_url, pool_size=1, connect_timeout=settings.db_connect_timeout_seconds
    )
    read_engine = (
        create_engine(
            settings.database_read_url,
            pool_size=settings.db_pool_size,
            connect_timeout=settings.db_connect_timeout_seconds,
            statement_timeout=settings.db_statement_timeout_seconds,
            pool_timeout=settings.db_pool_timeout_seconds,
        )
        if settings.database_read_url
        else None
    )
    read_routing = ReadRouting(sessionmaker, read_engine, settings.database_read_max_lag_seconds)
    store = ObjectStore(settings)
    me_cache = MeCache(settings.database_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        bucket_ready = asyncio.create_task(_ensure_bucket(store, settings), name="ensure-bucket")

        async def checkpoints_once_the_bucket_is_there() -> None:
            # A first checkpoint tried before would fail on a new deployment's missing bucket (and whatever the bucket
            # check ends with, the checkpointer then runs and reports its own failures).
            await asyncio.wait([bucket_ready])
            await run_checkpointer(settings, async_sessionmaker(upkeep_engine, expire_on_commit=False), store, keyring)

        tasks = [
            bucket_ready,
            asyncio.create_task(checkpoints_once_the_bucket_is_there(), name="audit-checkpoints"),
            asyncio.create_task(run_janitor(settings, upkeep_engine, store), name="storage-janitor"),
            *(
                [
                    asyncio.create_task(
                        run_sequencer(sequencer_engine, every_seconds=settings.audit_sequence_every_ms / 1000),
                        name="audit-sequencer",
                    )
                ]
                if settings.audit_sequence_every_ms
                else []
            ),
            asyncio.create_task(me_cache.run(), name="me-cache-listener"),
            asyncio.create_task(read_routing.run(), name="read-replica-staleness"),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await engine.dispose()
            await upkeep_engine.dispose()
            await sequencer_engine.dispose()
            if read_engine is not None:
                await read_engine.dispose()
            await store.aclose()
            access_log.close()

    api = Router(
        path=API_PREFIX,
        route_handlers=[
            accounts_routes.router,
            auth_routes.router,
            audit_routes.router,
            catalog_routes.ProductController,
            batch_routes.BatchUploadController,
            catalog_routes.reviews,
            *inspection_routes.route_handlers,
            *licensing_routes.route_handlers,
            *notifications_routes.route_handlers,
        ],
    )

    def configure(config: AppConfig) -> AppConfig:
        config.state.update(
            {
                "settings": settings,
                "keyring": keyring,
                "engine": engine,
                "sessionmaker": sessionmaker,
                "read_routing": read_routing,
                "object_store": store,
                "me_cache": me_cache,
                "charge_turn": asyncio.Lock(),  # see licensing.downloads.grants.grant
                "grant_slots": OldestFirst(downloads_routes.GRANTS_IN_FLIGHT),
                "password_gate": HashingGate(
                    settings.password_hash_concurrency, PASSWORD_HASHES_WAITING * settings.password_hash_concurrency
                ),
            }
        )
        return config

    app = Litestar(
        route_handlers=[
            api,
            auth_routes.jwks,
            health.healthz,
            health.readyz,
            health.MetricsController,
            docs.assets_router(),
        ],
        dependencies={
            "session": Provide(provide_session),
            "read_session": Provide(provide_read_session),
            "principal": Provide(provide_principal, sync_to_thread=False),
            "optional_principal": Provide(provide_optional_principal, sync_to_thread=False),
            "audit_context": Provide(provide_audit_context, sync_to_thread=False),
        },
        middleware=[
            DefineMiddleware(RequestMetrics, log_access=settings.access_log),
            DefineMiddleware(
                ClientGuard,
                body_timeout=settings.body_timeout_seconds,
                max_pending_bodies=settings.max_pending_bodies,
            ),
            DefineMiddleware(AuthMiddleware, settings=settings, keyring=keyring, sessionmaker=sessionmaker),
        ],
        exception_handlers=exception_handlers,
        before_request=check_request,
        request_max_body_size=settings.max_body_bytes,
        lifespan=[lifespan],
        on_app_init=[configure],
        openapi_config=OpenAPIConfig(
            title="Corpora API",
            version="1.0.0",
            description=(
                "Marketplace and operation platform for AI-training corpora. Errors are RFC 9457 "
                "application/problem+json documents."
            ),
            path="/schema",
            render_plugins=[docs.render_plugin()],
            components=Components(
                security_schemes={
                    "BearerToken": SecurityScheme(
                        type="http",
                        scheme="bearer",
                        bearer_format="JWT or API key",
                        description="An access token from /api/v1/auth/token, or an API key (crp_…).",
                    )
                }
            ),
        ),
    )
    document_problems(app)
    return app


def app_from_env() -> Litestar:
    """Entry point for server workers: settings from the environment the supervisor prepared."""
    die_with_parent(signal.SIGTERM)  # a worker never outlives its supervisor, however that ends
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redact.install()
    app = create_app(Settings.from_env())
    freeze_startup_heap()
    return app
