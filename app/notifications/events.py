"""The data of each event, as domains publish it and webhooks receive it (``data`` of the body)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

import msgspec


class VersionEvent(msgspec.Struct):
    """version.submitted, version.published, version.rejected: to the provider org."""

    product: str
    version: str
    state: str
    manifest_digest: str | None
    reason: str | None = None


class OrderEvent(msgspec.Struct):
    """order.created, order.approved, order.rejected, order.fulfilled: to the buyer and the provider."""

    order_id: str
    status: str
    buyer_org: str
    provider_org: str
    product: str
    offer_id: str
    purpose: str
    entitlement_id: str | None
    reason: str | None = None


class EntitlementEvent(msgspec.Struct):
    """entitlement.revoked, entitlement.expiring: to the buyer (and the provider for revocations)."""

    entitlement_id: str
    status: str
    buyer_org: str
    product: str
    valid_until: dt.datetime | None
    reason: str | None = None


class QuotaEvent(msgspec.Struct):
    """quota.threshold: to the buyer, once per entitlement and quota, when usage reaches 80 %."""

    entitlement_id: str
    product: str
    quota: Literal["downloads", "bytes"]
    used: int
    limit: int
    threshold: float


class TakedownEvent(msgspec.Struct):
    """takedown.received: to the provider org; takedown.upheld: to the provider and every org that had downloaded
    the withdrawn content (asked to attest its deletion with ``POST /takedowns/{id}/attest``)."""

    takedown_id: str
    status: str
    product: str
    provider_org: str
    version: str | None
    sha256: list[str]
    reason: str
    attestation_requested: bool = False


class ModelFlagEvent(msgspec.Struct):
    """model.flagged: to the model's org, when an upheld takedown withdrew content its manifest records as
    trained on (``sha256``: those digests)."""

    model_id: str
    name: str
    version: str
    takedown_id: str
    sha256: list[str]
