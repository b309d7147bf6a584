"""Attempt counters in fixed windows, shared by every service process: sign-ins and sign-ups.

An attempt is counted *before* the Argon2 check it guards, in a short transaction of its own that commits at
once. Concurrent attempts queue on a counter's row only for that one statement, so exactly ``limit`` attempts
per window reach the check whatever the concurrency; an attempt refused on one counter rolls back and raises
none of the others (a locked address cannot push an account towards its account-wide ceiling).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Sequence

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from app.auth.models import LoginThrottle
from app.db import utcnow
from app.errors import ProblemError


@dataclasses.dataclass(frozen=True, slots=True)
class Counter:
    key: str
    limit: int


class Refusal(ProblemError):
    """429 with the seconds until the counter's window ends."""

    def __init__(self, type_: str, title: str, detail: str, wait: int) -> None:
        super().__init__(
            429, type_, title, f"{detail}; try again in {wait} seconds", headers={"Retry-After": str(wait)}
        )


async def count_attempt(
    engine: AsyncEngine,
    counters: Sequence[Counter],
    window: dt.timedelta,
    *,
    type_: str,
    title: str,
    detail: str,
) -> None:
    """Count one attempt on every counter, or on none and raise :class:`Refusal` when one is at its limit."""
    now = utcnow()
    async with engine.begin() as connection:
        waits: list[int] = []
        # Always the same order, so two attempts never wait on each other's rows.
        for counter in sorted(counters, key=lambda c: c.key):
            expired = LoginThrottle.window_started_at <= now - window
            counted = (
                await connection.execute(
                    insert(LoginThrottle)
                    .values(key=counter.key, failures=1, window_started_at=now)
                    .on_conflict_do_update(
                        index_elements=[LoginThrottle.key],
                        set_={
                            "failures": case((expired, 1), else_=LoginThrottle.failures + 1),
                            "window_started_at": case((expired, now), else_=LoginThrottle.window_started_at),
                        },
                    )
                    .returning(LoginThrottle.failures, LoginThrottle.window_started_at)
                )
            ).one()
            if counted.failures > counter.limit:
                waits.append(max(1, math.ceil((counted.window_started_at + window - now).total_seconds())))
        if waits:
            # Leaving the block with the exception rolls the whole attempt back.
            raise Refusal(type_, title, detail, max(waits))


async def forgive(
    session: AsyncSession | AsyncConnection, counters: Sequence[Counter], *, reset: Sequence[str] = ()
) -> None:
    """Take back one counted attempt (it succeeded, or was never made); clear the ``reset`` keys.

    The rows are locked first in key order, the order ``count_attempt`` takes them in: this runs inside the
    request's transaction, and taking them in another order deadlocks with a concurrent attempt of the same
    account."""
    await session.execute(
        select(LoginThrottle.key)
        .where(LoginThrottle.key.in_(sorted({c.key for c in counters} | set(reset))))
        .order_by(LoginThrottle.key)
        .with_for_update()
    )
    keys = [c.key for c in counters if c.key not in reset]
    if keys:
        await session.execute(
            update(LoginThrottle)
            .where(LoginThrottle.key.in_(keys))
            .values(failures=func.greatest(LoginThrottle.failures - 1, 0))
        )
    if reset:
        await session.execute(delete(LoginThrottle).where(LoginThrottle.key.in_(list(reset))))
