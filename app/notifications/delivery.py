"""One delivery attempt: sign per Standard Webhooks, POST through the egress client, record, and plan the next.

At least once: an attempt is recorded only after the request, so a worker that dies in between sends it again
(with the same ``webhook-id``, which receivers use to drop duplicates). Failed attempts are retried with
exponential backoff (30 s, 1 min, 2 min, … at most 4 h apart) for a day after the event; then the delivery has
failed. An endpoint that has accepted nothing for a day is disabled and its org told in the inbox.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
import uuid

import httpx
import msgspec
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks.webhooks import Webhook

from app.db import utcnow
from app.egress import Egress, EgressRefused
from app.jobs import enqueue
from app.notifications.models import EventType, Notification, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from app.notifications.service import DELIVER_TASK, message_id, publish

log = logging.getLogger("corpora.webhooks")

FIRST_RETRY = dt.timedelta(seconds=30)
LONGEST_WAIT = dt.timedelta(hours=4)
RETRY_WINDOW = dt.timedelta(days=1)
DISABLE_AFTER = dt.timedelta(days=1)  # failing without a single success for this long
TIMEOUT_SECONDS = 10.0
MAX_RESPONSE_BYTES = 16 * 1024
USER_AGENT = "Corpora-Webhooks/1"


def backoff(failed_attempts: int) -> dt.timedelta:
    """The wait after ``failed_attempts`` failures, with up to 10 % jitter so retries of many spread out."""
    wait: dt.timedelta = min(FIRST_RETRY * 2 ** max(failed_attempts - 1, 0), LONGEST_WAIT)
    return wait * random.uniform(1.0, 1.1)  # noqa: S311 - spreading load, not a secret


def body_of(notification: Notification) -> bytes:
    """The same bytes for every attempt: the event's own time, not the attempt's."""
    return msgspec.json.encode(
        {"type": notification.type, "timestamp": notification.created_at.isoformat(), "data": notification.data}
    )


def signed_headers(secret: str, msg_id: str, body: bytes, now: dt.datetime) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body),
    }


async def _load(
    session: AsyncSession, delivery_id: uuid.UUID
) -> tuple[WebhookDelivery, WebhookEndpoint, Notification] | None:
    row = (
        await session.execute(
            select(WebhookDelivery, WebhookEndpoint, Notification)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .join(Notification, Notification.id == WebhookDelivery.notification_id)
            .where(WebhookDelivery.id == delivery_id)
        )
    ).one_or_none()
    return None if row is None else (row[0], row[1], row[2])


async def attempt(
    sessionmaker: async_sessionmaker[AsyncSession], egress: Egress, delivery_id: uuid.UUID, *, manual: bool
) -> None:
    async with sessionmaker() as session:
        loaded = await _load(session, delivery_id)
    if loaded is None:
        return
    delivery, endpoint, notification = loaded
    if endpoint.deleted_at is not None:
        return
    if not manual and (delivery.succeeded_at is not None or delivery.failed_at is not None):
        return  # a redelivery already succeeded, or the delivery gave up
    if endpoint.disabled_at is not None and not manual:
        async with sessionmaker() as session, session.begin():
            await session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery.id, WebhookDelivery.succeeded_at.is_(None))
                .values(failed_at=utcnow(), next_attempt_at=None)
            )
        return

    body = body_of(notification)
    started = utcnow()
    clock = time.perf_counter()
    status_code: int | None = None
    error: str | None = None
    try:
        response = await egress.request(
            "POST",
            endpoint.url,
            content=body,
            headers=signed_headers(endpoint.secret, message_id(notification.id), body, started),
            timeout=TIMEOUT_SECONDS,
            max_bytes=MAX_RESPONSE_BYTES,
        )
        status_code = response.status_code
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}"
    except EgressRefused as exc:
        error = f"refused: {exc}"
    except TimeoutError:
        error = f"no answer within {TIMEOUT_SECONDS:.0f} s"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    duration_ms = int((time.perf_counter() - clock) * 1000)
    await _record(sessionmaker, delivery.id, endpoint.id, started, duration_ms, status_code, error, manual=manual)


async def _record(
    sessionmaker: async_sessionmaker[AsyncSession],
    delivery_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    started: dt.datetime,
    duration_ms: int,
    status_code: int | None,
    error: str | None,
    *,
    manual: bool,
) -> None:
    """Log the attempt and update the delivery; on failure plan the retry and judge the endpoint.

    A success takes no lock on the endpoint, so deliveries to one endpoint are recorded side by side.
    """
    async with sessionmaker() as session, session.begin():
        now = utcnow()
        await session.execute(
            insert(WebhookAttempt).values(
                delivery_id=delivery_id,
                attempted_at=started,
                duration_ms=duration_ms,
                status_code=status_code,
                error=error,
                manual=manual,
            )
        )
        counted = {
            "attempts": WebhookDelivery.attempts + 1,
            "last_attempt_at": started,
            "last_status_code": status_code,
        }
        if error is None:
            await session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id)
                .values(**counted, succeeded_at=now, failed_at=None, next_attempt_at=None)
            )
            await session.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.failing_since.is_not(None))
                .values(failing_since=None)
            )
            return
        attempts, created_at, succeeded_at, failed_at = (
            await session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id)
                .values(**counted)
                .returning(
                    WebhookDelivery.attempts,
                    WebhookDelivery.created_at,
                    WebhookDelivery.succeeded_at,
                    WebhookDelivery.failed_at,
                )
            )
        ).one()
        endpoint = (
            await session.scalars(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == endpoint_id)
                .values(failing_since=func.coalesce(WebhookEndpoint.failing_since, started))
                .returning(WebhookEndpoint)
            )
        ).one()
        if not manual and succeeded_at is None and failed_at is None:
            due = now + backoff(attempts)
            if due - created_at > RETRY_WINDOW:
                values: dict[str, dt.datetime | None] = {"failed_at": now, "next_attempt_at": None}
            else:
                values = {"next_attempt_at": due}
                await enqueue(session, DELIVER_TASK, _at=due, delivery_id=str(delivery_id))
            await session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(**values))
        failing_since = endpoint.failing_since or started
        if endpoint.disabled_at is None and now - failing_since >= DISABLE_AFTER:
            await _disable(session, endpoint, now, error)


async def _disable(session: AsyncSession, endpoint: WebhookEndpoint, now: dt.datetime, error: str) -> None:
    endpoint.disabled_at = now
    await session.flush()  # before publishing, so the disabled endpoint is not sent its own notice
    log.warning("webhook %s disabled: failing since %s (%s)", endpoint.id, endpoint.failing_since, error)
    await publish(
        session,
        endpoint.org_id,
        EventType.WEBHOOK_DISABLED,
        {
            "webhook_id": str(endpoint.id),
            "url": endpoint.url,
            "failing_since": endpoint.failing_since.isoformat() if endpoint.failing_since else None,
            "last_error": error,
        },
    )
