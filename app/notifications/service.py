"""Publishing events to the orgs they concern, the inbox, and the management of webhook endpoints.

Every domain publishes through ``publish`` in its own transaction: the inbox entries and the webhook deliveries
(queued jobs) exist exactly when the change that caused them commits.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
from sqlalchemy import func, select, true, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.access import acts_for, check_role, org_for
from app.accounts.models import Membership, Organization
from app.audit import service as audit
from app.audit.service import AuditContext
from app.auth.principal import Principal
from app.db import utcnow
from app.egress import EgressRefused, check_host, check_url
from app.errors import ProblemError, invalid, not_found
from app.jobs import Deferred, enqueue, enqueue_many
from app.notifications.models import EventType, Notification, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from app.pagination import page

DELIVER_TASK = "notifications.deliver"
SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks prefix, not a secret
MAX_ENDPOINTS_PER_ORG = 20


def as_data(data: msgspec.Struct | Mapping[str, Any]) -> dict[str, Any]:
    built = msgspec.to_builtins(data)
    assert isinstance(built, dict)
    return built


async def publish(
    session: AsyncSession,
    orgs: uuid.UUID | Iterable[uuid.UUID],
    event: EventType,
    data: msgspec.Struct | Mapping[str, Any],
    *,
    once_key: str | None = None,
) -> list[uuid.UUID]:
    """Tell ``orgs`` about ``event``: an inbox entry each, and a queued delivery to each matching webhook.

    In the caller's transaction, with a fixed number of statements. With ``once_key``, an org that was already
    told under that key is not told again (the ids returned are of the entries written now).
    """
    org_ids = list(dict.fromkeys([orgs] if isinstance(orgs, uuid.UUID) else orgs))
    if not org_ids:
        return []
    payload = as_data(data)
    now = func.clock_timestamp()
    written = (
        await session.execute(
            insert(Notification)
            .values(
                [
                    # clock_timestamp(): events of one transaction keep their order in the inbox
                    {"org_id": org, "type": str(event), "data": payload, "once_key": once_key, "created_at": now}
                    for org in org_ids
                ]
            )
            .on_conflict_do_nothing(index_elements=[Notification.org_id, Notification.once_key])
            .returning(Notification.id, Notification.org_id)
        )
    ).all()
    if not written:
        return []
    notification_of = {org: notification for notification, org in written}
    endpoints = (
        await session.execute(
            select(WebhookEndpoint.id, WebhookEndpoint.org_id).where(
                WebhookEndpoint.org_id.in_(notification_of),
                WebhookEndpoint.deleted_at.is_(None),
                WebhookEndpoint.disabled_at.is_(None),
                WebhookEndpoint.events.any_() == str(event),
            )
        )
    ).all()
    if endpoints:
        deliveries = (
            await session.scalars(
                insert(WebhookDelivery)
                .values(
                    [
                        {"endpoint_id": endpoint, "notification_id": notification_of[org], "event_type": str(event)}
                        for endpoint, org in endpoints
                    ]
                )
                .returning(WebhookDelivery.id)
            )
        ).all()
        await enqueue_many(session, [Deferred(DELIVER_TASK, {"delivery_id": str(d)}) for d in deliveries])
    return [notification for notification, _ in written]


# --- access: members read the inbox; owners and admins manage webhooks ----------------------------------------


async def member_org(session: AsyncSession, principal: Principal, slug: str) -> Organization:
    org, _ = await org_for(session, principal, slug, "notifications.read", "reading the inbox")
    return org


async def admin_org(session: AsyncSession, principal: Principal, slug: str) -> Organization:
    org, _ = await org_for(session, principal, slug, "webhooks.manage", "managing webhooks")
    return org


async def admin_endpoint(
    session: AsyncSession, principal: Principal, webhook_id: uuid.UUID, *, deleted_too: bool = False
) -> tuple[WebhookEndpoint, str]:
    """The endpoint and its org's slug: 404 unless the caller is a member, 403 unless an owner or admin. A deleted
    endpoint is 404, unless ``deleted_too`` (its delivery log stays readable)."""
    row = (
        await session.execute(
            select(WebhookEndpoint, Organization.slug, Membership.role)
            .join(Organization, Organization.id == WebhookEndpoint.org_id)
            .outerjoin(
                Membership,
                (Membership.org_id == WebhookEndpoint.org_id) & (Membership.user_id == principal.user_id),
            )
            .where(WebhookEndpoint.id == webhook_id, true() if deleted_too else WebhookEndpoint.deleted_at.is_(None))
        )
    ).one_or_none()
    if row is None:
        raise not_found("webhook")
    endpoint, slug, role = row
    if role is None or not acts_for(principal, endpoint.org_id):
        raise not_found("webhook")
    check_role(principal, role, "webhooks.manage", "managing the organisation's webhooks")
    return endpoint, slug


# --- the inbox ---------------------------------------------------------------------------------------------------


async def inbox(
    session: AsyncSession, principal: Principal, slug: str, *, cursor: str | None, limit: int
) -> tuple[list[Notification], str | None]:
    org = await member_org(session, principal, slug)
    rows, next_cursor = await page(
        session,
        select(Notification).where(Notification.org_id == org.id),
        [Notification.created_at, Notification.id],
        cursor,
        limit,
        descending=True,
    )
    return [row[0] for row in rows], next_cursor


# --- webhook endpoints -----------------------------------------------------------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


async def check_webhook_url(url: str, *, allow_private: bool) -> None:
    """422 for a URL deliveries could never go to; deliveries check the address again at every connection."""
    try:
        parsed = check_url(url)
        await check_host(
            parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80), allow_private=allow_private
        )
    except EgressRefused as exc:
        raise invalid("url", str(exc)) from None


async def create_endpoint(
    session: AsyncSession,
    context: AuditContext,
    principal: Principal,
    *,
    org_slug: str,
    url: str,
    events: list[EventType],
    description: str | None,
    allow_private: bool,
) -> tuple[WebhookEndpoint, Organization]:
    org = await admin_org(session, principal, org_slug)
    await check_webhook_url(url, allow_private=allow_private)
    active = await session.scalar(
        select(WebhookEndpoint.id)
        .where(WebhookEndpoint.org_id == org.id, WebhookEndpoint.deleted_at.is_(None))
        .offset(MAX_ENDPOINTS_PER_ORG - 1)
        .limit(1)
    )
    if active is not None:
        raise ProblemError(
            409, "too-many-webhooks", "Too many webhooks", f"an organisation has at most {MAX_ENDPOINTS_PER_ORG}"
        )
    endpoint = WebhookEndpoint(
        org_id=org.id,
        url=url,
        events=sorted({str(e) for e in events}),
        description=description,
        secret=new_secret(),
        created_by=principal.user_id,
    )
    session.add(endpoint)
    await session.flush()
    await session.refresh(endpoint, ["created_at"])
    await audit.record(
        session,
        context,
        "webhook.created",
        org_id=org.id,
        target_type="webhook",
        target_id=endpoint.id,
        details={"org": org.slug, "url": url, "events": endpoint.events},
    )
    return endpoint, org


async def list_endpoints(
    session: AsyncSession, principal: Principal, slug: str, *, cursor: str | None, limit: int
) -> tuple[list[WebhookEndpoint], str | None]:
    org = await admin_org(session, principal, slug)
    rows, next_cursor = await page(
        session,
        select(WebhookEndpoint).where(WebhookEndpoint.org_id == org.id, WebhookEndpoint.deleted_at.is_(None)),
        [WebhookEndpoint.created_at, WebhookEndpoint.id],
        cursor,
        limit,
        descending=True,
    )
    return [row[0] for row in rows], next_cursor


async def delete_endpoint(
    session: AsyncSession, context: AuditContext, principal: Principal, webhook_id: uuid.UUID
) -> None:
    """Deleted endpoints get nothing more; their delivery log is kept."""
    endpoint, slug = await admin_endpoint(session, principal, webhook_id)
    await session.execute(update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint.id).values(deleted_at=utcnow()))
    await audit.record(
        session,
        context,
        "webhook.deleted",
        org_id=endpoint.org_id,
        target_type="webhook",
        target_id=endpoint.id,
        details={"org": slug, "url": endpoint.url},
    )


async def enable_endpoint(
    session: AsyncSession, context: AuditContext, principal: Principal, webhook_id: uuid.UUID
) -> tuple[WebhookEndpoint, str]:
    endpoint, slug = await admin_endpoint(session, principal, webhook_id)
    if endpoint.disabled_at is not None:
        endpoint.disabled_at = None
        endpoint.failing_since = None
        await session.flush()
        await audit.record(
            session,
            context,
            "webhook.enabled",
            org_id=endpoint.org_id,
            target_type="webhook",
            target_id=endpoint.id,
            details={"org": slug, "url": endpoint.url},
        )
    return endpoint, slug


# --- deliveries ----------------------------------------------------------------------------------------------------


async def list_deliveries(
    session: AsyncSession, principal: Principal, webhook_id: uuid.UUID, *, cursor: str | None, limit: int
) -> tuple[list[WebhookDelivery], str | None]:
    endpoint, _ = await admin_endpoint(session, principal, webhook_id, deleted_too=True)
    rows, next_cursor = await page(
        session,
        select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id),
        [WebhookDelivery.created_at, WebhookDelivery.id],
        cursor,
        limit,
        descending=True,
    )
    return [row[0] for row in rows], next_cursor


async def get_delivery(
    session: AsyncSession, principal: Principal, webhook_id: uuid.UUID, delivery_id: uuid.UUID
) -> tuple[WebhookDelivery, list[WebhookAttempt]]:
    endpoint, _ = await admin_endpoint(session, principal, webhook_id, deleted_too=True)
    delivery = await session.scalar(
        select(WebhookDelivery).where(WebhookDelivery.id == delivery_id, WebhookDelivery.endpoint_id == endpoint.id)
    )
    if delivery is None:
        raise not_found("delivery")
    attempts = list(
        (
            await session.scalars(
                select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery.id).order_by(WebhookAttempt.id)
            )
        ).all()
    )
    return delivery, attempts


async def redeliver(
    session: AsyncSession, context: AuditContext, principal: Principal, webhook_id: uuid.UUID, delivery_id: uuid.UUID
) -> WebhookDelivery:
    """Queue one more attempt now, with the same webhook-id, whatever the delivery's state."""
    endpoint, slug = await admin_endpoint(session, principal, webhook_id)
    if endpoint.disabled_at is not None:
        raise ProblemError(
            409, "webhook-disabled", "Webhook disabled", "enable the webhook (POST /webhooks/{id}/enable) first"
        )
    delivery = await session.scalar(
        select(WebhookDelivery).where(WebhookDelivery.id == delivery_id, WebhookDelivery.endpoint_id == endpoint.id)
    )
    if delivery is None:
        raise not_found("delivery")
    await enqueue(session, DELIVER_TASK, delivery_id=str(delivery.id), manual=True)
    await audit.record(
        session,
        context,
        "webhook.redelivery_requested",
        org_id=endpoint.org_id,
        target_type="webhook_delivery",
        target_id=delivery.id,
        details={"org": slug, "webhook": str(endpoint.id), "event_type": delivery.event_type},
    )
    return delivery


def delivery_status(delivery: WebhookDelivery) -> str:
    if delivery.succeeded_at is not None:
        return "succeeded"
    if delivery.failed_at is not None:
        return "failed"
    return "pending"


def message_id(notification_id: uuid.UUID) -> str:
    """The ``webhook-id`` of a notification: the same for every attempt and every endpoint."""
    return f"msg_{notification_id.hex}"
