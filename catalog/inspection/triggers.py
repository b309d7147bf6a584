"""The inspection jobs that catalogue changes queue, in the same transaction as the change."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.jobs import Deferred, enqueue_many
from catalog.inspection.models import FileProfileRow, OptOutEvidence
from catalog.models import VersionFile

PROFILE_TASK = "inspection.profile_file"
OPT_OUT_TASK = "inspection.fetch_opt_out_evidence"


async def profile_when_verified(session: AsyncSession, version_id: uuid.UUID) -> int:
    """Once every file of the version is verified, queue a profile of each file not profiled yet (one job per
    file, so free workers share a version's files). Returns how many were queued."""
    pending = await session.scalar(
        select(exists().where(VersionFile.version_id == version_id, VersionFile.status != "verified"))
    )
    if pending:
        return 0
    added = await session.scalars(
        insert(FileProfileRow)
        .from_select(
            ["id", "version_id", "file_id"],
            select(func.gen_random_uuid(), VersionFile.version_id, VersionFile.id).where(
                VersionFile.version_id == version_id
            ),
        )
        .on_conflict_do_nothing(index_elements=["file_id"])
        .returning(FileProfileRow.file_id)
    )
    jobs = [Deferred(PROFILE_TASK, {"file_id": str(file_id)}) for file_id in added]
    await enqueue_many(session, jobs)
    return len(jobs)


async def fetch_opt_out_evidence(
    session: AsyncSession, version_id: uuid.UUID, provenance: dict[str, Any] | None
) -> None:
    """Queue the platform's own fetch of robots.txt and TDMRep for each crawled source that names a URL."""
    rows = [
        OptOutEvidence(version_id=version_id, source_index=index, source=source["name"][:500], url=source["url"])
        for index, source in enumerate((provenance or {}).get("sources", []))
        if source.get("kind") == "public_web_crawl" and source.get("url")
    ]
    if not rows:
        return
    session.add_all(rows)
    await session.flush()
    await enqueue_many(session, [Deferred(OPT_OUT_TASK, {"evidence_id": str(row.id)}) for row in rows])
