"""The job that keeps withdrawn content for the record: its stored objects go under legal hold."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import select

from app.audit import service as audit
from app.jobs import JobDeps, job
from catalog.uploads import blob_key
from licensing.takedowns.models import Takedown
from licensing.takedowns.service import HOLD_TASK

log = logging.getLogger("corpora.licensing")


@job(HOLD_TASK)
async def hold_withdrawn(deps: JobDeps, *, takedown_id: str) -> None:
    """Hold every object the upheld takedown withdrew. Never served again either way (grants and proxied
    downloads refuse it); where the bucket has no object lock the object is only kept, and that is recorded."""
    async with deps.sessionmaker() as session:
        found = await session.execute(
            select(Takedown.sha256, Takedown.provider_org_id).where(Takedown.id == uuid.UUID(takedown_id))
        )
        digests, provider_org_id = found.one()
    held = {sha: await deps.store.hold(blob_key(sha)) for sha in digests}
    async with deps.sessionmaker() as session, session.begin():
        await audit.record(
            session,
            audit.SYSTEM,
            "takedown.content_held",
            org_id=provider_org_id,
            target_type="takedown",
            target_id=takedown_id,
            details={
                "legal_hold": sorted(sha for sha, on in held.items() if on),
                "kept_without_hold": sorted(sha for sha, on in held.items() if not on),
            },
        )
    if not all(held.values()):
        log.warning(
            "takedown %s: the bucket has no object lock; withdrawn objects are kept without legal hold", takedown_id
        )
