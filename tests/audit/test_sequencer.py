"""Recording an audit event locks nothing shared; the sequencer puts committed events into the log exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest_asyncio
from alembic import command
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.audit.sequencer import run_sequencer, sequence_pending
from app.audit.service import SYSTEM, AuditContext, content_digest, record, verify_chain
from app.db import create_engine
from app.migrate import alembic_config
from app.settings import Settings
from tests.conftest import Servers, asyncpg_dsn, create_database, sequence_audit
from tests.licensing.helpers import download_body, market

# Generous bounds for "does not block" and "happens on its own": a blocked commit would wait forever.
NOT_BLOCKED_SECONDS = 20


@pytest_asyncio.fixture(loop_scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    assert settings.database_url is not None
    engine = create_engine(settings.database_url, pool_size=12)
    yield engine
    await engine.dispose()


@contextlib.asynccontextmanager
async def head_locked(settings: Settings) -> AsyncIterator[None]:
    """A transaction holding the chain head's row lock, as a sequencing batch does, until the block ends."""
    assert settings.database_url is not None
    connection = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    try:
        async with connection.transaction():
            await connection.execute("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE")
            yield
    finally:
        await connection.close()


class _RolledBack(Exception):
    pass


async def _record_and_commit(sessionmaker: async_sessionmaker[AsyncSession], target: str, *, rollback: bool) -> None:
    with contextlib.suppress(_RolledBack):
        async with sessionmaker() as session, session.begin():
            await record(session, SYSTEM, "test.sequenced", target_type="thing", target_id=target)
            await session.flush()
            if rollback:
                raise _RolledBack


async def test_transactions_that_record_events_commit_while_the_chain_head_is_locked(
    engine: AsyncEngine, settings: Settings, db: asyncpg.Connection
) -> None:
    """Neither a held-open transaction that recorded an event nor a sequencer holding the head delays the commits
    of other transactions that record events: recording locks nothing they share."""
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    targets = [f"unblocked-{uuid.uuid4()}" for _ in range(10)]
    async with sessionmaker() as held:  # autobegun by the record, rolled back at the end
        await record(held, SYSTEM, "test.sequenced", target_id="held-open")
        async with head_locked(settings):
            await asyncio.wait_for(
                asyncio.gather(*(_record_and_commit(sessionmaker, t, rollback=False) for t in targets)),
                NOT_BLOCKED_SECONDS,
            )
            committed = await db.fetchval("SELECT count(*) FROM audit_pending WHERE target_id = ANY($1)", targets)
            assert committed == len(targets)
        await held.rollback()
    await sequence_audit(db)
    sequenced = await db.fetchval("SELECT count(*) FROM audit_events WHERE target_id = ANY($1)", targets)
    assert sequenced == len(targets)
    assert await db.fetchval("SELECT count(*) FROM audit_events WHERE target_id = 'held-open'") == 0


async def test_a_grant_commits_while_the_chain_head_is_locked(
    client: AsyncTestClient[Any], db: asyncpg.Connection, settings: Settings
) -> None:
    """The hottest write: a grant records its event without waiting for the head (it used to append directly)."""
    m = await market(client, db)
    async with head_locked(settings):
        granted = await asyncio.wait_for(
            client.post("/api/v1/downloads", json=download_body(m, "data/a.txt"), headers=m.buyer.headers),
            NOT_BLOCKED_SECONDS,
        )
    assert granted.status_code == 201, granted.text
    await sequence_audit(db)
    event = await db.fetchrow(
        "SELECT actor, org_id, action, target_type, target_id, request_id, client_addr, details::text AS details"
        " FROM audit_events WHERE action = 'download.granted' AND target_id = $1",
        granted.json()["download_id"],
    )
    assert event is not None
    # the receipt's digest, as the database computed it at the grant, equals the Python form of the event
    stored = await db.fetchval(
        "SELECT audit_hash FROM download_grants WHERE id = $1", uuid.UUID(granted.json()["download_id"])
    )
    fields = {k: v for k, v in event.items() if k != "details"}
    assert stored == content_digest(**fields, details_json=event["details"]).hex()


async def test_concurrent_sequencers_put_every_committed_event_in_the_log_once_and_rolled_back_ones_never(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    await sequence_audit(db)
    before = await db.fetchval("SELECT seq FROM audit_head")
    # Two background sequencers (two processes' worth) and explicit batches, all racing the commits.
    sequencers = [asyncio.create_task(run_sequencer(engine, every_seconds=0.005, limit=7)) for _ in range(2)]
    try:
        targets = [f"seq-{i}-{uuid.uuid4()}" for i in range(60)]
        rolled_back = {t for i, t in enumerate(targets) if i % 4 == 0}

        async def explicit() -> None:
            for _ in range(10):
                async with sessionmaker() as session, session.begin():
                    await sequence_pending(session, limit=5)
                await asyncio.sleep(0.01)

        await asyncio.gather(
            *(_record_and_commit(sessionmaker, t, rollback=t in rolled_back) for t in targets), explicit()
        )
        deadline = asyncio.get_running_loop().time() + NOT_BLOCKED_SECONDS
        while await db.fetchval("SELECT count(*) FROM audit_pending WHERE target_id = ANY($1)", targets):
            assert asyncio.get_running_loop().time() < deadline, "the background sequencers stopped sequencing"
            await asyncio.sleep(0.02)
    finally:
        for task in sequencers:
            task.cancel()
        await asyncio.gather(*sequencers, return_exceptions=True)
    rows = await db.fetch(
        "SELECT target_id, count(*) AS n FROM audit_events WHERE target_id = ANY($1) GROUP BY 1", targets
    )
    assert {r["target_id"]: r["n"] for r in rows} == {t: 1 for t in targets if t not in rolled_back}
    seqs = [r["seq"] for r in await db.fetch("SELECT seq FROM audit_events WHERE seq > $1 ORDER BY seq", before)]
    assert seqs == list(range(before + 1, before + 1 + len(seqs))), "gaps or duplicates"
    times = [r["occurred_at"] for r in await db.fetch("SELECT occurred_at FROM audit_events ORDER BY seq")]
    assert times == sorted(times), "occurred_at decreases along the chain"
    async with sessionmaker() as session:
        report = await verify_chain(session)
    assert report.ok, report
    assert report.tree_size == report.head_seq >= before + len(targets) - len(rolled_back)


async def test_the_sequencer_reconnects_after_its_connection_is_killed(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    """A failover or a partition closes the sequencer's connection: it takes a new one and goes on sequencing."""
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    application = f"sequencer-{uuid.uuid4().hex[:8]}"
    sequencer = asyncio.create_task(run_sequencer(engine, every_seconds=0.01))
    try:
        for round_ in range(2):
            target = f"reconnect-{round_}-{uuid.uuid4()}"
            await _record_and_commit(sessionmaker, target, rollback=False)
            deadline = asyncio.get_running_loop().time() + NOT_BLOCKED_SECONDS
            while not await db.fetchval("SELECT count(*) FROM audit_events WHERE target_id = $1", target):
                assert asyncio.get_running_loop().time() < deadline, f"round {round_}: nothing was sequenced"
                await asyncio.sleep(0.02)
            # Every connection that is polling the sequencer's statement is killed, as a failover would.
            killed = await db.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE query LIKE '%audit_sequence(%' AND pid <> pg_backend_pid() AND application_name <> $1",
                application,
            )
            assert round_ == 1 or killed >= 1
    finally:
        sequencer.cancel()
        await asyncio.gather(sequencer, return_exceptions=True)


async def test_the_content_digest_is_the_same_in_sql_and_in_python(engine: AsyncEngine) -> None:
    awkward = 'q" b\\ n\n t\t \x07 \u00e9 \u2028 \U0001f600'
    context = AuditContext(actor=awkward, request_id=None, client_addr="::1")
    org = uuid.uuid4()
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    async with sessionmaker() as session, session.begin():
        await record(session, context, "x.digest", org_id=org, target_id=awkward, details={awkward: [1.5, None]})
        row = (
            await session.execute(
                text(
                    "SELECT actor, org_id, action, target_type, target_id, request_id, client_addr, details::text,"
                    " audit_content_digest(actor, org_id, action, target_type, target_id, request_id, client_addr,"
                    " details) FROM audit_pending WHERE action = 'x.digest' AND org_id = :org"
                ),
                {"org": org},
            )
        ).one()
        await session.rollback()
    actor, org_id, action, target_type, target_id, request_id, client_addr, details, digest = row
    assert digest == content_digest(
        actor=actor,
        org_id=org_id,
        action=action,
        target_type=target_type,
        target_id=target_id,
        request_id=request_id,
        client_addr=client_addr,
        details_json=details,
    )


async def test_a_chain_from_before_sequencing_stays_valid_and_grows_after_migrating(servers: Servers) -> None:
    """Events chained at commit by migration 0006's trigger, then 0021: the old chain verifies and new events follow
    it; downgrading chains what is still pending first."""
    url = await create_database(servers.database_url, f"corpora_migrate_{secrets.token_hex(4)}")
    await asyncio.to_thread(command.upgrade, alembic_config(url), "0020")
    connection = await asyncpg.connect(asyncpg_dsn(url))
    engine = create_engine(url, pool_size=2)
    try:
        for i in range(70):  # past one stored 64-leaf subtree
            await connection.execute(
                "INSERT INTO audit_pending (actor, action, target_id, details)"
                " VALUES ('system', 'old.event', $1, '{}')",
                str(i),
            )
        assert await connection.fetchval("SELECT seq FROM audit_head") == 70
        await asyncio.to_thread(command.upgrade, alembic_config(url), "head")
        sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        for i in range(5):
            await _record_and_commit(sessionmaker, f"new-{i}", rollback=False)
        assert await connection.fetchval("SELECT seq FROM audit_head") == 70
        assert await sequence_audit(connection) == 5
        async with sessionmaker() as session:
            report = await verify_chain(session)
        assert report.ok, report
        assert report.head_seq == report.tree_size == 75
        times = [r["occurred_at"] for r in await connection.fetch("SELECT occurred_at FROM audit_events ORDER BY seq")]
        assert times == sorted(times)
        await _record_and_commit(sessionmaker, "pending-at-downgrade", rollback=False)
        await asyncio.to_thread(command.downgrade, alembic_config(url), "0020")
        assert await connection.fetchval("SELECT seq FROM audit_head") == 76
        assert await connection.fetchval("SELECT count(*) FROM audit_pending") == 0
    finally:
        await connection.close()
        await engine.dispose()
