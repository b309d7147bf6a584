"""Flags on model manifests: an upheld takedown flags every manifest that records, among the files of an item,
content it withdrew from that item's version. The manifest (its document and digest) never changes; the flag
sits beside it and is shown with it.

The files a manifest records per item are those downloaded of that item's version, so a recorded digest is one
the version held when it was downloaded, whether or not it still does.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import ARRAY, ColumnElement, String, any_, func, literal, literal_column, select
from sqlalchemy.dialects.postgresql import JSONB, aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.audit.service import AuditContext
from app.notifications.events import ModelFlagEvent
from app.notifications.models import EventType
from app.notifications.service import publish
from catalog.models import Product, ProductVersion
from licensing.models.models import ModelFlag, ModelManifest, ModelTrainingItem


@dataclasses.dataclass(frozen=True, slots=True)
class Flagged:
    manifest_id: uuid.UUID
    org_id: uuid.UUID
    name: str
    version: str
    sha256: list[str]


async def flag_models(
    session: AsyncSession,
    context: AuditContext,
    *,
    takedown_id: uuid.UUID,
    digests: Sequence[str],
    reach_org: uuid.UUID | None,
) -> list[Flagged]:
    """Flag the manifests recording any of ``digests`` for an item whose version is of a product in the reach
    (of ``reach_org``; None: every product); audit (``model.flagged``) and tell each model's org."""
    recorded = (
        func.jsonb_array_elements(
            ModelManifest.document["items"][ModelTrainingItem.position]["files"],
        )
        .table_valued(literal_column("value", JSONB), joins_implicitly=True)
        .render_derived(name="recorded")
    )
    sha256 = recorded.c.value["sha256"].astext
    found = (
        select(ModelManifest.id, ModelManifest.org_id, ModelManifest.name, ModelManifest.version, sha256)
        .select_from(ModelTrainingItem)
        .join(ModelManifest, ModelManifest.id == ModelTrainingItem.manifest_id)
        .join(ProductVersion, ProductVersion.id == ModelTrainingItem.version_id)
        .join(recorded, literal(True))
        .where(sha256 == any_(literal(list(digests), ARRAY(String))))
        .distinct()
    )
    if reach_org is not None:
        found = found.join(Product, Product.id == ProductVersion.product_id).where(Product.org_id == reach_org)
    by_manifest: dict[tuple[uuid.UUID, uuid.UUID, str, str], set[str]] = defaultdict(set)
    for manifest_id, org_id, name, version, sha in await session.execute(found):
        by_manifest[(manifest_id, org_id, name, version)].add(sha)
    flagged = [
        Flagged(manifest_id, org_id, name, version, sorted(shas))
        for (manifest_id, org_id, name, version), shas in sorted(by_manifest.items(), key=lambda kv: str(kv[0][0]))
    ]
    if not flagged:
        return []
    session.add_all(ModelFlag(takedown_id=takedown_id, manifest_id=f.manifest_id, sha256=f.sha256) for f in flagged)
    await session.flush()
    for f in flagged:
        await audit.record(
            session,
            context,
            "model.flagged",
            org_id=f.org_id,
            target_type="model",
            target_id=f.manifest_id,
            details={"takedown_id": str(takedown_id), "name": f.name, "version": f.version, "sha256": f.sha256},
        )
        await publish(
            session,
            f.org_id,
            EventType.MODEL_FLAGGED,
            ModelFlagEvent(
                model_id=str(f.manifest_id),
                name=f.name,
                version=f.version,
                takedown_id=str(takedown_id),
                sha256=f.sha256,
            ),
        )
    return flagged


def flags_column() -> ColumnElement[object]:
    """The manifest's flags as a JSON array, oldest first: read with the manifest, in the same statement."""
    entry = func.jsonb_build_object(
        "takedown_id", ModelFlag.takedown_id, "flagged_at", ModelFlag.flagged_at, "sha256", ModelFlag.sha256
    )
    return (
        select(
            func.coalesce(
                func.jsonb_agg(aggregate_order_by(entry, ModelFlag.flagged_at, ModelFlag.takedown_id)),
                literal_column("'[]'::jsonb"),
            )
        )
        .where(ModelFlag.manifest_id == ModelManifest.id)
        .scalar_subquery()
    )
