"""The inspection jobs that catalogue changes queue, in the same transaction as the change."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.jobs import Deferred, enqueue_many
from catalog.inspection.models import FileProfileRow, OptOutEvidence
from catalog.models import VersionFile

PROFILE_TASK = "inspection.profile_files"
SINGLE_PROFILE_TASK = "inspection.profile_file"  # one file per job, as an earlier release queued them
# A profile job takes files until they hold this many bytes or number this many; a larger file goes alone. Small
# files share a job (each job and transaction costs more than profiling a small file); large ones still spread
# over every free worker.
BATCH_BYTES = 16 * 1024 * 1024
BATCH_FILES = 100
OPT_OUT_TASK = "inspection.fetch_opt_out_evidence"


async def profile_when_verified(session: AsyncSession, version_id: uuid.UUID) -> int:
    """Once every file of the version is verified, queue profiles of the files not profiled yet, in batches (see
    ``BATCH_BYTES``), so free workers share a version's files. Returns how many files were queued."""
    pending = await session.scalar(
        select(exists().where(VersionFile.version_id == version_id, VersionFile.status != "verified"))
    )
    if pending:
        return 0
    added = set(
        await session.scalars(
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
    )
    if not added:
        return 0
    sizes = (
        await session.execute(
            select(VersionFile.id, VersionFile.size)
            .where(VersionFile.version_id == version_id)
            .order_by(VersionFile.size, VersionFile.path)
        )
    ).all()
    await enqueue_many(session, [Deferred(PROFILE_TASK, {"file_ids": batch}) for batch in _batches(sizes, added)])
    return len(added)


def _batches(sizes: Sequence[Any], added: set[uuid.UUID]) -> list[list[str]]:
    batches: list[list[str]] = []
    batch: list[str] = []
    held = 0
    for file_id, size in sizes:
        if file_id not in added:
            continue
        if batch and (held + size > BATCH_BYTES or len(batch) == BATCH_FILES):
            batches.append(batch)
            batch, held = [], 0
        batch.append(str(file_id))
        held += size
    if batch:
        batches.append(batch)
    return batches


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
