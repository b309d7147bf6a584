"""HTTP routes of the inbox (``/notifications``) and of webhooks (``/webhooks``)."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, Response
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.types import ControllerRouterHandler

from app.auth.guards import requires
from app.deps import BEARER, Audit, Caller, Cursor, Limit, Session
from app.errors import PROBLEM_MEDIA_TYPE, Problem
from app.handlers import delete, get, post
from app.notifications import service
from app.notifications.models import WebhookDelivery, WebhookEndpoint
from app.notifications.schemas import (
    AttemptOut,
    DeliveryDetail,
    DeliveryOut,
    DeliveryPage,
    NotificationOut,
    NotificationPage,
    WebhookCreated,
    WebhookIn,
    WebhookOut,
    WebhookPage,
)
from app.settings import Settings

OrgQuery = Annotated[str, QueryParameter(description="the organisation's slug")]


def _problem(description: str) -> ResponseSpec:
    return ResponseSpec(Problem, description=description, media_type=PROBLEM_MEDIA_TYPE)


UNAUTHORIZED = _problem("No bearer token, or an invalid or expired one")
NOT_VISIBLE = _problem("The organisation (or webhook) does not exist or the caller is not a member")
NOT_ADMIN = _problem("The caller is a member but not an owner or admin, or the API key lacks the org:admin scope")
BAD_CURSOR = _problem("A cursor this listing did not issue")


def webhook_out(endpoint: WebhookEndpoint, org: str) -> WebhookOut:
    return WebhookOut(
        id=endpoint.id,
        org=org,
        url=endpoint.url,
        events=list(endpoint.events),
        description=endpoint.description,
        created_at=endpoint.created_at,
        disabled_at=endpoint.disabled_at,
        failing_since=endpoint.failing_since,
    )


def delivery_fields(delivery: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut(
        id=delivery.id,
        webhook_id=service.message_id(delivery.notification_id),
        notification_id=delivery.notification_id,
        event_type=delivery.event_type,
        status=service.delivery_status(delivery),  # type: ignore[arg-type]
        attempts=delivery.attempts,
        last_status_code=delivery.last_status_code,
        created_at=delivery.created_at,
        last_attempt_at=delivery.last_attempt_at,
        next_attempt_at=delivery.next_attempt_at,
    )


@get(
    "/notifications",
    summary="An organisation's inbox, newest first",
    description="Events that concern the organisation (orders, entitlements, versions, quotas, takedowns, "
    "webhooks), for its members. Keyset pages: pass `next_cursor` as `cursor`.",
    tags=["notifications"],
    security=BEARER,
    guards=[requires("notifications.read")],
    responses={400: BAD_CURSOR, 401: UNAUTHORIZED, 404: NOT_VISIBLE},
)
async def inbox(
    session: Session, principal: Caller, org: OrgQuery, cursor: Cursor = None, limit: Limit = 50
) -> NotificationPage:
    rows, next_cursor = await service.inbox(session, principal, org, cursor=cursor, limit=limit)
    return NotificationPage(
        items=[NotificationOut(id=n.id, type=n.type, created_at=n.created_at, data=n.data) for n in rows],
        next_cursor=next_cursor,
    )


class WebhookController(Controller):
    path = "/webhooks"
    tags = ["notifications"]
    security = BEARER
    guards = [requires("webhooks.manage")]

    @post(
        "/",
        summary="Register a webhook; its signing secret is shown only in this answer",
        description="Deliveries follow Standard Webhooks (webhook-id, webhook-timestamp, webhook-signature "
        "`v1,<base64 HMAC-SHA256 of '{id}.{timestamp}.{body}'>` with the secret after `whsec_`), at least once, "
        "retried with exponential backoff for a day with the same webhook-id. The URL must be http(s) without "
        "credentials and resolve to public addresses (unless CORPORA_EGRESS_ALLOW_PRIVATE=true).",
        status_code=201,
        responses={401: UNAUTHORIZED, 403: NOT_ADMIN, 404: NOT_VISIBLE, 409: _problem("Too many webhooks")},
    )
    async def create(
        self, session: Session, audit_context: Audit, principal: Caller, state: State, data: JSONBody[WebhookIn]
    ) -> WebhookCreated:
        settings: Settings = state.settings
        endpoint, org = await service.create_endpoint(
            session,
            audit_context,
            principal,
            org_slug=data.org,
            url=data.url,
            events=data.events,
            description=data.description,
            allow_private=settings.egress_allow_private,
        )
        return WebhookCreated(
            id=endpoint.id,
            org=org.slug,
            url=endpoint.url,
            events=list(endpoint.events),
            description=endpoint.description,
            created_at=endpoint.created_at,
            secret=endpoint.secret,
        )

    @get(
        "/",
        summary="An organisation's webhooks (without their secrets)",
        responses={400: BAD_CURSOR, 401: UNAUTHORIZED, 403: NOT_ADMIN, 404: NOT_VISIBLE},
    )
    async def list(
        self, session: Session, principal: Caller, org: OrgQuery, cursor: Cursor = None, limit: Limit = 50
    ) -> WebhookPage:
        rows, next_cursor = await service.list_endpoints(session, principal, org, cursor=cursor, limit=limit)
        return WebhookPage(items=[webhook_out(e, org) for e in rows], next_cursor=next_cursor)

    @get(
        "/{webhook_id:uuid}",
        summary="One webhook (without its secret)",
        responses={401: UNAUTHORIZED, 403: NOT_ADMIN, 404: NOT_VISIBLE},
    )
    async def read(self, session: Session, principal: Caller, webhook_id: FromPath[uuid.UUID]) -> WebhookOut:
        endpoint, org = await service.admin_endpoint(session, principal, webhook_id)
        return webhook_out(endpoint, org)

    @delete(
        "/{webhook_id:uuid}",
        summary="Delete a webhook: it receives nothing more; its delivery log stays readable",
        status_code=204,
        responses={401: UNAUTHORIZED, 403: NOT_ADMIN, 404: NOT_VISIBLE},
    )
    async def remove(
        self, session: Session, audit_context: Audit, principal: Caller, webhook_id: FromPath[uuid.UUID]
    ) -> None:
        await service.delete_endpoint(session, audit_context, principal, webhook_id)

    @post(
        "/{webhook_id:uuid}/enable",
        summary="Enable a webhook that was disabled after failing for a day",
        status_code=200,
        responses={401: UNAUTHORIZED, 403: NOT_ADMIN, 404: NOT_VISIBLE},
    )
    async def enable(
        self, session: Session, audit_context: Audit, principal: Caller, webhook_id: FromPath[uuid.UUID]
    ) -> WebhookOut:
        endpoint, org = await service.enable_endpoint(session, audit_context, principal, webhook_id)
        return webhook_out(endpoint, org)

    @get(
        "/{webhook_id:uuid}/deliveries",
        summary="The webhook's deliveries, newest first (a deleted webhook's too)",
        responses={400: BAD_CURSOR, 401: UNAUTHORIZED, 403: NOT_ADMIN, 404: NOT_VISIBLE},
    )
    async def deliveries(
        self,
        session: Session,
        principal: Caller,
        webhook_id: FromPath[uuid.UUID],
        cursor: Cursor = None,
        limit: Limit = 50,
    ) -> DeliveryPage:
        rows, next_cursor = await service.list_deliveries(session, principal, webhook_id, cursor=cursor, limit=limit)
        return DeliveryPage(items=[delivery_fields(d) for d in rows], next_cursor=next_cursor)

    @get(
        "/{webhook_id:uuid}/deliveries/{delivery_id:uuid}",
        summary="One delivery with the log of its attempts",
        responses={401: UNAUTHORIZED, 403: NOT_ADMIN, 404: NOT_VISIBLE},
    )
    async def delivery(
        self, session: Session, principal: Caller, webhook_id: FromPath[uuid.UUID], delivery_id: FromPath[uuid.UUID]
    ) -> DeliveryDetail:
        found, attempts = await service.get_delivery(session, principal, webhook_id, delivery_id)
        fields = delivery_fields(found)
        return DeliveryDetail(
            **{f: getattr(fields, f) for f in fields.__struct_fields__},
            log=[
                AttemptOut(
                    attempted_at=a.attempted_at,
                    status_code=a.status_code,
                    error=a.error,
                    duration_ms=a.duration_ms,
                    manual=a.manual,
                )
                for a in attempts
            ],
        )

    @post(
        "/{webhook_id:uuid}/deliveries/{delivery_id:uuid}/redeliver",
        summary="Send a delivery again now, with the same webhook-id",
        status_code=202,
        responses={
            401: UNAUTHORIZED,
            403: NOT_ADMIN,
            404: NOT_VISIBLE,
            409: _problem("The webhook is disabled; enable it first"),
        },
    )
    async def redeliver(
        self,
        session: Session,
        audit_context: Audit,
        principal: Caller,
        webhook_id: FromPath[uuid.UUID],
        delivery_id: FromPath[uuid.UUID],
    ) -> Response[DeliveryOut]:
        found = await service.redeliver(session, audit_context, principal, webhook_id, delivery_id)
        return Response(delivery_fields(found), status_code=202)


route_handlers: list[ControllerRouterHandler] = [inbox, WebhookController]
