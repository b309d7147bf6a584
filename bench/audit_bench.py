"""Audit chain benchmark: append throughput under concurrency, and verification speed.

Runs against the embedded PostgreSQL (started in a temporary directory) or the server of
``CORPORA_DATABASE_URL``; either way a fresh database is created and migrated for the run.

1. Appends: ``--writers`` concurrent writers, each transaction one ``record()`` call, compared in the same
   run with the same writers inserting rows with the same columns into a plain, un-chained table.
2. Verification: the chain is grown to ``--verify-events`` events (bulk-loaded, hashed exactly as
   ``record()`` hashes) and ``verify_chain`` is timed, with a signed-checkpoint lookup every 1000 events.

Prints events/s and the ratios to the baseline and to the targets (1,000 appends/s, 100,000 verified
events/s).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import multiprocessing
import os
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _audit_proofs import bench_bundle_verify, bench_inclusion

from app.audit.merkle import TreeBuilder, leaf_hash
from app.audit.service import (
    AuditContext,
    canonical,
    encode_details,
    record,
    verify_chain,
)
from app.db import create_engine
from app.migrate import upgrade

APPEND_TARGET = 1_000
VERIFY_TARGET = 100_000

PLAIN_TABLE = """
CREATE TABLE bench_plain_events (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at timestamptz NOT NULL,
    actor varchar(80) NOT NULL,
    org_id uuid,
    action varchar(80) NOT NULL,
    target_type varchar(40),
    target_id varchar(200),
    request_id varchar(64),
    client_addr varchar(64),
    details jsonb NOT NULL,
    prev_hash bytea NOT NULL,
    hash bytea NOT NULL
);
CREATE INDEX ix_bench_plain_events_org_id_seq ON bench_plain_events (org_id, seq);
"""

PLAIN_INSERT = text(
    """
INSERT INTO bench_plain_events
    (occurred_at, actor, org_id, action, target_type, target_id, request_id, client_addr, details, prev_hash, hash)
VALUES (:occurred_at, :actor, :org_id, :action, :target_type, :target_id, :request_id, :client_addr,
        CAST(CAST(:details AS text) AS jsonb), :prev_hash, :hash)
"""
)


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def event_fields(i: int, orgs: list[uuid.UUID]) -> dict[str, object]:
    return {
        "org_id": orgs[i % len(orgs)],
        "target_type": "download",
        "target_id": str(uuid.UUID(int=i)),
        "details": {"product": f"product-{i % 97}", "version": "1.2.0", "bytes": 1_048_576 + i, "purpose": "research"},
    }


async def fresh_database(server_url: str | None, tmp: Path) -> str:
    name = f"corpora_bench_{secrets.token_hex(4)}"
    if server_url is None:
        from app.embedded import start_postgres

        url = await asyncio.to_thread(start_postgres, tmp, name)
    else:
        connection = await asyncpg.connect(asyncpg_dsn(server_url))
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()
        url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    await asyncio.to_thread(upgrade, url)
    return url


async def run_writers(writers: int, total: int, one: object) -> float:
    """``writers`` tasks share ``total`` transactions; returns the elapsed seconds."""
    counter = iter(range(total))

    async def writer() -> None:
        for i in counter:
            await one(i)  # type: ignore[operator]

    started = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    return time.perf_counter() - started


def _writer_fn(kind: str, sessionmaker: async_sessionmaker[AsyncSession], offset: int) -> Any:
    """One transaction of the chained (``record()``) or the plain kind, through an AsyncSession."""
    orgs = [uuid.UUID(int=k + 1) for k in range(8)]
    zero = bytes(32)

    async def plain(i: int) -> None:
        fields = event_fields(offset + i, orgs)
        async with sessionmaker() as session, session.begin():
            await session.execute(
                PLAIN_INSERT,
                {
                    "occurred_at": dt.datetime.now(dt.UTC),
                    "actor": "user:bench",
                    "org_id": fields["org_id"],
                    "action": "download.granted",
                    "target_type": fields["target_type"],
                    "target_id": fields["target_id"],
                    "request_id": secrets.token_hex(8),
                    "client_addr": "127.0.0.1",
                    "details": encode_details(fields["details"]),  # type: ignore[arg-type]
                    "prev_hash": zero,
                    "hash": hashlib.sha256(str(i).encode()).digest(),
                },
            )

    async def chained(i: int) -> None:
        fields = event_fields(offset + i, orgs)
        context = AuditContext(actor="user:bench", request_id=secrets.token_hex(8), client_addr="127.0.0.1")
        async with sessionmaker() as session, session.begin():
            await record(session, context, "download.granted", **fields)  # type: ignore[arg-type]

    return chained if kind == "chained" else plain


async def _process_writers(
    url: str, kind: str, writers: int, count: int, offset: int, start: Any
) -> tuple[float, float]:
    engine = create_engine(url, pool_size=writers)
    one = _writer_fn(kind, async_sessionmaker(engine, expire_on_commit=False), offset)
    try:
        await run_writers(writers, min(count // 10, 200), one)  # warm connections and prepared statements
        await asyncio.to_thread(start.wait)
        began = time.time()
        await run_writers(writers, count, one)
        return began, time.time()
    finally:
        await engine.dispose()


def _process_main(url: str, kind: str, writers: int, count: int, offset: int, start: Any, results: Any) -> None:
    results.put(asyncio.run(_process_writers(url, kind, writers, count, offset, start)))


def run_processes(url: str, kind: str, writers: int, total: int, processes: int) -> float:
    """``writers`` split over ``processes`` (like server workers) run ``total`` transactions; returns events/s."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(processes)
    results = context.Queue()
    children = [
        context.Process(
            target=_process_main,
            args=(url, kind, writers // processes, total // processes, k * total, start, results),
        )
        for k in range(processes)
    ]
    for child in children:
        child.start()
    spans: list[tuple[float, float]] = [results.get(timeout=600) for _ in children]
    for child in children:
        child.join()
    return (total // processes * processes) / (max(end for _, end in spans) - min(began for began, _ in spans))


async def bench_appends(url: str, writers: int, total: int, processes: int) -> tuple[float, float]:
    """Both sides through the same stack the service uses: an AsyncSession, one transaction, one statement."""
    engine = create_engine(url, pool_size=1)
    async with engine.begin() as connection:
        for statement in PLAIN_TABLE.split(";"):
            if statement.strip():
                await connection.execute(text(statement))
    await engine.dispose()
    plain_rate = await asyncio.to_thread(run_processes, url, "plain", writers, total, processes)
    chained_rate = await asyncio.to_thread(run_processes, url, "chained", writers, total, processes)
    return plain_rate, chained_rate


async def grow_chain(url: str, events: int, batch: int = 20_000) -> int:
    """Append events until the chain holds ``events``, hashed exactly as ``record()`` does, by COPY."""
    orgs = [uuid.uuid4() for _ in range(8)]
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        head = await connection.fetchrow("SELECT seq, hash FROM audit_head WHERE id = 1")
        head_seq: int = head["seq"]
        prev: bytes = head["hash"]
        tree = TreeBuilder()
        for (leaf,) in await connection.fetch("SELECT leaf_hash FROM audit_events ORDER BY seq"):
            tree.push(leaf)
        start = time.perf_counter()
        while head_seq < events:
            count = min(batch, events - head_seq)
            fields = [event_fields(head_seq + 1 + k, orgs) for k in range(count)]
            # PostgreSQL's own rendering of each details document is what gets hashed.
            stored = await connection.fetchval(
                "SELECT array_agg(d::jsonb::text ORDER BY n) FROM unnest($1::text[]) WITH ORDINALITY AS t(d, n)",
                [encode_details(f["details"]) for f in fields],  # type: ignore[arg-type]
            )
            rows = []
            nodes = []
            now = dt.datetime.now(dt.UTC)
            for k, (f, details) in enumerate(zip(fields, stored, strict=True)):
                seq = head_seq + 1 + k
                occurred = now + dt.timedelta(microseconds=k)
                request_id = f"{seq:016x}"
                encoded = canonical(
                    seq=seq,
                    occurred_at=occurred,
                    actor="user:bench",
                    org_id=f["org_id"],  # type: ignore[arg-type]
                    action="download.granted",
                    target_type="download",
                    target_id=f["target_id"],  # type: ignore[arg-type]
                    request_id=request_id,
                    client_addr="127.0.0.1",
                    details_json=details,
                )
                digest = hashlib.sha256(prev + encoded).digest()
                leaf = leaf_hash(encoded)
                nodes.extend(tree.push(leaf))
                rows.append(
                    (
                        seq,
                        occurred,
                        "user:bench",
                        f["org_id"],
                        "download.granted",
                        "download",
                        f["target_id"],
                        request_id,
                        "127.0.0.1",
                        details,
                        prev,
                        digest,
                        leaf,
                    )
                )
                prev = digest
            async with connection.transaction():
                await connection.copy_records_to_table("audit_events", records=rows)
                await connection.copy_records_to_table("audit_tree_nodes", records=nodes)
                head_seq += count
                await connection.execute(
                    "UPDATE audit_head SET seq = $1, hash = $2, frontier = $3 WHERE id = 1",
                    head_seq,
                    prev,
                    b"".join(tree.frontier),
                )
        print(f"  chain grown to {head_seq} events in {time.perf_counter() - start:.1f}s", flush=True)
        await connection.execute("VACUUM ANALYZE audit_events")
    finally:
        await connection.close()
    return head_seq


async def bench_verify(url: str, events: int, batch: int) -> tuple[int, float, float]:
    total = await grow_chain(url, events)
    engine = create_engine(url, pool_size=1)
    try:
        async with async_sessionmaker(engine)() as session:
            checkpoints = {
                seq: digest
                for seq, digest in (
                    await session.execute(text("SELECT seq, hash FROM audit_events WHERE seq % 1000 = 0"))
                )
            }
        async with async_sessionmaker(engine)() as session:
            await verify_chain(session, checkpoints, batch=batch)  # warm the cache and the statement
        async with async_sessionmaker(engine)() as session:
            started, cpu = time.perf_counter(), time.process_time()
            report = await verify_chain(session, checkpoints, batch=batch)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await engine.dispose()
    assert report.ok, report
    assert report.events_checked == total, report
    return total, elapsed, cpu


async def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="corpora-audit-bench-") as tmp:
        url = await fresh_database(args.database_url, Path(tmp))
        print(
            f"audit bench on {os.cpu_count()} CPUs, database {make_url(url).database}, "
            f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
            flush=True,
        )

        print(
            f"appends: {args.writers} writers in {args.processes} process(es), {args.appends} transactions each side",
            flush=True,
        )
        plain_rate, chained_rate = await bench_appends(url, args.writers, args.appends, args.processes)
        print(f"  plain table (baseline): {plain_rate:10,.0f} inserts/s")
        print(
            f"  hash-chained record():  {chained_rate:10,.0f} events/s   "
            f"ratio to baseline {chained_rate / plain_rate:.2f}   ratio to target "
            f"{APPEND_TARGET:,}/s {chained_rate / APPEND_TARGET:.2f}",
            flush=True,
        )

        print(f"verification: {args.verify_events} events, batches of {args.batch}", flush=True)
        total, elapsed, cpu = await bench_verify(url, args.verify_events, args.batch)
        rate = total / elapsed
        print(
            f"  verify_chain: {total:,} events in {elapsed:.2f}s = {rate:10,.0f} events/s   "
            f"ratio to target {VERIFY_TARGET:,}/s {rate / VERIFY_TARGET:.2f}   "
            f"(client CPU {cpu:.2f}s = {total / cpu:,.0f} events per CPU-second)",
            flush=True,
        )
        bundle_ok = await bench_bundle_verify(url, args.bundle_events)
        proofs_ok = await bench_inclusion(await fresh_database(args.database_url, Path(tmp)), args.proof_events)
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ok = chained_rate >= APPEND_TARGET and rate >= VERIFY_TARGET and bundle_ok and proofs_ok
    print("targets met" if ok else "targets MISSED")
    return 0 if ok else 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("CORPORA_DATABASE_URL") or None,
        help="PostgreSQL server to create the bench database on (default: CORPORA_DATABASE_URL, else embedded)",
    )
    parser.add_argument("--writers", type=int, default=32, help="concurrent writers (default 32)")
    parser.add_argument("--appends", type=int, default=4000, help="transactions per append run (default 4000)")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="client processes the writers are split over, like server workers (default 1)",
    )
    parser.add_argument("--verify-events", type=int, default=200_000, help="chain length to verify (default 200000)")
    parser.add_argument("--batch", type=int, default=20_000, help="verification keyset batch size (default 20000)")
    parser.add_argument(
        "--bundle-events", type=int, default=100_000, help="events in the verified evidence bundle (default 100000)"
    )
    parser.add_argument(
        "--proof-events",
        type=int,
        default=10_000_000,
        help="size of the seeded log inclusion proofs are timed in (default 10000000)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
