"""The job queue (procrastinate on PostgreSQL): ``@job`` defines a task, ``enqueue`` queues one in a transaction."""

from app.jobs.queue import Deferred, enqueue, enqueue_many
from app.jobs.registry import JobDeps, job

__all__ = ["Deferred", "JobDeps", "enqueue", "enqueue_many", "job"]
