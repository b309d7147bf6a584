"""The jobs of notifications: webhook deliveries."""

from __future__ import annotations

import uuid

from app.jobs import JobDeps, job
from app.notifications import delivery


@job("notifications.deliver", queue="webhooks")
async def deliver(deps: JobDeps, *, delivery_id: str, manual: bool = False) -> None:
    await delivery.attempt(deps.sessionmaker, deps.egress, uuid.UUID(delivery_id), manual=manual)
