"""Job definitions: ``@job`` registers a task by name at import time, before any worker or queue exists."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.keys import KeyRing
from app.objectstore import ObjectStore
from app.settings import Settings

DEFAULT_QUEUE = "default"
# Attempts of a job whose task raises: the waits between them grow as 1 + 2^(n+1) seconds (3 s, 5 s, 9 s, …,
# about 34 minutes before the tenth retry), so a database or object-store outage of an hour loses nothing.
DEFAULT_RETRIES = 10


@dataclasses.dataclass(frozen=True, slots=True)
class JobDeps:
    """What a task works with; it opens its own sessions (and transactions) with ``sessionmaker``."""

    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    store: ObjectStore
    keyring: KeyRing


TaskFn = Callable[..., Awaitable[None]]


@dataclasses.dataclass(frozen=True, slots=True)
class JobSpec:
    name: str
    fn: TaskFn
    queue: str
    retry: int
    periodic: str | None  # cron expression: the worker defers it once per tick, whatever the number of workers


REGISTRY: dict[str, JobSpec] = {}


def job(
    name: str, *, queue: str = DEFAULT_QUEUE, retry: int = DEFAULT_RETRIES, periodic: str | None = None
) -> Callable[[TaskFn], TaskFn]:
    """Register ``fn(deps, **kwargs)`` as the task ``name``. Periodic tasks get ``timestamp`` (the tick, epoch s)."""

    def register(fn: TaskFn) -> TaskFn:
        known = REGISTRY.get(name)
        if known is not None and known.fn is not fn:
            raise ValueError(f"job {name!r} is registered twice ({known.fn.__module__} and {fn.__module__})")
        REGISTRY[name] = JobSpec(name=name, fn=fn, queue=queue, retry=retry, periodic=periodic)
        return fn

    return register


def spec_of(name: str) -> JobSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise LookupError(
            f"no job named {name!r} is registered: define it with @job and list its module in app.wiring.TASK_MODULES"
        ) from None
