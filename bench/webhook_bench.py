"""Webhook deliveries per second from one job worker, and grant latency with and without 1,000 queued deliveries.

Setup: an embedded PostgreSQL and SeaweedFS under a temporary data dir (``app.cli.resolve``, which migrates),
and a receiver: a small asyncio HTTP/1.1 server in its own process that answers every POST with 200 (after
``/slow/`` paths, 50 ms later).

1. Deliveries/s. ``--deliveries`` events are published to an org with one webhook (each an inbox entry, a
   delivery row and a queued job), then one worker in this process (``--concurrency`` jobs at once) delivers
   them all: signs, POSTs through the egress client, records the attempt. Measured side by side in the same
   run against two floors:
   - the same number of signed POSTs sent straight to the receiver by the same egress client at the same
     concurrency (no queue, no database): what the network path allows;
   - the same number of no-op jobs through the same worker: what the queue alone costs per job.
2. Grant latency. ``corpora serve`` (which runs a job worker beside the API) on a free port; over HTTP a buyer
   obtains an entitlement; ``--grants`` sequential ``POST /api/v1/downloads`` on one keep-alive connection
   measure p50/p99 with the queue empty, then again right after 1,000 deliveries to a slow endpoint were
   queued, while the worker drains them. The ratio shows whether the queue slows the grant path.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import dataclasses
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import _common
import httpx
import proxy_bench

DELAY_SECONDS = 0.05
PENDING_FOR_GRANTS = 1000


# --- the receiver (its own process) ----------------------------------------------------------------------------


async def _serve_receiver(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                if head.startswith(b"POST /slow/"):
                    await asyncio.sleep(DELAY_SECONDS)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# --- part 1: deliveries per second -----------------------------------------------------------------------------


@dataclasses.dataclass
class Rate:
    count: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


async def _webhook_org(deps: Any, url: str) -> uuid.UUID:
    """An org (with its owner) and one webhook to ``url`` for every event; returns the org's id."""
    from app.accounts import service as accounts
    from app.audit.service import AuditContext
    from app.auth.principal import Principal
    from app.notifications.models import EventType, WebhookEndpoint
    from app.notifications.service import new_secret

    context = AuditContext(actor="bench")
    async with deps.sessionmaker() as session, session.begin():
        suffix = uuid.uuid4().hex[:8]
        user = await accounts.create_user(
            session, context, email=f"hooks-{suffix}@example.com", password=uuid.uuid4().hex, display_name="bench"
        )
        principal = Principal(user_id=user.id, platform_roles=frozenset())
        org = await accounts.create_org(session, context, principal, slug=f"hooks-{suffix}", name="Bench", kind="both")
        session.add(
            WebhookEndpoint(
                org_id=org.id, url=url, events=[str(e) for e in EventType], secret=new_secret(), created_by=user.id
            )
        )
        return org.id


async def _publish_many(deps: Any, org_id: uuid.UUID, count: int) -> None:
    from app.notifications.models import EventType
    from app.notifications.service import publish

    batch = 500
    for start in range(0, count, batch):
        async with deps.sessionmaker() as session, session.begin():
            for n in range(start, min(start + batch, count)):
                await publish(session, org_id, EventType.ORDER_CREATED, {"n": n, "order_id": str(uuid.uuid4())})


async def _run_worker(deps: Any, concurrency: int) -> float:
    from app.jobs.worker import build_app

    app = build_app(deps, periodic=False, pool_size=concurrency + 3)
    async with app.open_async():
        started = time.perf_counter()
        await app.run_worker_async(
            concurrency=concurrency,
            wait=False,
            listen_notify=False,
            install_signal_handlers=False,
            delete_jobs="successful",
        )
        return time.perf_counter() - started


async def _raw_posts(deps: Any, url: str, count: int, concurrency: int) -> float:
    """The same signed requests, straight from the egress client: the floor of the network path."""
    from app.notifications.delivery import signed_headers

    secret = "whsec_" + "A" * 43 + "="
    body = b'{"type":"order.created","timestamp":"2026-01-01T00:00:00+00:00","data":{"n":0}}'
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(count):
        queue.put_nowait(n)

    async def sender() -> None:
        while not queue.empty():
            n = queue.get_nowait()
            headers = signed_headers(secret, f"msg_{n}", body, _now())
            response = await deps.egress.request("POST", url, content=body, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"receiver answered {response.status_code}")

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    return time.perf_counter() - started


def _now() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.UTC)


async def _noop_jobs(deps: Any, count: int, concurrency: int) -> float:
    from app.jobs import Deferred, enqueue_many

    async with deps.sessionmaker() as session, session.begin():
        await enqueue_many(session, [Deferred("bench.noop", {"n": n}) for n in range(count)])
    return await _run_worker(deps, concurrency)


async def measure_deliveries(settings: Any, receiver_url: str, count: int, concurrency: int) -> tuple[Rate, ...]:
    from sqlalchemy import text

    from app.jobs import JobDeps, job
    from app.jobs.worker import open_deps
    from app.wiring import load_tasks

    @job("bench.noop")
    async def noop(deps: JobDeps, *, n: int) -> None:
        return None

    load_tasks()
    async with open_deps(settings, pool_size=concurrency + 2) as deps:
        org_id = await _webhook_org(deps, f"{receiver_url}/hooks/fast")
        await _raw_posts(deps, f"{receiver_url}/warm-up", min(count, 200), concurrency)  # connections, caches
        raw = Rate(count, await _raw_posts(deps, f"{receiver_url}/hooks/raw", count, concurrency))
        noop_rate = Rate(count, await _noop_jobs(deps, count, concurrency))
        await _publish_many(deps, org_id, count)
        delivered = Rate(count, await _run_worker(deps, concurrency))
        async with deps.sessionmaker() as session:
            succeeded = await session.scalar(
                text(
                    "SELECT count(*) FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id "
                    "WHERE e.org_id = :org AND d.succeeded_at IS NOT NULL AND d.attempts = 1"
                ),
                {"org": org_id},
            )
        if succeeded != count:
            raise RuntimeError(f"{succeeded} of {count} deliveries succeeded at the first attempt")
    return delivered, raw, noop_rate


# --- part 2: grant latency -------------------------------------------------------------------------------------


def _grant_latencies(market: proxy_bench.Market, grants: int) -> list[float]:
    body = market.grant_body()
    latencies: list[float] = []
    with httpx.Client(base_url=market.base_url, timeout=30) as api:
        headers = {"Authorization": f"Bearer {market.token()}"}
        for _ in range(grants):
            started = time.perf_counter()
            response = api.post("/api/v1/downloads", json=body, headers=headers)
            latencies.append((time.perf_counter() - started) * 1000)
            if response.status_code != 201:
                raise RuntimeError(f"grant answered {response.status_code}: {response.text}")
    return latencies


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


async def _pending(settings: Any) -> int:
    from sqlalchemy import text

    from app.jobs.worker import open_deps

    async with open_deps(settings, pool_size=1) as deps, deps.sessionmaker() as session:
        count = await session.scalar(
            text(
                "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'notifications.deliver' AND status = 'todo'"
            )
        )
        return int(count or 0)


async def _queue_deliveries(settings: Any, receiver_url: str, count: int) -> None:
    from app.jobs.worker import open_deps

    async with open_deps(settings, pool_size=2) as deps:
        org_id = await _webhook_org(deps, f"{receiver_url}/slow/{uuid.uuid4().hex[:8]}")
        await _publish_many(deps, org_id, count)


def measure_grants(settings: Any, url: str, market: proxy_bench.Market, receiver_url: str, grants: int) -> None:
    _grant_latencies(market, min(grants, 50))  # warm-up
    quiet: list[list[float]] = []
    busy: list[list[float]] = []
    for _ in range(2):
        deadline = time.monotonic() + 120
        while asyncio.run(_pending(settings)) and time.monotonic() < deadline:
            time.sleep(0.5)
        quiet.append(_grant_latencies(market, grants))
        asyncio.run(_queue_deliveries(settings, receiver_url, PENDING_FOR_GRANTS))
        before = asyncio.run(_pending(settings))
        busy.append(_grant_latencies(market, grants))
        after = asyncio.run(_pending(settings))
        print(f"  queued deliveries while the grants ran: {before} at the start, {after} at the end", flush=True)
    for name, rounds in [("queue empty", quiet), (f"{PENDING_FOR_GRANTS} deliveries queued", busy)]:
        flat = [x for r in rounds for x in r]
        print(f"  grants, {name:>26}: p50 {_percentile(flat, 0.5):6.2f} ms, p99 {_percentile(flat, 0.99):6.2f} ms")
    flat_quiet = [x for r in quiet for x in r]
    flat_busy = [x for r in busy for x in r]
    print(
        f"  ratio busy / empty: p50 {_percentile(flat_busy, 0.5) / _percentile(flat_quiet, 0.5):.2f}, "
        f"p99 {_percentile(flat_busy, 0.99) / _percentile(flat_quiet, 0.99):.2f}, "
        f"mean {statistics.mean(flat_busy) / statistics.mean(flat_quiet):.2f}"
    )


# --- main --------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command")
    receiver = commands.add_parser("receiver", help="(internal) the HTTP receiver")
    receiver.add_argument("--port", type=int, required=True)
    parser.add_argument("--deliveries", type=int, default=2000, help="deliveries measured in part 1 (2000)")
    parser.add_argument("--concurrency", type=int, default=8, help="jobs the worker runs at once (8)")
    parser.add_argument("--grants", type=int, default=300, help="sequential grants per measurement (300)")
    parser.add_argument("--workers", type=int, default=1, help="granian workers of corpora serve (1)")
    parser.add_argument("--skip-grants", action="store_true", help="part 1 only")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "receiver":
        asyncio.run(_serve_receiver(args.port))
        return 0
    print(_common.environment_line())
    data_dir = Path(tempfile.mkdtemp(prefix="corpora-webhook-bench-"))
    atexit.register(shutil.rmtree, data_dir, ignore_errors=True)

    from app.cli import resolve
    from app.settings import Settings

    with _common.exit_on_sigterm():
        print("starting embedded PostgreSQL and SeaweedFS, migrating ...", flush=True)
        runtime = resolve(Settings(data_dir=data_dir, workers=args.workers))
        settings = dataclasses.replace(runtime.settings, egress_allow_private=True)
        try:
            log_dir = data_dir / "logs"
            log_dir.mkdir()
            with _common.Processes(log_dir) as procs:
                port = _common.free_port()
                receiver = procs.start(
                    "receiver", [sys.executable, str(Path(__file__).resolve()), "receiver", "--port", str(port)]
                )
                receiver_url = f"http://127.0.0.1:{port}"
                time.sleep(0.5)
                if receiver.popen.poll() is not None:
                    raise RuntimeError(f"the receiver exited:\n{receiver.log_tail()}")

                print(f"\n1. webhook deliveries from one worker, {args.concurrency} at once, {args.deliveries} each")
                delivered, raw, noop = asyncio.run(
                    measure_deliveries(settings, receiver_url, args.deliveries, args.concurrency)
                )
                print(f"  deliveries (queue, sign, POST, record) {delivered.per_second:8.0f}/s")
                print(f"  signed POSTs straight to the receiver  {raw.per_second:8.0f}/s")
                print(f"  no-op jobs through the same worker     {noop.per_second:8.0f}/s")
                print(
                    f"  ratios: deliveries / raw POSTs {_common.ratio(delivered.per_second, raw.per_second):.2f}, "
                    f"deliveries / no-op jobs {_common.ratio(delivered.per_second, noop.per_second):.2f}",
                    flush=True,
                )
                if args.skip_grants:
                    return 0

                print(f"\n2. grant latency, {args.grants} sequential grants per measurement, two rounds")
                url, _api = proxy_bench.start_corpora(procs, settings.as_env(), args.workers)
                source = data_dir / "small.bin"
                sha = proxy_bench.write_random_file(source, 4096)
                market = proxy_bench.set_up_market(url, source, 4096, sha, downloads=100_000_000)
                measure_grants(settings, url, market, receiver_url, args.grants)
        finally:
            runtime.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
