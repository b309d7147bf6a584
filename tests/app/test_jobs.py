"""The job queue: jobs exist exactly when the transaction that enqueued them commits, run once, and retry."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import procrastinate
import pytest
import pytest_asyncio
from litestar import Litestar
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.jobs import Deferred, JobDeps, enqueue, enqueue_many, job
from app.jobs.registry import REGISTRY
from app.jobs.worker import STALLED_AFTER, build_app, open_deps
from app.settings import Settings
from tests.conftest import RunJobs

Maker = async_sessionmaker[AsyncSession]
RUNS: dict[str, list[str]] = collections.defaultdict(list)  # marker → "ran", or the names of the workers that ran it
WORKER: contextvars.ContextVar[str] = contextvars.ContextVar("WORKER", default="")
FAILURES_LEFT: dict[str, int] = {}


@job("tests.record")
async def record(deps: JobDeps, *, marker: str) -> None:
    RUNS[marker].append("ran")


@job("tests.flaky", retry=3)
async def flaky(deps: JobDeps, *, marker: str) -> None:
    if FAILURES_LEFT.get(marker, 0) > 0:
        FAILURES_LEFT[marker] -= 1
        raise RuntimeError("not yet")
    RUNS[marker].append("ran")


@job("tests.slow", queue="tests-slow")
async def slow(deps: JobDeps, *, marker: str) -> None:
    await asyncio.sleep(0.005)  # long enough for the other worker to try the same row
    async with deps.sessionmaker() as session:
        assert await session.scalar(text("SELECT 1")) == 1  # a task has the database through deps
    RUNS[marker].append(WORKER.get())


@pytest_asyncio.fixture(loop_scope="session")
async def sessionmaker(app: Litestar, settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on the tests' event loop (the app's own pool serves the test client's loop)."""
    async with open_deps(settings, keyring=app.state.keyring, pool_size=2) as deps:
        yield deps.sessionmaker


async def jobs_of(db: asyncpg.Connection, marker: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT * FROM procrastinate_jobs WHERE args->>'marker' = $1 ORDER BY id", marker
    )
    return rows


async def test_committed_job_runs_and_rolled_back_job_does_not_exist(
    sessionmaker: Maker, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    committed, rolled_back = uuid.uuid4().hex, uuid.uuid4().hex
    async with sessionmaker() as session, session.begin():
        job_id = await enqueue(session, "tests.record", marker=committed)

    async def failing_change() -> None:
        async with sessionmaker() as session, session.begin():
            await enqueue(session, "tests.record", marker=rolled_back)
            seen = await session.scalar(
                text("SELECT count(*) FROM procrastinate_jobs WHERE args->>'marker' = :m"), {"m": rolled_back}
            )
            assert seen == 1  # visible inside its own transaction only
            raise RuntimeError("the change fails")

    with pytest.raises(RuntimeError, match="the change fails"):
        await failing_change()

    [row] = await jobs_of(db, committed)
    assert (row["id"], row["status"], row["queue_name"]) == (job_id, "todo", "default")
    assert await jobs_of(db, rolled_back) == []

    await run_jobs()
    assert RUNS[committed] == ["ran"]
    assert rolled_back not in RUNS
    assert await jobs_of(db, committed) == []  # finished jobs leave the table; their effects are the record


async def test_job_invisible_to_workers_until_commit(sessionmaker: Maker, run_jobs: RunJobs) -> None:
    marker = uuid.uuid4().hex
    async with sessionmaker() as session, session.begin():
        await enqueue(session, "tests.record", marker=marker)
        await run_jobs()  # a worker running now does not see the uncommitted job
        assert marker not in RUNS
    await run_jobs()
    assert RUNS[marker] == ["ran"]


async def test_failing_job_retries_with_growing_backoff_until_it_succeeds(
    sessionmaker: Maker, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    marker = uuid.uuid4().hex
    FAILURES_LEFT[marker] = 2
    async with sessionmaker() as session, session.begin():
        await enqueue(session, "tests.flaky", marker=marker)

    waits = []
    for attempt in (1, 2):
        started = dt.datetime.now(dt.UTC)
        await run_jobs(raise_errors=False)
        [row] = await jobs_of(db, marker)
        assert (row["status"], row["attempts"]) == ("todo", attempt)
        waits.append((row["scheduled_at"] - started).total_seconds())
        # Time passes: the retry becomes due.
        await db.execute("UPDATE procrastinate_jobs SET scheduled_at = now() WHERE id = $1", row["id"])
    assert 2 < waits[0] < waits[1]  # 1 + 2^1 s, then 1 + 2^2 s
    await run_jobs()
    assert RUNS[marker] == ["ran"]
    assert await jobs_of(db, marker) == []


async def test_job_out_of_retries_stays_failed_not_lost(
    sessionmaker: Maker, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    marker = uuid.uuid4().hex
    FAILURES_LEFT[marker] = 10
    async with sessionmaker() as session, session.begin():
        await enqueue(session, "tests.flaky", marker=marker)
    for _ in range(4):
        await run_jobs(raise_errors=False)
        await db.execute("UPDATE procrastinate_jobs SET scheduled_at = now() WHERE args->>'marker' = $1", marker)
    [row] = await jobs_of(db, marker)
    assert (row["status"], row["attempts"]) == ("failed", 4)  # the first run and three retries
    assert marker not in RUNS


async def test_scheduled_job_waits_for_its_time(sessionmaker: Maker, run_jobs: RunJobs, db: asyncpg.Connection) -> None:
    marker = uuid.uuid4().hex
    async with sessionmaker() as session, session.begin():
        await enqueue(session, "tests.record", _at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1), marker=marker)
    await run_jobs()
    assert marker not in RUNS
    await db.execute("UPDATE procrastinate_jobs SET scheduled_at = now() WHERE args->>'marker' = $1", marker)
    await run_jobs()
    assert RUNS[marker] == ["ran"]


async def test_unknown_task_is_refused_at_enqueue(sessionmaker: Maker) -> None:
    async with sessionmaker() as session, session.begin():
        with pytest.raises(LookupError, match=r"no job named 'tests\.nope'"):
            await enqueue(session, "tests.nope", marker="x")


async def test_two_workers_drain_one_queue_and_run_each_job_once(
    app: Litestar, sessionmaker: Maker, settings: Settings, db: asyncpg.Connection
) -> None:
    markers = [uuid.uuid4().hex for _ in range(200)]
    async with sessionmaker() as session, session.begin():
        await enqueue_many(session, [Deferred("tests.slow", {"marker": marker}) for marker in markers])

    async def worker(name: str) -> None:
        WORKER.set(name)  # jobs run in tasks the worker creates, which see it
        # Separate apps with their own connection pools, as two worker processes would have.
        async with open_deps(settings, keyring=app.state.keyring, pool_size=3) as deps:
            papp = build_app(deps, periodic=False, pool_size=6)
            async with papp.open_async():
                await papp.run_worker_async(
                    queues=["tests-slow"], concurrency=3, wait=False, install_signal_handlers=False, name=name
                )

    await asyncio.gather(worker("one"), worker("two"))
    assert all(len(RUNS[marker]) == 1 for marker in markers), "a job ran twice or not at all"
    ran_by = collections.Counter(RUNS[marker][0] for marker in markers)
    assert min(ran_by["one"], ran_by["two"]) > 0, ran_by  # both shared the load
    assert (
        await db.fetchval(
            "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'tests.slow' AND status <> 'succeeded'"
        )
        == 0
    )


async def test_job_of_a_dead_worker_is_queued_again(
    sessionmaker: Maker, run_jobs: RunJobs, db: asyncpg.Connection
) -> None:
    marker = uuid.uuid4().hex
    async with sessionmaker() as session, session.begin():
        await enqueue(session, "tests.record", marker=marker)
    # A worker took the job and died: its heartbeat stopped long ago.
    dead = await db.fetchval(
        "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now() - make_interval(secs => $1)) RETURNING id",
        STALLED_AFTER * 2,
    )
    await db.execute(
        "UPDATE procrastinate_jobs SET status = 'doing', worker_id = $1 WHERE args->>'marker' = $2", dead, marker
    )
    await run_jobs()
    assert marker not in RUNS  # still "doing" on the dead worker

    async with sessionmaker() as session, session.begin():
        await session.execute(
            text(
                "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('default', 'jobs.requeue_stalled', 0, NULL, NULL, "
                "'{\"timestamp\": 0}'::jsonb, NULL)::procrastinate_job_to_defer_v1])"
            )
        )
    await run_jobs()
    assert RUNS[marker] == ["ran"]


async def test_periodic_jobs_are_deferred_once_per_tick_by_any_number_of_workers(
    app: Litestar, settings: Settings, db: asyncpg.Connection
) -> None:
    assert REGISTRY["licensing.expiry_sweep"].periodic == "* * * * *"

    async def worker() -> None:
        async with open_deps(settings, keyring=app.state.keyring, pool_size=2) as deps:
            papp = build_app(deps, periodic=True, pool_size=4)
            async with papp.open_async():
                task = asyncio.create_task(papp.run_worker_async(queues=["tests-none"], install_signal_handlers=False))
                await asyncio.sleep(3)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

    await asyncio.gather(worker(), worker())
    ticks = await db.fetch(
        "SELECT defer_timestamp, count(*) AS n FROM procrastinate_periodic_defers "
        "WHERE task_name = 'licensing.expiry_sweep' GROUP BY defer_timestamp"
    )
    assert ticks
    assert all(tick["n"] == 1 for tick in ticks)


def test_migration_ships_the_installed_procrastinate_schema() -> None:
    """Upgrading procrastinate needs a migration applying its SQL migrations; this catches forgetting it."""
    vendored = (
        Path(__file__).resolve().parents[2] / "migrations" / "sql" / f"procrastinate-{procrastinate.__version__}.sql"
    )
    shipped = procrastinate.schema.SchemaManager.get_schema()
    assert vendored.exists(), f"procrastinate {procrastinate.__version__} is installed; the migrations ship 3.10.0"
    assert vendored.read_text(encoding="utf-8") == shipped
