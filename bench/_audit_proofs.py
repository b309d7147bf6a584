"""The proof half of ``audit_bench.py``: inclusion-proof latency in a seeded log of millions of events, and
the offline verification rate of an evidence bundle.

Seeding: the events of the proof log are written by one ``INSERT … SELECT generate_series`` whose leaf hash is
``sha256(int8send(seq))`` (their content is a placeholder and their chain hashes are zeros: only the tree is
exercised), and the stored subtrees (levels >= 6) and the frontier are computed from the same leaf hashes here
and copied in. Inclusion proofs are then served by the code the API uses (``app.audit.proofs``), each checked.
"""

from __future__ import annotations

import hashlib
import random
import statistics
import time
import uuid
from typing import Any

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import async_sessionmaker

from app.audit import bundle, merkle, proofs, queries, redaction
from app.audit.bundle_format import verify_bundle
from app.auth.keys import KeyRing, SigningKey
from app.db import create_engine

PROOF_TARGET_MS = 5.0
BUNDLE_TARGET = 100_000
PROOFS_TIMED = 2000


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def seed_tree(url: str, events: int) -> bytes:
    """A log of ``events`` seeded leaves with its stored subtrees and frontier; the tree's root."""
    connection = await asyncpg.connect(_dsn(url))
    try:
        started = time.perf_counter()
        await connection.execute(
            "INSERT INTO audit_events (seq, occurred_at, actor, action, details, prev_hash, hash, leaf_hash)"
            " SELECT g, now(), 'bench', 'bench.seeded', '{}', decode(repeat('00', 32), 'hex'),"
            " decode(repeat('00', 32), 'hex'), sha256(int8send(g)) FROM generate_series(1, $1::bigint) AS g",
            events,
        )
        tree = merkle.TreeBuilder()
        nodes: list[tuple[int, int, bytes]] = []
        sha256 = hashlib.sha256
        for seq in range(1, events + 1):
            nodes.extend(tree.push(sha256(seq.to_bytes(8, "big", signed=True)).digest()))
        await connection.copy_records_to_table("audit_tree_nodes", records=nodes)
        await connection.execute(
            "UPDATE audit_head SET seq = $1, frontier = $2 WHERE id = 1", events, b"".join(tree.frontier)
        )
        await connection.execute("VACUUM ANALYZE audit_events")
        await connection.execute("VACUUM ANALYZE audit_tree_nodes")
        print(
            f"  seeded {events:,} leaves and {len(nodes):,} stored subtrees in {time.perf_counter() - started:.1f}s",
            flush=True,
        )
        return tree.root()
    finally:
        await connection.close()


async def bench_inclusion(url: str, events: int) -> bool:
    print(f"inclusion proofs: a seeded log of {events:,} events", flush=True)
    root = await seed_tree(url, events)
    engine = create_engine(url, pool_size=1)
    rng = random.Random(9162)
    try:
        async with async_sessionmaker(engine)() as session:
            lookup = text("SELECT leaf_hash FROM audit_events WHERE seq = :seq")
            floor, timings = [], []
            for _ in range(PROOFS_TIMED):
                seq = rng.randint(1, events)
                started = time.perf_counter()
                await session.scalar(lookup, {"seq": seq})
                floor.append(time.perf_counter() - started)
                started = time.perf_counter()
                proof = await proofs.inclusion_proof(session, seq, events)
                timings.append(time.perf_counter() - started)
                assert merkle.verify_inclusion(proof.leaf_hash, seq - 1, events, proof.audit_path, root), seq
    finally:
        await engine.dispose()
    timings.sort()
    p50, p99 = statistics.median(timings) * 1000, timings[int(len(timings) * 0.99)] * 1000
    base = statistics.median(floor) * 1000
    print(
        f"  inclusion proof ({PROOFS_TIMED} random leaves, each verified): p50 {p50:.2f} ms, p99 {p99:.2f} ms   "
        f"ratio p50 to one primary-key lookup ({base:.2f} ms, the floor) {p50 / base:.1f}x   "
        f"ratio to the {PROOF_TARGET_MS:.0f} ms target {p99 / PROOF_TARGET_MS:.2f}",
        flush=True,
    )
    return p99 < PROOF_TARGET_MS


async def bench_bundle_verify(url: str, wanted: int) -> bool:
    """A bundle of about ``wanted`` events of half the organisations of the grown chain, verified offline."""
    engine = create_engine(url, pool_size=1)
    keyring = KeyRing((SigningKey(kid="bench", private=Ed25519PrivateKey.generate()),))
    try:
        async with async_sessionmaker(engine)() as session:
            counts: list[Any] = list(
                await session.execute(
                    text("SELECT org_id, count(*) FROM audit_events WHERE org_id IS NOT NULL GROUP BY 1 ORDER BY 2")
                )
            )
            chosen: list[uuid.UUID] = []
            total = 0
            for org_id, count in counts:
                if total + count > min(wanted, bundle.MAX_BUNDLE_EVENTS):
                    break
                chosen.append(org_id)
                total += count
            filters = queries.EventFilter(queries.Scope(tuple(chosen)))
            started = time.perf_counter()
            pseudonyms = redaction.Pseudonyms(b"bench")
            data = await bundle.build_bundle(session, keyring, "bench", filters, org=None, pseudonyms=pseudonyms)
            built = time.perf_counter() - started
    finally:
        await engine.dispose()
    started, cpu = time.perf_counter(), time.process_time()
    report = verify_bundle(data)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert report.ok, report
    sha_floor = _one_hash_per_event(report.events_checked)
    rate = report.events_checked / elapsed
    print(
        f"evidence bundle: {report.events_checked:,} events ({len(data) / 1e6:.0f} MB, built in {built:.1f}s)\n"
        f"  verify-bundle: {elapsed:.2f}s = {rate:10,.0f} events/s   ratio to target {BUNDLE_TARGET:,}/s "
        f"{rate / BUNDLE_TARGET:.2f}   ratio to one SHA-256 per event ({sha_floor:,.0f}/s, the floor) "
        f"{rate / sha_floor:.3f}   (CPU {cpu:.2f}s = {report.events_checked / cpu:,.0f} events per CPU-second, "
        f"{report.events_checked / cpu / BUNDLE_TARGET:.2f} of the target: the rate on an unloaded core)",
        flush=True,
    )
    return rate >= BUNDLE_TARGET


def _one_hash_per_event(count: int) -> float:
    """Events/s of the least any verifier does: one SHA-256 of a typical canonical event (300 bytes)."""
    payload = bytes(300)
    sha256 = hashlib.sha256
    started = time.perf_counter()
    for _ in range(count):
        sha256(payload).digest()
    return count / (time.perf_counter() - started)
