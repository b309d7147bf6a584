"""Tampering with the audit chain as a database superuser, detected by verification and the signed checkpoints.

Everything here runs in a private database and bucket created for this module: tampering needs
``ALTER TABLE audit_events DISABLE TRIGGER ALL``, and each scenario runs inside a transaction that is
rolled back afterwards, so the scenarios do not see each other's damage.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import io
import logging
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from litestar.testing import AsyncTestClient
from minio.commonconfig import COMPLIANCE, GOVERNANCE
from minio.error import S3Error
from minio.retention import Retention
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from app.audit import checkpoints
from app.audit import cli as audit_cli
from app.audit.models import AuditEvent
from app.audit.sequencer import sequence_pending
from app.audit.service import (
    SYSTEM,
    AuditContext,
    canonical,
    chain_rows,
    record,
    row_hash,
    verify_chain,
)
from app.auth.keys import KeyRing, SigningKey, load_keyring
from app.auth.tokens import issue_access_token
from app.db import create_engine
from app.main import create_app
from app.migrate import upgrade
from app.objectstore import ObjectStore
from app.settings import Settings
from tests.conftest import Servers, create_database

# Strings that JSON escapes (quotes, backslashes, control characters) or that are easy to mis-encode.
AWKWARD = 'q" b\\ n\n t\t \x07 \x7f \u00e9 \u2028 \U0001f600'


@dataclasses.dataclass
class Private:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    store: ObjectStore
    keyring: KeyRing
    early_checkpoint: int


async def _append(sessionmaker: async_sessionmaker[AsyncSession], count: int, **fields: Any) -> None:
    for i in range(count):
        async with sessionmaker() as session, session.begin():
            await record(
                session,
                AuditContext(actor=f"user:{uuid.uuid4()}", request_id=f"req-{i}", client_addr="192.0.2.7"),
                "test.event",
                org_id=uuid.uuid4(),
                target_type="thing",
                target_id=i,
                details={"i": i, "price": 12.5, "tags": ["a", "b"], "big": 10**20, **fields},
            )
    await _sequence(sessionmaker)


async def _sequence(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as session, session.begin():
        await sequence_pending(session)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def private(servers: Servers, settings: Settings) -> AsyncIterator[Private]:
    name = f"corpora_audit_{secrets.token_hex(4)}"
    url = await create_database(servers.database_url, name)
    await asyncio.to_thread(upgrade, url)
    mine = dataclasses.replace(settings, database_url=url, s3_bucket=f"corpora-audit-{secrets.token_hex(4)}")
    engine = create_engine(url, pool_size=4)
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    store = ObjectStore(mine)
    await store.ensure_bucket()
    keyring = load_keyring(mine)
    await _append(sessionmaker, 5)
    early = await checkpoints.write_checkpoint(mine, sessionmaker, store, keyring)
    assert early is not None
    await _append(sessionmaker, 25, note=AWKWARD)
    async with sessionmaker() as session, session.begin():
        await record(
            session,
            AuditContext(actor=AWKWARD, request_id=None, client_addr=None),
            AWKWARD,
            target_type=None,
            target_id=AWKWARD,
            details={AWKWARD: [AWKWARD, None, True, -0.0, 1e-7, 1e16], "nul": "a\x00b"},
        )
    await _sequence(sessionmaker)
    assert await checkpoints.write_checkpoint(mine, sessionmaker, store, keyring) is not None
    yield Private(mine, engine, sessionmaker, store, keyring, early.seq)
    await engine.dispose()


@contextlib.asynccontextmanager
async def tampering(private: Private) -> AsyncIterator[tuple[AsyncConnection, AsyncSession]]:
    """A superuser transaction with the audit triggers disabled, rolled back at the end."""
    async with private.engine.connect() as connection:
        transaction = await connection.begin()
        try:
            await connection.execute(text("ALTER TABLE audit_events DISABLE TRIGGER ALL"))
            await connection.execute(text("ALTER TABLE audit_tree_nodes DISABLE TRIGGER ALL"))
            async with AsyncSession(bind=connection) as session:
                yield connection, session
        finally:
            await transaction.rollback()


REBUILD_TREE = """
DO $$
DECLARE
    v_frontier bytea := ''::bytea;
    v_event record;
BEGIN
    UPDATE audit_events SET leaf_hash = sha256('\\x00'::bytea || audit_canonical(seq, occurred_at, actor, org_id,
        action, target_type, target_id, request_id, client_addr, details));
    DELETE FROM audit_tree_nodes;
    FOR v_event IN SELECT seq, leaf_hash FROM audit_events ORDER BY seq LOOP
        v_frontier := audit_tree_push(v_event.seq - 1, v_frontier, v_event.leaf_hash);
    END LOOP;
    UPDATE audit_head SET frontier = v_frontier WHERE id = 1;
END
$$
"""


async def rebuild_tree(connection: AsyncConnection) -> None:
    """Rehash the Merkle tree over the events as they now are, as an attacker with the code would."""
    await connection.execute(text(REBUILD_TREE))


async def truncate_after(connection: AsyncConnection, cut: int) -> None:
    """Drop the events after ``cut`` and move the head back to it: a tail removed without a trace in the chain."""
    await connection.execute(text("DELETE FROM audit_events WHERE seq > :cut"), {"cut": cut})
    await connection.execute(
        text("UPDATE audit_head SET seq = :cut, hash = (SELECT hash FROM audit_events WHERE seq = :cut)"),
        {"cut": cut},
    )
    await rebuild_tree(connection)


async def head_of(connection: AsyncConnection) -> int:
    return int((await connection.execute(text("SELECT seq FROM audit_head WHERE id = 1"))).scalar_one())


async def test_intact_chain_verifies_and_matches_the_python_canonical_form(private: Private) -> None:
    async with private.sessionmaker() as session:
        report = await checkpoints.verify(session, private.store, private.keyring, private.settings)
    assert report["ok"] is True, report
    assert report["first_bad_event"] is None
    assert report["checkpoints_checked"] >= 2
    assert report["bad_checkpoints"] == []

    # audit_sequence hashes in SQL; canonical() must produce exactly the same bytes.
    async with private.sessionmaker() as session, session.begin():
        await record(
            session, AuditContext(actor=AWKWARD, request_id="r", client_addr="::1"), "x.y", details={"k": AWKWARD}
        )
    await _sequence(private.sessionmaker)
    async with private.sessionmaker() as session:
        event = (
            await session.scalars(select(AuditEvent).where(AuditEvent.action == "x.y").order_by(AuditEvent.seq))
        ).one()
        details_text = (
            await session.execute(text("SELECT details::text FROM audit_events WHERE seq = :s"), {"s": event.seq})
        ).scalar_one()
    encoded = canonical(
        seq=event.seq,
        occurred_at=event.occurred_at,
        actor=event.actor,
        org_id=event.org_id,
        action=event.action,
        target_type=event.target_type,
        target_id=event.target_id,
        request_id=event.request_id,
        client_addr=event.client_addr,
        details_json=details_text,
    )
    assert hashlib.sha256(event.prev_hash + encoded).digest() == event.hash
    assert encoded.startswith(f'[{event.seq},"'.encode())
    assert event.details == {"k": AWKWARD}


async def test_concurrent_appends_with_rollbacks_leave_no_gaps(private: Private) -> None:
    async def one(i: int) -> None:
        async with private.sessionmaker() as session, session.begin():
            await record(session, SYSTEM, "test.concurrent", target_id=i)
            if i % 3 == 0:
                raise RuntimeError("rolled back after recording")

    async with private.sessionmaker() as session:
        before = int((await session.execute(text("SELECT seq FROM audit_head"))).scalar_one())
    results = await asyncio.gather(*(one(i) for i in range(24)), return_exceptions=True)
    assert sum(isinstance(r, RuntimeError) for r in results) == 8
    await _sequence(private.sessionmaker)
    async with private.sessionmaker() as session:
        seqs = await session.execute(text("SELECT seq FROM audit_events WHERE seq > :b ORDER BY seq"), {"b": before})
        assert [s for (s,) in seqs] == list(range(before + 1, before + 17))
        report = await verify_chain(session)
    assert report.ok, report


async def test_a_modified_row_is_detected(private: Private) -> None:
    for column, value, seq in [
        ("details", "'{\"i\": 999}'::jsonb", 10),
        ("actor", "'user:someone-else'", 12),
        ("occurred_at", "occurred_at + interval '1 second'", 14),
        ("prev_hash", "sha256('x')", 15),
    ]:
        async with tampering(private) as (connection, session):
            await connection.execute(text(f"UPDATE audit_events SET {column} = {value} WHERE seq = {seq}"))  # noqa: S608
            report = await verify_chain(session)
        assert report.ok is False, column
        assert report.first_bad_event == seq, (column, report)
        assert "altered" in (report.problem or ""), report

    # Altered and re-hashed, but the next event still points at the old hash.
    async with tampering(private) as (connection, session):
        row = (await chain_rows(session, after=9, until=10))[0]
        forged = (*tuple(row)[:9], '{"i": 1000}', row[10], b"")
        new_hash = row_hash(forged)
        await connection.execute(
            text("UPDATE audit_events SET details = '{\"i\": 1000}', hash = :h WHERE seq = 10"), {"h": new_hash}
        )
        report = await verify_chain(session)
    assert report.ok is False
    assert report.first_bad_event == 10, report


async def test_a_deleted_row_is_detected(private: Private) -> None:
    async with tampering(private) as (connection, session):
        await connection.execute(text("DELETE FROM audit_events WHERE seq = 10"))
        report = await verify_chain(session)
    assert report.ok is False
    assert report.first_bad_event == 10
    assert "missing" in (report.problem or "")
    assert report.events_checked == 9


@pytest.mark.parametrize("replica", [False, True], ids=["origin", "replica-role"])
async def test_a_recorded_event_leaves_pending_only_by_joining_the_log(private: Private, replica: bool) -> None:
    """Committed, not yet sequenced events are part of the record: they cannot be changed or dropped."""
    async with private.sessionmaker() as session, session.begin():
        await record(session, SYSTEM, "test.pending", target_id=f"kept-{replica}")
    try:
        for *before, statement in (
            ("UPDATE audit_pending SET action = 'forged'",),
            ("DELETE FROM audit_pending",),
            ("TRUNCATE audit_pending",),
            # The sequencer's own mark, set by hand, opens the door to nothing but a delete.
            ("SELECT set_config('corpora.audit_sequencing', 'on', true)", "UPDATE audit_pending SET action = 'forged'"),
        ):
            async with private.engine.connect() as connection:
                if replica:
                    await connection.execute(text("SET session_replication_role = replica"))
                for earlier in before:
                    await connection.exec_driver_sql(earlier)
                with pytest.raises(Exception, match="refused"):
                    await connection.exec_driver_sql(statement)
        async with private.sessionmaker() as session:
            report = await verify_chain(session)
            pending = (await session.execute(text("SELECT action, target_id FROM audit_pending"))).all()
        assert report.ok, report  # not yet sequenced is not a fault
        assert report.pending_events == 1
        assert [tuple(row) for row in pending] == [("test.pending", f"kept-{replica}")]
    finally:
        await _sequence(private.sessionmaker)
    async with private.sessionmaker() as session:
        found = text("SELECT count(*) FROM audit_events WHERE action = 'test.pending' AND target_id = :t")
        assert await session.scalar(found, {"t": f"kept-{replica}"}) == 1
        assert (await verify_chain(session)).pending_events == 0


async def test_reordered_rows_are_detected(private: Private) -> None:
    columns = (
        "occurred_at, actor, org_id, action, target_type, target_id, request_id, client_addr, details, prev_hash, hash"
    )
    async with tampering(private) as (connection, session):
        # Swap the whole content of events 10 and 11; only their positions stay.
        await connection.execute(
            text(
                f"UPDATE audit_events AS a SET ({columns}) = "  # noqa: S608
                f"(SELECT {columns} FROM audit_events AS b WHERE b.seq = CASE a.seq WHEN 10 THEN 11 ELSE 10 END) "
                "WHERE a.seq IN (10, 11)"
            )
        )
        swapped = (
            await connection.execute(text("SELECT seq, target_id FROM audit_events WHERE seq IN (10, 11)"))
        ).all()
        assert sorted(swapped) == [(10, "5"), (11, "4")]
        report = await verify_chain(session)
    assert report.ok is False
    assert report.first_bad_event == 10, report


async def test_a_truncated_tail_is_detected_through_the_checkpoints(private: Private) -> None:
    written = await checkpoints.write_checkpoint(private.settings, private.sessionmaker, private.store, private.keyring)
    assert written is not None
    cut = written.seq - 5
    async with tampering(private) as (connection, session):
        await truncate_after(connection, cut)
        alone = await verify_chain(session)
        report = await checkpoints.verify(session, private.store, private.keyring, private.settings)
    assert alone.ok is True, "the database alone cannot tell: the head was moved back with the tail"
    assert report["ok"] is False
    assert report["first_bad_event"] == cut + 1
    assert "truncated" in report["problem"]

    # Without moving the head back, the head row alone gives it away.
    async with tampering(private) as (connection, session):
        await connection.execute(text("DELETE FROM audit_events WHERE seq > :cut"), {"cut": cut})
        report_head = await verify_chain(session)
    assert report_head.ok is False
    assert report_head.first_bad_event == cut + 1


async def test_a_consistent_rewrite_is_detected_through_the_checkpoints(private: Private) -> None:
    async with tampering(private) as (connection, session):
        head = await head_of(connection)
        await connection.execute(text("UPDATE audit_events SET details = '{\"i\": -1}' WHERE seq = 10"))
        # Recompute every later hash, as an attacker with the code and superuser access would.
        rows = await chain_rows(session, after=0, until=head)
        prev = rows[8][11]
        for row in rows[9:]:
            new = row_hash((*tuple(row)[:10], prev, b""))
            await connection.execute(
                text("UPDATE audit_events SET prev_hash = :p, hash = :h WHERE seq = :s"),
                {"p": prev, "h": new, "s": row[0]},
            )
            prev = new
        await connection.execute(text("UPDATE audit_head SET hash = :h"), {"h": prev})
        await rebuild_tree(connection)
        alone = await verify_chain(session)
        report = await checkpoints.verify(session, private.store, private.keyring, private.settings)
    assert alone.ok is True, "a consistent rewrite passes the chain check on its own"
    assert report["ok"] is False
    assert "rewritten" in report["problem"]
    assert report["last_checkpoint_seq"] == private.early_checkpoint
    assert report["first_bad_event"] == private.early_checkpoint + 1


def _versions(store: ObjectStore, key: str) -> list[Any]:
    return [
        o for o in store.client.list_objects(store.bucket, prefix=key, include_version=True) if o.object_name == key
    ]


async def test_checkpoints_outlive_deletion_by_the_holder_of_the_store_keys(private: Private) -> None:
    store = private.store
    await _append(private.sessionmaker, 1)  # a head no checkpoint covers yet
    written = await checkpoints.write_checkpoint(private.settings, private.sessionmaker, store, private.keyring)
    assert written is not None
    (version,) = await asyncio.to_thread(_versions, store, written.key)
    retention = await asyncio.to_thread(
        store.client.get_object_retention, store.bucket, written.key, version.version_id
    )
    assert retention is not None
    assert retention.mode == COMPLIANCE
    assert retention.retain_until_date is not None
    days = private.settings.audit_retention_days
    assert retention.retain_until_date > dt.datetime.now(dt.UTC) + dt.timedelta(days=days - 1)

    # The stored version cannot be removed, nor its retention shortened.
    with pytest.raises(S3Error) as removing:
        await asyncio.to_thread(store.client.remove_object, store.bucket, written.key, version.version_id)
    assert removing.value.code == "AccessDenied"
    with pytest.raises(S3Error):
        await asyncio.to_thread(
            store.client.set_object_retention,
            store.bucket,
            written.key,
            Retention(GOVERNANCE, dt.datetime.now(dt.UTC) + dt.timedelta(days=1)),
            version.version_id,
        )

    # A plain delete hides it behind a delete marker; verification still finds it, and the truncation it hid.
    await asyncio.to_thread(store.client.remove_object, store.bucket, written.key)
    try:
        assert written.key not in await checkpoints.list_checkpoint_keys(store)
        cut = written.seq - 3
        async with tampering(private) as (connection, session):
            await truncate_after(connection, cut)
            report = await checkpoints.verify(session, store, private.keyring, private.settings)
        assert report["ok"] is False
        assert report["first_bad_event"] == cut + 1
        assert "truncated" in report["problem"]
        assert report["deleted_checkpoints"] == [written.key]
    finally:
        marker = next(v for v in await asyncio.to_thread(_versions, store, written.key) if v.is_delete_marker)
        await asyncio.to_thread(store.client.remove_object, store.bucket, written.key, marker.version_id)
    async with private.sessionmaker() as session:
        intact = await checkpoints.verify(session, store, private.keyring, private.settings)
    assert intact["ok"] is True
    assert intact["deleted_checkpoints"] == []


async def test_a_bucket_without_object_lock_is_reported_at_startup(private: Private) -> None:
    assert await private.store.ensure_bucket() is True
    plain = dataclasses.replace(private.settings, s3_bucket=f"corpora-plain-{secrets.token_hex(4)}")
    store = ObjectStore(plain)
    await asyncio.to_thread(store.client.make_bucket, plain.s3_bucket)  # as an operator might, without lock
    assert await store.ensure_bucket() is False

    # The app's logging setup replaces the root logger's handlers (pytest's among them): listen on ours.
    errors: list[str] = []
    listener = logging.Handler(logging.ERROR)
    listener.emit = lambda record: errors.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("corpora").addHandler(listener)

    async def reported() -> bool:
        return any("has no object lock" in message for message in errors)

    try:
        async with AsyncTestClient(create_app(plain, keyring=private.keyring)):
            await _eventually(reported)
    finally:
        logging.getLogger("corpora").removeHandler(listener)
    assert any("CORPORA_AUDIT_RETENTION_DAYS=0" in message for message in errors)


async def test_a_checkpoint_signed_again_over_a_rewritten_chain_is_caught(private: Private) -> None:
    """Someone rewrites the chain and gets the rewritten head signed under the same key: the object's earlier,
    retained version still vouches for the original."""
    store = private.store
    await _append(private.sessionmaker, 1)
    written = await checkpoints.write_checkpoint(private.settings, private.sessionmaker, store, private.keyring)
    assert written is not None
    resigned = checkpoints.sign_checkpoint(
        private.keyring,
        private.settings.jwt_issuer,
        written.seq,
        hashlib.sha256(b"rewritten").digest(),
        dt.datetime.now(dt.UTC),
    )
    put = await asyncio.to_thread(
        store.client.put_object, store.bucket, written.key, io.BytesIO(resigned.encode()), len(resigned)
    )
    try:
        assert await store.get_bytes(written.key) == resigned.encode()
        async with private.sessionmaker() as session:
            report = await checkpoints.verify(session, store, private.keyring, private.settings)
        assert report["ok"] is False
        assert [b["key"] for b in report["bad_checkpoints"]] == [written.key]
        assert "sign different hashes" in report["bad_checkpoints"][0]["problem"]
    finally:
        await asyncio.to_thread(store.client.remove_object, store.bucket, written.key, put.version_id)


async def test_the_pointer_keeps_one_version(private: Private) -> None:
    for _ in range(3):
        await _append(private.sessionmaker, 1)
        await checkpoints.write_checkpoint(private.settings, private.sessionmaker, private.store, private.keyring)
    assert len(await asyncio.to_thread(_versions, private.store, checkpoints.POINTER_KEY)) == 1


def _forge(keyring: KeyRing, issuer: str, seq: int, digest: bytes, *, kind: str) -> str:
    payload = {"seq": seq, "hash": digest.hex(), "issued_at": "2030-01-01T00:00:00Z", "iss": issuer}
    stranger = Ed25519PrivateKey.generate()
    if kind == "same-kid":
        return jwt.encode(payload, stranger, "EdDSA", headers={"kid": keyring.active.kid, "typ": checkpoints.JWS_TYPE})
    if kind == "unknown-kid":
        return jwt.encode(payload, stranger, "EdDSA", headers={"kid": "not-ours", "typ": checkpoints.JWS_TYPE})
    if kind == "hs256":
        secret = keyring.active.jwk()["x"]
        return jwt.encode(payload, secret, "HS256", headers={"kid": keyring.active.kid, "typ": checkpoints.JWS_TYPE})
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("same-kid", "signature does not verify"), ("unknown-kid", "unknown key"), ("hs256", "not accepted")],
)
async def test_a_forged_checkpoint_is_reported(private: Private, kind: str, reason: str) -> None:
    async with private.sessionmaker() as session:
        head = int((await session.execute(text("SELECT seq FROM audit_head"))).scalar_one())
        digest = (await session.execute(text("SELECT hash FROM audit_head"))).scalar_one()
    seq = head + 1000  # a checkpoint claiming events that never existed
    key = checkpoints.checkpoint_key(seq)
    await private.store.put_bytes(
        key, _forge(private.keyring, private.settings.jwt_issuer, seq, digest, kind=kind).encode()
    )
    try:
        async with private.sessionmaker() as session:
            report = await checkpoints.verify(session, private.store, private.keyring, private.settings)
        assert report["ok"] is False
        assert [b["key"] for b in report["bad_checkpoints"]] == [key]
        assert reason in report["bad_checkpoints"][0]["problem"]
        assert reason in report["problem"]
        # A forged checkpoint is not used: it neither vouches for nor condemns the chain.
        assert report["first_bad_event"] is None
    finally:
        await private.store.delete(key)


async def test_checkpoint_parsing_rejects_what_it_must(private: Private) -> None:
    keyring, issuer = private.keyring, private.settings.jwt_issuer
    good = checkpoints.sign_checkpoint(keyring, issuer, 7, bytes(range(32)), dt.datetime.now(dt.UTC))
    parsed = checkpoints.parse_checkpoint(keyring, issuer, checkpoints.checkpoint_key(7), good)
    assert (parsed.seq, parsed.hash, parsed.kid) == (7, bytes(range(32)), keyring.active.kid)
    with pytest.raises(checkpoints.CheckpointInvalid, match="signed for event 7"):
        checkpoints.parse_checkpoint(keyring, issuer, checkpoints.checkpoint_key(8), good)
    with pytest.raises(checkpoints.CheckpointInvalid, match="rejected"):
        checkpoints.parse_checkpoint(keyring, "someone-else", checkpoints.checkpoint_key(7), good)
    unsigned = jwt.encode({"seq": 7}, "", "none", headers={"typ": checkpoints.JWS_TYPE})
    with pytest.raises(checkpoints.CheckpointInvalid, match="not accepted"):
        checkpoints.parse_checkpoint(keyring, issuer, checkpoints.checkpoint_key(7), unsigned)
    # A rotated-out key still verifies the checkpoints it signed.
    old = SigningKey(kid="old-key", private=Ed25519PrivateKey.generate())
    by_old = checkpoints.sign_checkpoint(KeyRing((old,)), issuer, 7, bytes(32), dt.datetime.now(dt.UTC))
    rotated = KeyRing((keyring.active, old))
    assert checkpoints.parse_checkpoint(rotated, issuer, checkpoints.checkpoint_key(7), by_old).kid == "old-key"


async def _keys(store: ObjectStore) -> set[str]:
    return set(await checkpoints.list_checkpoint_keys(store))


async def _head(private: Private) -> int:
    async with private.sessionmaker() as session:
        return int((await session.execute(text("SELECT seq FROM audit_head"))).scalar_one())


async def _eventually(predicate: Any, within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_checkpointer_writes_by_event_count_and_on_shutdown(private: Private) -> None:
    settings = dataclasses.replace(
        private.settings, audit_checkpoint_every_events=3, audit_checkpoint_every_seconds=3600
    )
    workers = [
        asyncio.create_task(
            checkpoints.run_checkpointer(
                settings, private.sessionmaker, private.store, private.keyring, poll_seconds=0.05
            )
        )
        for _ in range(2)  # two server processes: the advisory lock lets one write at a time
    ]
    try:
        await _append(private.sessionmaker, 3)
        head = await _head(private)

        async def covered() -> bool:
            return checkpoints.checkpoint_key(head) in await _keys(private.store)

        await _eventually(covered)
        await _append(private.sessionmaker, 1)  # not due: fewer than 3 events since
        before = await _keys(private.store)
        await asyncio.sleep(0.4)
        assert await _keys(private.store) == before
        assert not any(w.done() for w in workers)
    finally:
        for worker in workers:
            worker.cancel()
        results = await asyncio.wait_for(asyncio.gather(*workers, return_exceptions=True), 10)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    # Cancelled with one event pending: a last checkpoint covers it.
    assert checkpoints.checkpoint_key(await _head(private)) in await _keys(private.store)


async def test_checkpointer_writes_by_time(private: Private) -> None:
    settings = dataclasses.replace(
        private.settings, audit_checkpoint_every_events=1000, audit_checkpoint_every_seconds=1
    )
    await _append(private.sessionmaker, 1)
    head = await _head(private)
    worker = asyncio.create_task(
        checkpoints.run_checkpointer(settings, private.sessionmaker, private.store, private.keyring, poll_seconds=0.05)
    )
    try:

        async def covered() -> bool:
            return checkpoints.checkpoint_key(head) in await _keys(private.store)

        await _eventually(covered, within=4)
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)


async def test_checkpointer_signs_a_log_that_has_no_checkpoint_yet_at_once(private: Private) -> None:
    """A new deployment's first checkpoint does not wait for the interval: auditors can check the log within
    seconds of its first events."""
    fresh = dataclasses.replace(private.settings, s3_bucket=f"corpora-audit-{secrets.token_hex(4)}")
    store = ObjectStore(fresh)
    await store.ensure_bucket()
    settings = dataclasses.replace(fresh, audit_checkpoint_every_events=10**6, audit_checkpoint_every_seconds=3600)
    head = await _head(private)
    worker = asyncio.create_task(
        checkpoints.run_checkpointer(settings, private.sessionmaker, store, private.keyring, poll_seconds=0.05)
    )
    try:

        async def covered() -> bool:
            return checkpoints.checkpoint_key(head) in await _keys(store)

        await _eventually(covered, within=4)
        await _append(private.sessionmaker, 1)  # the interval applies from the first checkpoint on
        await asyncio.sleep(0.4)
        assert await _keys(store) == {checkpoints.checkpoint_key(head)}
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)


async def test_checkpointer_survives_outages_and_stops_when_cancelled(
    private: Private, caplog: pytest.LogCaptureFixture
) -> None:
    dead_store = ObjectStore(dataclasses.replace(private.settings, s3_endpoint="http://127.0.0.1:9"))
    dead_engine = create_engine("postgresql://nobody@127.0.0.1:9/none", pool_size=1)
    settings = dataclasses.replace(private.settings, audit_checkpoint_every_events=1)
    await _append(private.sessionmaker, 1)
    caplog.set_level(logging.WARNING, logger="corpora.audit")
    workers = [
        asyncio.create_task(
            checkpoints.run_checkpointer(settings, private.sessionmaker, dead_store, private.keyring, poll_seconds=0.05)
        ),
        asyncio.create_task(
            checkpoints.run_checkpointer(
                settings, async_sessionmaker(dead_engine), private.store, private.keyring, poll_seconds=0.05
            )
        ),
    ]
    try:
        await asyncio.sleep(0.7)
        assert not any(w.done() for w in workers), "an outage must not end the checkpointer"
        failures = [r.getMessage() for r in caplog.records if "audit checkpoint failed" in r.getMessage()]
        assert any("ObjectStoreUnavailable" in m for m in failures), failures
        assert len(failures) >= 2
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.wait_for(asyncio.gather(*workers, return_exceptions=True), 15)
        await dead_engine.dispose()
    assert all(w.cancelled() for w in workers)


async def test_forged_checkpoint_over_http(private: Private) -> None:
    """The endpoints of an app on the private database report a checkpoint signed by another key."""
    token = issue_access_token(
        private.keyring,
        user_id=uuid.uuid4(),
        platform_roles=["auditor"],
        issuer=private.settings.jwt_issuer,
        audience=private.settings.jwt_audience,
        ttl_seconds=300,
    )
    headers = {"Authorization": f"Bearer {token}"}
    key = checkpoints.checkpoint_key(1)
    forged = _forge(private.keyring, private.settings.jwt_issuer, 1, bytes(32), kind="same-kid")
    await private.store.put_bytes(key, forged.encode())
    app = create_app(private.settings, keyring=private.keyring)
    try:
        async with AsyncTestClient(app=app, base_url="http://testserver.local") as client:
            verified = await client.get("/api/v1/audit/verify", headers=headers)
            assert verified.status_code == 200
            body = verified.json()
            assert body["ok"] is False
            assert body["bad_checkpoints"][0]["key"] == key
            listed = await client.get("/api/v1/audit/checkpoints", headers=headers)
            reported = next(item for item in listed.json()["items"] if item["key"] == key)
            assert reported["valid"] is False
            assert reported["seq"] == 1
            assert reported["jws"] == forged
            assert "signature" in reported["problem"]
            assert any(item["valid"] for item in listed.json()["items"])
    finally:
        await private.store.delete(key)


async def test_cli_verify_answers_like_the_endpoint(private: Private) -> None:
    report = await audit_cli.verify(private.settings)
    assert report["ok"] is True, report
    assert set(report) >= {"ok", "events_checked", "head_hash", "first_bad_event", "problem", "checkpoints_checked"}
    assert report["events_checked"] == await _head(private)
    await _append(private.sessionmaker, 1)
    anchored = await audit_cli.verify(private.settings, checkpoint=True)
    assert anchored["ok"] is True
    assert anchored["checkpoint_written"] == checkpoints.checkpoint_key(await _head(private))


async def test_an_altered_leaf_hash_stored_subtree_or_frontier_is_detected(private: Private) -> None:
    async with private.sessionmaker() as session:
        head = int((await session.execute(text("SELECT seq FROM audit_head"))).scalar_one())
    if head < 64:
        await _append(private.sessionmaker, 64 - head)
    async with tampering(private) as (connection, session):
        await connection.execute(text("UPDATE audit_events SET leaf_hash = sha256('x') WHERE seq = 12"))
        report = await verify_chain(session)
    assert report.ok is False
    assert report.first_bad_event == 12, report
    assert "leaf hash" in (report.problem or "")

    async with tampering(private) as (connection, session):
        await connection.execute(text("UPDATE audit_tree_nodes SET hash = sha256('x') WHERE level = 6 AND idx = 0"))
        report = await verify_chain(session)
    assert report.ok is False
    assert report.first_bad_event == 1, report
    assert "subtree of events 1..64" in (report.problem or "")

    async with tampering(private) as (connection, session):
        await connection.execute(text("UPDATE audit_head SET frontier = substr(frontier, 33) || sha256('x')"))
        report = await verify_chain(session)
    assert report.ok is False
    assert "frontier" in (report.problem or "")
