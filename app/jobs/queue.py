"""Enqueueing: jobs are rows written in the caller's transaction, so they exist exactly when the change does."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.jobs.registry import spec_of

# procrastinate's own defer function (its schema is applied by migration 0009): it inserts the jobs and its
# trigger NOTIFYs the workers, which PostgreSQL delivers only when the caller's transaction commits.
_DEFER = text(
    """
    SELECT unnest(procrastinate_defer_jobs_v1(ARRAY(
        SELECT ROW(j.queue, j.task, 0, j.lock, NULL, j.args, j.at)::procrastinate_job_to_defer_v1
        FROM unnest(
            CAST(:queues AS varchar[]), CAST(:tasks AS varchar[]), CAST(:locks AS text[]),
            CAST(:args AS jsonb[]), CAST(:ats AS timestamptz[])
        ) AS j(queue, task, lock, args, at)
    )))
    """
)


@dataclasses.dataclass(frozen=True, slots=True)
class Deferred:
    """One job to enqueue: the task's name and its JSON-serialisable keyword arguments."""

    task: str
    kwargs: dict[str, Any]
    at: dt.datetime | None = None  # not before this moment (None: now)
    lock: str | None = None  # jobs sharing a lock never run at the same time


async def enqueue_many(session: AsyncSession, jobs: Sequence[Deferred]) -> list[int]:
    """Enqueue ``jobs`` in the session's transaction with one statement; returns their ids."""
    if not jobs:
        return []
    specs = [spec_of(job.task) for job in jobs]
    rows = await session.execute(
        _DEFER,
        {
            "queues": [spec.queue for spec in specs],
            "tasks": [spec.name for spec in specs],
            "locks": [job.lock for job in jobs],
            "args": [json.dumps(job.kwargs) for job in jobs],
            "ats": [job.at for job in jobs],
        },
    )
    return [row[0] for row in rows]


async def enqueue(
    session: AsyncSession, task: str, /, *, _at: dt.datetime | None = None, _lock: str | None = None, **kwargs: Any
) -> int:
    """Enqueue the task ``task`` with ``kwargs`` in the session's transaction: a rollback enqueues nothing."""
    (job_id,) = await enqueue_many(session, [Deferred(task, kwargs, at=_at, lock=_lock)])
    return job_id
