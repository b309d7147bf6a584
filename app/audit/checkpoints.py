"""Signed checkpoints of the audit chain head, written to the object store.

A checkpoint is an Ed25519 JWS (``alg: EdDSA``, ``kid`` of the signing key, ``typ`` below) over
``{"seq", "hash", "head_hash", "tree_size", "root_hash", "issued_at", "iss"}``: the chain head (``hash`` and
``head_hash`` are the same value) and the Merkle tree of the same events (``tree_size == seq``), stored at
``audit/checkpoints/<seq, zero-padded to 20 digits>.jws``. Because the database never holds the signing
key's output alone, a rewrite or truncation of the ``audit_events`` table is detected by comparing the
recomputed chain with these objects.

Every server process runs :func:`run_checkpointer`; a PostgreSQL advisory lock lets one write at a time,
and writing the same ``seq`` twice only replaces an object with an equivalent one. A small pointer object
(``audit/checkpoint-latest.json``) tells the processes when the last checkpoint was written; it only
schedules work and is never trusted by verification.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import itertools
import json
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import anyio.to_thread
import jwt
import urllib3
from minio.error import S3Error
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.merkle import root_from_frontier
from app.audit.models import AuditHead
from app.audit.service import verify_chain
from app.auth.keys import ALGORITHM, KeyRing
from app.db import utcnow
from app.objectstore import ObjectStore, ObjectStoreUnavailable
from app.settings import Settings

log = logging.getLogger("corpora.audit")

PREFIX = "audit/checkpoints/"
POINTER_KEY = "audit/checkpoint-latest.json"
JWS_TYPE = "corpora-audit-checkpoint+jwt"
MEDIA_TYPE = "application/jose"
POLL_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
FETCH_CONCURRENCY = 16
_KEY_PATTERN = re.compile(r"^audit/checkpoints/(\d{20})\.jws$")
# One advisory lock key for "writing a checkpoint", derived from a name so it cannot collide by accident.
ADVISORY_LOCK_KEY = int.from_bytes(hashlib.sha256(b"corpora.audit.checkpoint").digest()[:8], "big", signed=True)


def checkpoint_key(seq: int) -> str:
    return f"{PREFIX}{seq:020d}.jws"


def seq_from_key(key: str) -> int | None:
    match = _KEY_PATTERN.match(key)
    return int(match.group(1)) if match else None


@dataclasses.dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    hash: bytes
    issued_at: str
    kid: str
    key: str
    jws: str
    root_hash: bytes | None = None  # None for checkpoints signed before the log had a tree

    @property
    def tree_size(self) -> int | None:
        return self.seq if self.root_hash is not None else None


@dataclasses.dataclass(frozen=True, slots=True)
class BadCheckpoint:
    key: str
    problem: str
    jws: str | None = None


class CheckpointInvalid(Exception):
    """A checkpoint object whose signature, key, algorithm or content is not acceptable."""


def _timestamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def sign_checkpoint(
    keyring: KeyRing,
    issuer: str,
    seq: int,
    head_hash: bytes,
    issued_at: dt.datetime,
    root_hash: bytes | None = None,
) -> str:
    """The compact JWS of a checkpoint; without ``root_hash``, of the chain alone (as before the tree)."""
    key = keyring.active
    payload: dict[str, Any] = {"seq": seq, "hash": head_hash.hex(), "issued_at": _timestamp(issued_at), "iss": issuer}
    if root_hash is not None:
        payload |= {"head_hash": head_hash.hex(), "tree_size": seq, "root_hash": root_hash.hex()}
    return jwt.encode(payload, key.private, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": JWS_TYPE})


def parse_checkpoint(keyring: KeyRing, issuer: str, key: str, token: str) -> Checkpoint:
    """Verify one checkpoint's signature against the key ring; raise :class:`CheckpointInvalid` if it fails."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise CheckpointInvalid(f"not a JWS: {exc}") from None
    if header.get("alg") != ALGORITHM:
        raise CheckpointInvalid(f"algorithm {header.get('alg')!r} is not accepted; checkpoints are {ALGORITHM}")
    if header.get("typ") != JWS_TYPE:
        raise CheckpointInvalid(f"type {header.get('typ')!r} is not an audit checkpoint")
    kid = header.get("kid")
    public = keyring.public_key(kid) if isinstance(kid, str) else None
    if public is None or not isinstance(kid, str):
        raise CheckpointInvalid(f"signed with an unknown key (kid {kid!r})")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            public,
            algorithms=[ALGORITHM],
            issuer=issuer,
            options={"require": ["seq", "hash", "issued_at", "iss"], "verify_aud": False},
        )
    except jwt.InvalidSignatureError:
        raise CheckpointInvalid(f"the signature does not verify with key {kid}") from None
    except jwt.PyJWTError as exc:
        raise CheckpointInvalid(f"rejected: {exc}") from None
    seq, digest, issued_at = claims["seq"], claims["hash"], claims["issued_at"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise CheckpointInvalid("seq is not a positive integer")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise CheckpointInvalid("hash is not 64 lowercase hex digits")
    if not isinstance(issued_at, str):
        raise CheckpointInvalid("issued_at is not a string")
    if key != checkpoint_key(seq):
        raise CheckpointInvalid(f"stored as {key} but signed for event {seq}")
    root = claims.get("root_hash")
    if root is not None or "tree_size" in claims:
        if claims.get("tree_size") != seq or claims.get("head_hash") != digest:
            raise CheckpointInvalid("tree_size and head_hash must repeat seq and hash")
        if not isinstance(root, str) or not re.fullmatch(r"[0-9a-f]{64}", root):
            raise CheckpointInvalid("root_hash is not 64 lowercase hex digits")
    return Checkpoint(
        seq=seq,
        hash=bytes.fromhex(digest),
        issued_at=issued_at,
        kid=kid,
        key=key,
        jws=token,
        root_hash=bytes.fromhex(root) if isinstance(root, str) else None,
    )


async def _in_thread(fn: Any) -> Any:
    try:
        return await anyio.to_thread.run_sync(fn)
    except S3Error:
        raise
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise ObjectStoreUnavailable(str(exc)) from exc


async def list_checkpoint_keys(
    store: ObjectStore, *, start_after: str | None = None, limit: int | None = None
) -> list[str]:
    """Checkpoint object keys in ``seq`` order (the keys sort by it), after ``start_after``; at most ``limit``."""

    def names() -> list[str]:
        listing = store.client.list_objects(store.bucket, prefix=PREFIX, recursive=True, start_after=start_after)
        keys = (o.object_name for o in listing if o.object_name and o.object_name.endswith(".jws"))
        return list(keys if limit is None else itertools.islice(keys, limit))

    keys: list[str] = await _in_thread(names)
    return keys


async def list_stored_checkpoints(store: ObjectStore) -> tuple[list[tuple[str, str | None]], list[str]]:
    """Every stored version of every checkpoint as (key, version id), deleted ones included, and the keys that
    were deleted. A delete only hides a checkpoint behind a delete marker: its retained version is still
    there, and still counts."""

    def versions() -> tuple[list[tuple[str, str | None]], list[str]]:
        stored: list[tuple[str, str | None]] = []
        deleted: list[str] = []
        for o in store.client.list_objects(store.bucket, prefix=PREFIX, recursive=True, include_version=True):
            if not o.object_name or not o.object_name.endswith(".jws"):
                continue
            if not o.is_delete_marker:
                stored.append((o.object_name, o.version_id))
            elif o.is_latest == "true":
                deleted.append(o.object_name)
        return stored, deleted

    listed: tuple[list[tuple[str, str | None]], list[str]] = await _in_thread(versions)
    return listed


async def read_checkpoints(
    store: ObjectStore, keyring: KeyRing, issuer: str, objects: Sequence[tuple[str, str | None]]
) -> tuple[list[Checkpoint], list[BadCheckpoint]]:
    """Fetch and verify ``objects`` (key, version id or ``None`` for the current one); the valid checkpoints in
    ``seq`` order, and the rejected ones."""
    limit = asyncio.Semaphore(FETCH_CONCURRENCY)

    async def fetch(key: str, version_id: str | None) -> Checkpoint | BadCheckpoint:
        async with limit:
            try:
                body = await store.get_bytes(key, version_id)
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchVersion"):  # removed between listing and reading
                    return BadCheckpoint(key, "listed but could not be read (deleted?)")
                raise
        token = body.decode("utf-8", errors="replace").strip()
        if not _KEY_PATTERN.match(key):
            return BadCheckpoint(key, "not named audit/checkpoints/<20-digit seq>.jws", token)
        try:
            return parse_checkpoint(keyring, issuer, key, token)
        except CheckpointInvalid as exc:
            return BadCheckpoint(key, str(exc), token)

    results = await asyncio.gather(*(fetch(key, version_id) for key, version_id in objects))
    good = sorted((r for r in results if isinstance(r, Checkpoint)), key=lambda c: c.seq)
    bad = [r for r in results if isinstance(r, BadCheckpoint)]
    return good, bad


@dataclasses.dataclass(slots=True)
class StoredCheckpoints:
    signed: dict[int, bytes]  # seq -> hash, from every valid version
    roots: dict[int, bytes]  # tree_size -> root_hash, from every valid version that signs the tree
    bad: list[BadCheckpoint]
    deleted: list[str]  # keys hidden behind a delete marker
    found: int  # versions read


async def load_checkpoints(store: ObjectStore, keyring: KeyRing, issuer: str) -> StoredCheckpoints:
    """Every checkpoint version in the store, verified."""
    stored, deleted = await list_stored_checkpoints(store)
    good, bad = await read_checkpoints(store, keyring, issuer, stored)
    signed: dict[int, bytes] = {}
    roots: dict[int, bytes] = {}
    conflicting: dict[int, Checkpoint] = {}
    for checkpoint in good:
        if signed.setdefault(checkpoint.seq, checkpoint.hash) != checkpoint.hash:
            conflicting[checkpoint.seq] = checkpoint
        if checkpoint.root_hash is not None and roots.setdefault(checkpoint.seq, checkpoint.root_hash) != (
            checkpoint.root_hash
        ):
            conflicting[checkpoint.seq] = checkpoint
    # Each version carries our signature: the chain was rewritten, then checkpointed again over the old object.
    bad += [
        BadCheckpoint(
            c.key,
            f"its versions sign different hashes for event {c.seq}: the chain was rewritten after it was checkpointed",
            c.jws,
        )
        for c in conflicting.values()
    ]
    return StoredCheckpoints(signed, roots, bad, deleted, found=len(stored))


async def verify(session: AsyncSession, store: ObjectStore, keyring: KeyRing, settings: Settings) -> dict[str, Any]:
    """The chain recomputed and compared with every signed checkpoint; a rejected checkpoint is a failure.

    The checkpoints are read first, so each covers an event committed before the chain head is read.
    """
    stored = await load_checkpoints(store, keyring, settings.jwt_issuer)
    started = time.perf_counter()
    report = dataclasses.asdict(await verify_chain(session, stored.signed, roots=stored.roots))
    report["seconds"] = round(time.perf_counter() - started, 3)
    report["checkpoints_found"] = stored.found
    report["bad_checkpoints"] = [{"key": b.key, "problem": b.problem} for b in stored.bad]
    report["deleted_checkpoints"] = stored.deleted
    if stored.bad and report["ok"]:
        first = stored.bad[0]
        report["ok"] = False
        report["problem"] = f"{len(stored.bad)} checkpoint(s) failed verification, first {first.key}: {first.problem}"
    return report


# ---------------------------------------------------------------------------------------------- writing


@dataclasses.dataclass(slots=True)
class _Pointer:
    seq: int
    at: float  # wall-clock seconds when it was written


async def _read_pointer(store: ObjectStore) -> _Pointer | None:
    try:
        body = json.loads(await store.get_bytes(POINTER_KEY))
        return _Pointer(seq=int(body["seq"]), at=float(body["at"]))
    except S3Error as exc:
        if exc.code == "NoSuchKey":
            return None
        raise
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring an unreadable %s", POINTER_KEY)
        return None


def sign_head(keyring: KeyRing, issuer: str, seq: int, head_hash: bytes, frontier: bytes) -> Checkpoint:
    """A checkpoint of the head ``seq`` (chain ``head_hash``, tree ``frontier``) signed now, not stored."""
    now = utcnow()
    root = root_from_frontier(frontier)
    token = sign_checkpoint(keyring, issuer, seq, head_hash, now, root)
    key = checkpoint_key(seq)
    return Checkpoint(
        seq=seq, hash=head_hash, issued_at=_timestamp(now), kid=keyring.active.kid, key=key, jws=token, root_hash=root
    )


async def _write(session: AsyncSession, store: ObjectStore, keyring: KeyRing, settings: Settings) -> Checkpoint | None:
    head = (
        await session.execute(select(AuditHead.seq, AuditHead.hash, AuditHead.frontier).where(AuditHead.id == 1))
    ).one_or_none()
    if head is None or head.seq < 1:
        return None
    now = utcnow()
    root = root_from_frontier(head.frontier)
    token = sign_checkpoint(keyring, settings.jwt_issuer, head.seq, head.hash, now, root)
    key = checkpoint_key(head.seq)
    days = settings.audit_retention_days
    await store.put_bytes(key, token.encode(), MEDIA_TYPE, retain_until=now + dt.timedelta(days=days) if days else None)
    pointer = json.dumps({"seq": head.seq, "at": now.timestamp(), "key": key}).encode()
    await store.replace_bytes(POINTER_KEY, pointer, "application/json")
    log.info("audit checkpoint at event %d written to %s", head.seq, key)
    return Checkpoint(
        seq=head.seq,
        hash=head.hash,
        issued_at=_timestamp(now),
        kid=keyring.active.kid,
        key=key,
        jws=token,
        root_hash=root,
    )


async def write_checkpoint(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], store: ObjectStore, keyring: KeyRing
) -> Checkpoint | None:
    """Sign and store a checkpoint of the current head now (waiting for another writer to finish).

    ``None`` while the chain is empty.
    """
    async with sessionmaker() as session, session.begin():
        await session.execute(select(func.pg_advisory_xact_lock(ADVISORY_LOCK_KEY)))
        return await _write(session, store, keyring, settings)


class _Checkpointer:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        store: ObjectStore,
        keyring: KeyRing,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.store = store
        self.keyring = keyring
        self.known: _Pointer | None = None  # the newest checkpoint this process knows of

    def due(self, head_seq: int, pointer: _Pointer) -> bool:
        if head_seq <= pointer.seq:
            return False
        if head_seq - pointer.seq >= self.settings.audit_checkpoint_every_events:
            return True
        return time.time() - pointer.at >= self.settings.audit_checkpoint_every_seconds

    async def head_seq(self) -> int:
        async with self.sessionmaker() as session:
            seq = await session.scalar(select(AuditHead.seq).where(AuditHead.id == 1))
        return int(seq or 0)

    async def tick(self) -> Checkpoint | None:
        if self.known is None:
            # Without any checkpoint yet, the first one is due as soon as there is an event to sign: a new
            # deployment's log is checkpointed within seconds, not after the first interval.
            self.known = await _read_pointer(self.store) or _Pointer(seq=0, at=0.0)
        if not self.due(await self.head_seq(), self.known):
            return None
        async with self.sessionmaker() as session, session.begin():
            locked = await session.scalar(select(func.pg_try_advisory_xact_lock(ADVISORY_LOCK_KEY)))
            if not locked:
                self.known = None  # another process is writing; learn what it wrote next time
                return None
            # Another process may have written one since this process last looked.
            latest = await _read_pointer(self.store)
            if latest is not None and latest.seq >= self.known.seq:
                self.known = latest
                head = await session.scalar(select(AuditHead.seq).where(AuditHead.id == 1))
                if not self.due(int(head or 0), latest):
                    return None
            written = await _write(session, self.store, self.keyring, self.settings)
        if written is not None:
            self.known = _Pointer(seq=written.seq, at=time.time())
        return written

    async def final(self) -> None:
        """On shutdown: one last checkpoint if the head moved since the last one (bounded in time)."""
        try:
            async with asyncio.timeout(5):
                if self.known is not None and await self.head_seq() > self.known.seq:
                    await write_checkpoint(self.settings, self.sessionmaker, self.store, self.keyring)
        except Exception as exc:
            log.warning("no final audit checkpoint: %s", exc)


async def run_checkpointer(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    store: ObjectStore,
    keyring: KeyRing,
    *,
    poll_seconds: float = POLL_SECONDS,
) -> None:
    """Write a checkpoint every ``audit_checkpoint_every_events`` events or ``..._every_seconds`` seconds.

    Polls about once a second; only writes when the head advanced. Database and object-store outages are
    logged and retried with backoff; cancelling the task stops it (after a last, time-bounded checkpoint).
    """
    checkpointer = _Checkpointer(settings, sessionmaker, store, keyring)
    delay = poll_seconds
    try:
        while True:
            try:
                await checkpointer.tick()
                delay = poll_seconds
            except Exception as exc:
                delay = min(max(delay * 2, poll_seconds), MAX_BACKOFF_SECONDS)
                log.warning("audit checkpoint failed (%s: %s); retrying in %.0fs", type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
    except asyncio.CancelledError:
        await checkpointer.final()
        raise
