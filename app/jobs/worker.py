"""Workers: procrastinate runs the registered tasks, any number of processes on any number of machines.

Each worker fetches jobs with ``FOR UPDATE SKIP LOCKED``, so workers share one queue without running a job
twice; it hears new jobs through LISTEN/NOTIFY (polling every few seconds as a fallback), and a periodic task
is deferred once per tick whatever the number of workers. A job whose worker died (no heartbeat for
``STALLED_AFTER`` seconds) is put back in the queue by the built-in ``jobs.requeue_stalled`` task, so a job is
never lost; a job whose task raised is retried with exponential backoff (see ``registry.DEFAULT_RETRIES``) and,
out of retries, stays in ``procrastinate_jobs`` with status ``failed`` for an operator to retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

import procrastinate
from procrastinate.app import WorkerOptions
from procrastinate.job_context import JobContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker

from app.audit.sequencer import run_sequencer
from app.auth.keys import KeyRing, load_keyring
from app.db import create_engine, libpq_url
from app.egress import Egress
from app.jobs.registry import REGISTRY, JobDeps, JobSpec
from app.objectstore import ObjectStore
from app.settings import Settings

log = logging.getLogger("corpora.jobs")

STALLED_AFTER = 60.0  # seconds without a heartbeat (workers beat every 10 s) before a worker counts as dead


def conninfo(database_url: str) -> str:
    """The service's database URL as libpq (psycopg) understands it, one host or several."""
    return libpq_url(database_url)


def _task(spec: JobSpec, deps: JobDeps, errors: list[BaseException] | None) -> Any:
    async def run(**kwargs: Any) -> None:
        try:
            await spec.fn(deps, **kwargs)
        except Exception as exc:
            if errors is not None:
                errors.append(exc)
            raise

    run.__name__ = run.__qualname__ = spec.name
    return run


async def _requeue_stalled(context: JobContext, timestamp: int) -> None:
    manager = context.app.job_manager
    for stalled in await manager.get_stalled_jobs(seconds_since_heartbeat=STALLED_AFTER):
        log.warning("job %s (%s) was running on a worker that died; queued again", stalled.id, stalled.task_name)
        await manager.retry_job(stalled)


def build_app(
    deps: JobDeps,
    *,
    periodic: bool = True,
    pool_size: int = 4,
    errors: list[BaseException] | None = None,
) -> procrastinate.App:
    """A procrastinate app with every registered task bound to ``deps``. Opens nothing until ``open_async``."""
    assert deps.settings.database_url is not None
    connector = procrastinate.PsycopgConnector(
        conninfo=conninfo(deps.settings.database_url), min_size=1, max_size=pool_size, kwargs={"connect_timeout": 5}
    )
    app = procrastinate.App(connector=connector)
    for spec in REGISTRY.values():
        retry = procrastinate.RetryStrategy(max_attempts=spec.retry, wait=1, exponential_wait=2) if spec.retry else 0
        task = app.task(name=spec.name, queue=spec.queue, retry=retry)(_task(spec, deps, errors))
        if periodic and spec.periodic is not None:
            app.periodic(cron=spec.periodic, periodic_id=spec.name)(task)
    requeue = app.task(name="jobs.requeue_stalled", queue="default", pass_context=True)(_requeue_stalled)
    if periodic:
        app.periodic(cron="* * * * *", periodic_id="jobs.requeue_stalled")(requeue)
    return app


@contextlib.asynccontextmanager
async def open_deps(
    settings: Settings, *, keyring: KeyRing | None = None, pool_size: int = 4
) -> AsyncIterator[JobDeps]:
    """Dependencies of a worker process: its own engine (disposed on exit), object store and keys."""
    assert settings.database_url is not None
    engine = create_engine(settings.database_url, pool_size=pool_size)
    egress = Egress(allow_private=settings.egress_allow_private)
    try:
        yield JobDeps(
            settings=settings,
            sessionmaker=async_sessionmaker(engine, expire_on_commit=False),
            store=ObjectStore(settings),
            keyring=keyring or load_keyring(settings),
            egress=egress,
        )
    finally:
        await egress.aclose()
        await engine.dispose()


async def run_worker(
    settings: Settings,
    *,
    concurrency: int = 4,
    queues: Iterable[str] | None = None,
    name: str = "worker",
    install_signal_handlers: bool = True,
) -> None:
    """Run jobs until stopped (SIGINT/SIGTERM with signal handlers, else cancellation), finishing running ones."""
    async with open_deps(settings, pool_size=concurrency) as deps:
        app = build_app(deps, pool_size=concurrency + 3)
        async with app.open_async():
            log.info("job worker %s: %d at once, queues %s", name, concurrency, ", ".join(queues or ["all"]))
            options: WorkerOptions = {
                "concurrency": concurrency,
                "name": name,
                "delete_jobs": "successful",  # the domains keep their own history (deliveries, audit events)
                "install_signal_handlers": install_signal_handlers,
                "shutdown_graceful_timeout": 30,
                "stalled_worker_timeout": STALLED_AFTER,
            }
            if queues is not None:
                options["queues"] = list(queues)
            async with _sequencing(settings):
                await app.run_worker_async(**options)


@contextlib.asynccontextmanager
async def _sequencing(settings: Settings) -> AsyncIterator[None]:
    """The audit sequencer beside the jobs (app/audit/sequencer.py), on a connection of its own."""
    if not settings.audit_sequence_every_ms or settings.database_url is None:
        yield
        return
    engine = create_engine(settings.database_url, pool_size=1)
    task = asyncio.create_task(
        run_sequencer(engine, every_seconds=settings.audit_sequence_every_ms / 1000), name="audit-sequencer"
    )
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await engine.dispose()


_DUE = text(
    "SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo' AND (scheduled_at IS NULL OR scheduled_at <= now())"
)


async def drain(deps: JobDeps, *, concurrency: int = 1, errors: list[BaseException] | None = None) -> None:
    """Run every job that is due, and those they enqueue, until none is due (tests and benchmarks)."""
    app = build_app(deps, periodic=False, pool_size=concurrency + 2, errors=errors)
    async with app.open_async():
        while True:
            await app.run_worker_async(
                concurrency=concurrency,
                wait=False,
                listen_notify=False,
                install_signal_handlers=False,
                delete_jobs="successful",
            )
            async with deps.sessionmaker() as session:
                if not await session.scalar(_DUE):
                    return
