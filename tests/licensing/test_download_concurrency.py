"""Metering under real concurrency and interruption.

- Two real ``corpora serve`` processes (one granian worker each) on one database and one object store
  share a quota: 200 concurrent grants against a quota of 10 give exactly 10 grants.
- Grant requests cancelled at random points (asyncio cancellation inside the application, and HTTP
  connections dropped against a real server) leave no grant without its audit event, no audit event
  without its grant, and counters equal to what was granted; the chain still verifies and the service
  still grants afterwards.
- A ``latest``-scoped entitlement follows the newest published version.

The in-process test client (``AsyncTestClient``) runs each request to completion on its own thread, so
``asyncio.gather`` over it sends requests one after another: real concurrency needs real servers or an
ASGI transport on the test's own event loop, as used here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from litestar import Litestar
from litestar.testing import AsyncTestClient
from minio.error import S3Error
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.objectstore import ObjectStore
from app.settings import Settings
from tests.catalog.helpers import make_version, upload
from tests.conftest import Account, Servers, grant_platform_role, sign_up
from tests.licensing.helpers import Market, download_body, market

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 90.0


# --- two real server processes ---------------------------------------------------------------------------


@dataclasses.dataclass
class ServerProcess:
    url: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the process group (supervisor and worker), SIGKILL if it lingers."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ensure_bucket(settings: Settings) -> None:
    """Create the run's bucket before the servers start, so they do not race each other to create it."""
    client = ObjectStore(settings).client
    if not client.bucket_exists(settings.s3_bucket):
        with contextlib.suppress(S3Error):  # the in-process app's lifespan may have just created it
            client.make_bucket(settings.s3_bucket, object_lock=True)


def _wait_ready(procs: list[ServerProcess]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    pending = list(procs)
    while pending:
        for proc in list(pending):
            if proc.popen.poll() is not None:
                raise RuntimeError(f"corpora serve exited with {proc.popen.returncode}:\n{proc.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{proc.url}/readyz", timeout=2).status_code == 200:
                    pending.remove(proc)
        if pending and time.monotonic() > deadline:
            raise RuntimeError(
                f"corpora serve not ready within {READY_TIMEOUT:.0f}s:\n" + "\n---\n".join(p.tail() for p in pending)
            )
        time.sleep(0.2)


@pytest.fixture(scope="module")
def real_servers(
    servers: Servers, settings: Settings, app: Litestar, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[str]]:
    """Two ``corpora serve`` processes, with one and two workers, on this run's database and bucket.

    They sign with the in-process app's key, so tokens work across all three and the audit checkpoints
    they write to the shared bucket verify everywhere.
    """
    root = tmp_path_factory.mktemp("real-servers")
    key_file = root / "signing-ed25519.pem"
    key_file.write_bytes(
        app.state.keyring.active.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_file.chmod(0o600)
    _ensure_bucket(settings)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("CORPORA_")}
    procs: list[ServerProcess] = []
    try:
        for n in (1, 2):
            port = _free_port()
            data_dir = root / f"server-{n}"
            data_dir.mkdir()
            env = {
                **base_env,
                "CORPORA_DATABASE_URL": servers.database_url,
                "CORPORA_S3_ENDPOINT": servers.s3_endpoint,
                "CORPORA_S3_ACCESS_KEY": servers.s3_access_key,
                "CORPORA_S3_SECRET_KEY": servers.s3_secret_key,
                "CORPORA_S3_BUCKET": servers.s3_bucket,
                "CORPORA_DATA_DIR": str(data_dir),
                "CORPORA_SIGNING_KEY_FILES": str(key_file),
                "CORPORA_JANITOR_EVERY_SECONDS": "0",
                "CORPORA_METRICS_PUBLIC": "true",
            }
            log = root / f"server-{n}.log"
            with log.open("wb") as out:
                popen = subprocess.Popen(
                    [sys.executable, "-m", "app.cli", "serve", "--host=127.0.0.1", f"--port={port}", f"--workers={n}"],
                    env=env,
                    cwd=REPO_ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            procs.append(ServerProcess(f"http://127.0.0.1:{port}", popen, log))
        _wait_ready(procs)
        yield [p.url for p in procs]
    finally:
        for proc in procs:
            proc.stop()


# --- checks ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Ledger:
    grants: frozenset[str]
    events: tuple[str, ...]  # target ids of 'download.granted' events, duplicates kept
    downloads_used: int
    bytes_used: int
    bytes_granted: int


async def ledger(db: asyncpg.Connection, entitlement_id: str) -> Ledger:
    """Grants, their audit events and the counters, read in one statement (one snapshot). An event is either still
    pending or sequenced into the log (the sequencer moves it in one transaction), never both, never neither."""
    row = await db.fetchrow(
        """
        WITH it AS (SELECT CAST($1 AS text) AS key, CAST(CAST($1 AS text) AS uuid) AS id)
        SELECT (SELECT coalesce(array_agg(g.id::text), '{}') FROM download_grants AS g, it
                 WHERE g.entitlement_id = it.id) AS grants,
               (SELECT coalesce(array_agg(a.target_id), '{}')
                  FROM (SELECT action, target_id, details FROM audit_events
                        UNION ALL SELECT action, target_id, details FROM audit_pending) AS a, it
                 WHERE a.action = 'download.granted' AND a.details->>'entitlement_id' = it.key) AS events,
               (SELECT coalesce(sum(g.size), 0) FROM download_grants AS g, it
                 WHERE g.entitlement_id = it.id) AS bytes_granted,
               e.downloads_used, e.bytes_used
          FROM entitlements AS e, it WHERE e.id = it.id
        """,
        entitlement_id,
    )
    assert row is not None
    return Ledger(
        frozenset(row["grants"]), tuple(row["events"]), row["downloads_used"], row["bytes_used"], row["bytes_granted"]
    )


def assert_consistent(book: Ledger) -> None:
    assert len(book.events) == len(set(book.events)), "a grant has more than one audit event"
    assert set(book.events) == book.grants, (
        f"grants without events: {sorted(book.grants - set(book.events))}; "
        f"events without grants: {sorted(set(book.events) - book.grants)}"
    )
    assert book.downloads_used == len(book.grants)
    assert book.bytes_used == book.bytes_granted


async def settled(db: asyncpg.Connection, entitlement_id: str, *, quiet: float = 1.0, within: float = 30) -> Ledger:
    """The ledger once nothing has changed for ``quiet`` seconds (requests still finishing server-side)."""
    deadline = time.monotonic() + within
    last = await ledger(db, entitlement_id)
    stable_since = time.monotonic()
    while time.monotonic() - stable_since < quiet:
        assert time.monotonic() < deadline, "grants kept changing long after the requests ended"
        await asyncio.sleep(0.2)
        current = await ledger(db, entitlement_id)
        assert_consistent(current)  # every intermediate snapshot is consistent too
        if current != last:
            last, stable_since = current, time.monotonic()
    return last


async def assert_chain_verifies(client: AsyncTestClient[Any], db: asyncpg.Connection) -> None:
    auditor = await grant_platform_role(client, db, await sign_up(client), "auditor")
    report = await client.get("/api/v1/audit/verify", headers=auditor.headers)
    assert report.status_code == 200, report.text
    assert report.json()["ok"] is True, report.json()


# --- (a) two processes, one quota ----------------------------------------------------------------------------


async def test_two_server_processes_never_overshoot_the_quota(real_servers: list[str], db: asyncpg.Connection) -> None:
    timeout = httpx.Timeout(60)
    async with httpx.AsyncClient(base_url=real_servers[0], timeout=timeout) as setup:
        m = await market(setup, db, downloads=10)  # type: ignore[arg-type]  # same interface as the test client
    size = len(m.files["data/a.txt"])
    limits = httpx.Limits(max_connections=50)
    async with contextlib.AsyncExitStack() as stack:
        apis = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits))
            for url in real_servers
        ]
        body = download_body(m, "data/a.txt")
        responses = await asyncio.gather(
            *[apis[i % 2].post("/api/v1/downloads", json=body, headers=m.buyer.headers) for i in range(200)]
        )
    statuses = [r.status_code for r in responses]
    assert statuses.count(201) == 10, statuses
    assert statuses.count(429) == 190, statuses
    for server in (0, 1):  # both processes answered their half, with grants or refusals only
        assert {r.status_code for r in responses[server::2]} <= {201, 429}
    refused = next(r for r in responses if r.status_code == 429).json()
    assert refused["type"] == "quota-exceeded"
    assert refused["downloads_remaining"] == 0

    book = await ledger(db, m.entitlement_id)
    assert_consistent(book)
    assert (book.downloads_used, book.bytes_used) == (10, 10 * size)
    assert len(book.grants) == 10
    assert len(book.events) == 10
    granted = {r.json()["download_id"] for r in responses if r.status_code == 201}
    assert granted == book.grants
    # The servers' own sequencers move each event into the log shortly after its grant committed.
    deadline = time.monotonic() + 5
    while await db.fetchval(
        "SELECT count(*) FROM audit_pending WHERE details->>'entitlement_id' = $1", m.entitlement_id
    ):
        assert time.monotonic() < deadline, "recorded events were not sequenced within 5 s"
        await asyncio.sleep(0.05)
    sequenced = await db.fetchval(
        "SELECT count(*) FROM audit_events WHERE action = 'download.granted' AND details->>'entitlement_id' = $1",
        m.entitlement_id,
    )
    assert sequenced == 10
    # Each server counted its workers' grants and refusals in /metrics; together they count every answer.
    counted: collections.Counter[tuple[str, str]] = collections.Counter()
    for url in real_servers:
        async with httpx.AsyncClient(base_url=url, timeout=timeout) as api:
            scraped = await api.get("/metrics")
        assert scraped.status_code == 200, scraped.text
        for family in text_string_to_metric_families(scraped.text):
            for sample in family.samples:
                if sample.name == "corpora_download_grants_total":
                    counted["granted", sample.labels["mode"]] += int(sample.value)
                elif sample.name == "corpora_download_refusals_total":
                    counted["refused", sample.labels["reason"]] += int(sample.value)
    assert counted == {("granted", "presigned"): 10, ("refused", "quota-exceeded"): 190}
    # Receipts from either process verify with the key both publish.
    async with httpx.AsyncClient(base_url=real_servers[1], timeout=timeout) as other:
        jwks = (await other.get("/.well-known/jwks.json")).json()
    public = {k["kid"]: jwt.PyJWK(k) for k in jwks["keys"]}
    for r in responses:
        if r.status_code == 201:
            receipt = r.json()["receipt"]
            claims = jwt.decode(receipt, public[jwt.get_unverified_header(receipt)["kid"]], algorithms=["EdDSA"])
            assert claims["download_id"] == r.json()["download_id"]


# --- (b) cancelled grants ------------------------------------------------------------------------------------


async def _cancel_storm(
    http: httpx.AsyncClient, m: Market, rng: random.Random, *, rounds: int, width: int, max_delay: float
) -> tuple[set[str], int, int]:
    """``rounds`` waves of ``width`` concurrent grant requests, each cancelled after a random delay.

    Returns the download ids answered, how many requests were cancelled and how many answered with an error.
    """
    answered: set[str] = set()
    cancelled = errors = 0
    body = download_body(m, "data/a.txt")
    for _ in range(rounds):
        tasks = [
            asyncio.create_task(http.post("/api/v1/downloads", json=body, headers=m.buyer.headers))
            for _ in range(width)
        ]

        async def cancel_later(task: asyncio.Task[httpx.Response], delay: float) -> None:
            await asyncio.sleep(delay)
            task.cancel()

        cancellers = [asyncio.create_task(cancel_later(t, rng.uniform(0, max_delay))) for t in tasks]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*cancellers)
        for result in results:
            if isinstance(result, asyncio.CancelledError):
                cancelled += 1
            elif isinstance(result, BaseException):
                raise result
            elif result.status_code == 201:
                answered.add(result.json()["download_id"])
            else:
                errors += 1
    return answered, cancelled, errors


async def test_cancelled_grants_leave_no_grant_without_its_event(
    real_servers: list[str], client: AsyncTestClient[Any], db: asyncpg.Connection, settings: Settings, app: Litestar
) -> None:
    """Grant requests abandoned at random points, two ways at once against one entitlement:

    - cancellation inside the application: an app instance of its own, driven through an ASGI transport on
      this event loop, so cancelling a request task cancels the handler wherever it is awaiting (a query, the
      audit append, the commit, the pool);
    - a client that goes away: requests to a real server whose connection is closed mid-request.
    """
    m = await market(client, db, downloads=100_000)
    body = download_body(m, "data/a.txt")
    own = create_app(settings, keyring=app.state.keyring)
    try:
        transport = httpx.ASGITransport(app=own)  # type: ignore[arg-type]
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://testserver.local", timeout=60) as asgi,
            httpx.AsyncClient(base_url=real_servers[0], timeout=60) as http,
        ):
            # How long one grant takes on each path, so cancellations land before, during and after it.
            spans = []
            for api in (asgi, http):
                started = time.perf_counter()
                warm = await api.post("/api/v1/downloads", json=body, headers=m.buyer.headers)
                assert warm.status_code == 201, warm.text
                spans.append(min(max(3 * (time.perf_counter() - started), 0.02), 1.0))
            storms = await asyncio.gather(
                _cancel_storm(asgi, m, random.Random(20260217), rounds=10, width=8, max_delay=spans[0]),
                _cancel_storm(http, m, random.Random(9001), rounds=6, width=8, max_delay=spans[1]),
            )
            for _, cancelled, errors in storms:
                assert cancelled > 0
                assert errors == 0
            book = await settled(db, m.entitlement_id)
            assert_consistent(book)
            assert storms[0][0] | storms[1][0] <= book.grants
            # Every connection went back to the pool, and nothing is left holding a lock (the audit head, the
            # entitlement row, the process's charge turn): all three still grant.
            assert own.state.engine.pool.checkedout() == 0
            assert not own.state.charge_turn.locked()
            for api in (asgi, http):
                after = await asyncio.wait_for(
                    api.post("/api/v1/downloads", json=download_body(m, "data/b.txt"), headers=m.buyer.headers), 30
                )
                assert after.status_code == 201, after.text
    finally:
        await asyncio.wait_for(own.state.engine.dispose(), 30)
    again = await client.post("/api/v1/downloads", json=download_body(m, "data/b.txt"), headers=m.buyer.headers)
    assert again.status_code == 201, again.text
    book = await ledger(db, m.entitlement_id)
    assert_consistent(book)
    assert again.json()["download_id"] in book.grants
    await assert_chain_verifies(client, db)


# --- (c) latest-scoped offers --------------------------------------------------------------------------------


async def _publish(client: AsyncTestClient[Any], reviewer: Account, owner: Account, slug: str, version: str) -> None:
    state = (await client.get(f"/api/v1/products/{slug}/versions/{version}", headers=owner.headers)).json()["state"]
    if state == "draft":
        published = await client.post(f"/api/v1/products/{slug}/versions/{version}/publish", headers=owner.headers)
        assert published.status_code == 200, published.text
        state = published.json()["state"]
    if state == "in_review":
        approved = await client.post(
            f"/api/v1/products/{slug}/versions/{version}/review", json={"decision": "approve"}, headers=reviewer.headers
        )
        assert approved.status_code == 200, approved.text


async def test_latest_scope_refuses_older_versions_once_a_newer_one_is_published(
    client: AsyncTestClient[Any], db: asyncpg.Connection
) -> None:
    m = await market(client, db, versions="latest")
    reviewer = await grant_platform_role(client, db, await sign_up(client), "reviewer")

    async def grant(version: str, path: str = "data/a.txt") -> httpx.Response:
        return await client.post(
            "/api/v1/downloads", json=download_body(m, path, version=version), headers=m.buyer.headers
        )

    assert (await grant("1.0.0")).status_code == 201
    # A newer draft, and a newer version in review, change nothing yet.
    for version in ("1.9.0", "1.10.0"):
        await make_version(client, m.provider, m.product, version=version)
        content = f"release {version}\n".encode() * 100
        done = await upload(client, m.provider, m.product, version, "data/a.txt", content)
        assert done.status_code == 200, done.text
    assert (await grant("1.0.0")).status_code == 201
    in_review = await client.post(f"/api/v1/products/{m.product}/versions/1.9.0/publish", headers=m.provider.headers)
    assert in_review.status_code == 200, in_review.text
    assert (await grant("1.0.0")).status_code == 201

    await _publish(client, reviewer, m.provider, m.product, "1.9.0")  # approves it if it is in review
    before = await db.fetchrow(
        "SELECT downloads_used, bytes_used FROM entitlements WHERE id = $1::uuid", m.entitlement_id
    )
    old = await grant("1.0.0")
    assert old.status_code == 403, old.text
    assert old.json()["type"] == "version-not-covered"
    assert old.json()["latest_version"] == "1.9.0"
    assert (await grant("1.9.0")).status_code == 201

    # Semantic, not lexical, order: 1.10.0 is newer than 1.9.0.
    await _publish(client, reviewer, m.provider, m.product, "1.10.0")
    refused = await grant("1.9.0")
    assert refused.status_code == 403, refused.text
    assert refused.json()["latest_version"] == "1.10.0"
    newest = await grant("1.10.0")
    assert newest.status_code == 201, newest.text
    assert newest.json()["sha256"] == hashlib.sha256(b"release 1.10.0\n" * 100).hexdigest()
    # The two refusals charged nothing: only the two grants since count.
    after = await db.fetchrow(
        "SELECT downloads_used, bytes_used FROM entitlements WHERE id = $1::uuid", m.entitlement_id
    )
    assert after["downloads_used"] == before["downloads_used"] + 2
    book = await ledger(db, m.entitlement_id)
    assert_consistent(book)
    assert uuid.UUID(newest.json()["download_id"])
