"""A restarting, refusing or hung dependency is a 503 with ``Retry-After`` within seconds, never a 500 and
never a hung request, and the service recovers by itself.

Requests go through an ``httpx.ASGITransport`` on the test's own event loop, so the test can act on the
database (terminate a backend, stop the server) while a request is inside the app."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import os
import signal
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from litestar import Litestar
from prometheus_client.parser import text_string_to_metric_families

from app.embedded import EmbeddedPostgres, create_database, run_postgres
from app.main import create_app
from app.migrate import upgrade
from app.objectstore import ObjectStore
from app.settings import Settings
from tests.catalog.helpers import make_product, make_version
from tests.conftest import METRICS_HEADERS, PASSWORD, asyncpg_dsn, make_org, sign_up, unique_email
from tests.serve_helpers import descendants
from tests.tcp_proxy import TcpProxy, http_upstream, postgres_upstream, proxied_database_url, proxied_endpoint

ANSWER_WITHIN = 9.0  # the app's own deadlines (4 s statements, 3 s connects, 5 s object store) answer first


@contextlib.asynccontextmanager
async def api(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # litestar's ASGI types are narrower
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as c:
        try:
            yield c
        finally:
            await app.state.engine.dispose()


async def timed(request: Any) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    async with asyncio.timeout(ANSWER_WITHIN + 30):
        response = await request
    return time.monotonic() - started, response


def assert_503(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) > 0
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"] == "dependency-unavailable"


def signup_body(prefix: str) -> dict[str, str]:
    return {"email": unique_email(prefix), "password": PASSWORD, "display_name": prefix}


async def test_a_backend_terminated_mid_request_is_a_503_then_the_service_recovers(
    settings: Settings, db: asyncpg.Connection
) -> None:
    async with api(create_app(settings)) as client:
        assert (await client.post("/api/v1/users", json=signup_body("warm"))).status_code == 201
        body = signup_body("terminated")
        assert settings.database_url is not None
        blocker = await asyncpg.connect(asyncpg_dsn(settings.database_url))
        try:
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")  # sign-ups wait here
                request = asyncio.create_task(client.post("/api/v1/users", json=body))
                backend = await _waiting_backend(db)
                assert await db.fetchval("SELECT pg_terminate_backend($1)", backend)
                seconds, response = await timed(request)
        finally:
            await blocker.close()
        assert_503(response)  # SQLSTATE 57P01, admin_shutdown
        assert seconds < ANSWER_WITHIN
        assert await db.fetchval("SELECT count(*) FROM users WHERE email = $1", body["email"]) == 0
        assert (await client.post("/api/v1/users", json=body)).status_code == 201


async def _waiting_backend(db: asyncpg.Connection) -> int:
    async with asyncio.timeout(10):
        while True:
            pid = await db.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
                " AND query ILIKE 'INSERT INTO users%' LIMIT 1"
            )
            if pid is not None:
                return int(pid)
            await asyncio.sleep(0.02)


# --- a server that refuses connections: starting up, in crash recovery ------------------------------------


async def _starting_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer like PostgreSQL in crash recovery: FATAL 57P03 to every startup."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while True:
            length = struct.unpack("!I", await reader.readexactly(4))[0]
            code = struct.unpack("!I", await reader.readexactly(4))[0]
            await reader.readexactly(length - 8)
            if code == 80877103:  # SSLRequest: no TLS here
                writer.write(b"N")
                continue
            fields = b"SFATAL\0VFATAL\0C57P03\0Mthe database system is starting up\0\0"
            writer.write(b"E" + struct.pack("!I", len(fields) + 4) + fields)
            await writer.drain()
            break
    writer.close()


async def test_a_database_in_crash_recovery_is_a_503(settings: Settings) -> None:
    server = await asyncio.start_server(_starting_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    recovering = dataclasses.replace(settings, database_url=f"postgresql://corpora@127.0.0.1:{port}/corpora")
    try:
        async with api(create_app(recovering)) as client:
            seconds, response = await timed(client.post("/api/v1/users", json=signup_body("recovery")))
            assert_503(response)  # asyncpg's CannotConnectNowError, wrapped by SQLAlchemy
            assert seconds < ANSWER_WITHIN
            seconds, ready = await timed(client.get("/readyz"))
            assert ready.status_code == 503
            assert seconds < 2
    finally:
        server.close()


# --- an API-key lookup with the database down is counted as the 503 it answers ----------------------------


@pytest.fixture
def db_proxy(settings: Settings) -> Iterator[TcpProxy]:
    assert settings.database_url is not None
    proxy = TcpProxy(postgres_upstream(settings.database_url)).start()
    yield proxy
    proxy.close()


def _count(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


async def test_a_database_outage_during_api_key_lookup_is_counted_as_503(
    settings: Settings, db_proxy: TcpProxy
) -> None:
    assert settings.database_url is not None
    proxied = dataclasses.replace(settings, database_url=proxied_database_url(settings.database_url, db_proxy))
    async with api(create_app(proxied)) as client:
        account = await sign_up(client)  # type: ignore[arg-type]  # the test client's interface
        org = await make_org(client, account)  # type: ignore[arg-type]
        expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
        key = await client.post(
            "/api/v1/api-keys",
            json={"name": "k", "org": org, "scopes": ["catalog:read"], "expires_at": expires},
            headers=account.headers,
        )
        assert key.status_code == 201, key.text
        headers = {"Authorization": f"Bearer {key.json()['key']}"}
        route = {"method": "GET", "path": "/api/v1/me"}
        before = (await client.get("/metrics", headers=METRICS_HEADERS)).text
        db_proxy.stop()
        seconds, response = await timed(client.get("/api/v1/me", headers=headers))
        assert_503(response)
        assert seconds < ANSWER_WITHIN
        after = (await client.get("/metrics", headers=METRICS_HEADERS)).text
        counted = "corpora_http_requests_total"
        assert (
            _count(after, counted, status_code="503", **route)
            == _count(before, counted, status_code="503", **route) + 1
        )
        assert _count(after, counted, status_code="500", **route) == _count(before, counted, status_code="500", **route)
        errors = "corpora_http_server_errors_total"
        assert _count(after, errors, **route) == _count(before, errors, **route) + 1  # a 503 is still a 5xx
        db_proxy.start()
        assert (await client.get("/api/v1/me", headers=headers)).status_code == 200


# --- PostgreSQL stopped (SIGSTOP): connections accepted, nothing answered ----------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[EmbeddedPostgres, str]]:
    """A PostgreSQL of this test's own, which it may stop (never the shared one)."""
    server = await asyncio.to_thread(run_postgres, tmp_path_factory.mktemp("stopped-pg"))
    try:
        await asyncio.to_thread(create_database, server.url("postgres"), "corpora")
        url = server.url("corpora")
        await asyncio.to_thread(upgrade, url)
        yield server, url
    finally:
        _signal_tree(server, signal.SIGCONT)
        server.stop()


def _signal_tree(server: EmbeddedPostgres, sig: int) -> None:
    assert server.process is not None
    for pid in [server.process.pid, *descendants(server.process.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


async def test_a_stopped_database_is_a_503_within_seconds_and_readyz_within_two(
    settings: Settings, own_postgres: tuple[EmbeddedPostgres, str]
) -> None:
    server, url = own_postgres
    async with api(create_app(dataclasses.replace(settings, database_url=url))) as client:
        account = await sign_up(client)  # type: ignore[arg-type]
        assert (await client.get("/api/v1/me", headers=account.headers)).status_code == 200  # a pooled connection
        _signal_tree(server, signal.SIGSTOP)
        try:
            for request in (
                client.get("/api/v1/me", headers=account.headers),
                client.post("/api/v1/users", json=signup_body("stopped")),
            ):
                seconds, response = await timed(request)
                assert_503(response)
                assert seconds < ANSWER_WITHIN
            seconds, ready = await timed(client.get("/readyz"))
            assert ready.status_code == 503
            assert ready.json()["checks"]["database"].startswith("unavailable")
            assert seconds < 2
        finally:
            _signal_tree(server, signal.SIGCONT)
        deadline = time.monotonic() + 30
        while (me := await client.get("/api/v1/me", headers=account.headers)).status_code != 200:
            assert time.monotonic() < deadline, me.text
            await asyncio.sleep(0.5)


# --- the object store stalled: an upload completion gives up in seconds ------------------------------------


async def test_a_stalled_object_store_is_a_503_within_seconds(settings: Settings, tmp_path: Path) -> None:
    assert settings.s3_endpoint is not None
    proxy = TcpProxy(http_upstream(settings.s3_endpoint)).start()
    try:
        stalled = dataclasses.replace(settings, s3_endpoint=proxied_endpoint(settings.s3_endpoint, proxy))
        async with api(create_app(stalled)) as client:
            owner = await sign_up(client)  # type: ignore[arg-type]
            org = await make_org(client, owner)  # type: ignore[arg-type]
            slug = await make_product(client, owner, org)  # type: ignore[arg-type]
            await make_version(client, owner, slug)  # type: ignore[arg-type]
            content = b"stalled store\n" * 100
            planned = await client.post(
                f"/api/v1/products/{slug}/versions/1.0.0/files",
                json={
                    "path": "a.txt",
                    "size": len(content),
                    "sha256": hashlib.sha256(content).hexdigest(),
                    "media_type": "text/plain",
                },
                headers=owner.headers,
            )
            assert planned.status_code == 201, planned.text
            plan = planned.json()
            async with httpx.AsyncClient() as s3:
                put = await s3.put(plan["upload"]["url"], content=content, headers=plan["upload"]["headers"])
                assert put.status_code == 200, put.text
            proxy.blackhole()
            seconds, response = await timed(
                client.post(
                    f"/api/v1/products/{slug}/versions/1.0.0/files/{plan['file_id']}/complete",
                    json={},
                    headers=owner.headers,
                )
            )
            assert response.status_code == 503, response.text
            assert int(response.headers["retry-after"]) > 0
            assert seconds < ANSWER_WITHIN
            seconds, ready = await timed(client.get("/readyz"))
            assert ready.status_code == 503
            assert seconds < 2
            proxy.start()
            done = await client.post(
                f"/api/v1/products/{slug}/versions/1.0.0/files/{plan['file_id']}/complete",
                json={},
                headers=owner.headers,
            )
            assert done.status_code == 200, done.text
    finally:
        proxy.close()


async def test_a_stalled_object_store_fails_a_batch_completion_with_a_503_within_seconds(settings: Settings) -> None:
    """A batch completion asks the store for each direct upload's recorded checksum (HEADs on the event loop):
    a store that accepts connections and never answers must not hold the request past the deadlines."""
    assert settings.s3_endpoint is not None
    proxy = TcpProxy(http_upstream(settings.s3_endpoint)).start()
    try:
        stalled = dataclasses.replace(settings, s3_endpoint=proxied_endpoint(settings.s3_endpoint, proxy))
        await ObjectStore(settings).ensure_bucket()  # versioned, so that uploads go to the content key directly
        # Planned and uploaded with the store in reach; completed through a path to it that goes silent.
        async with api(create_app(settings)) as direct:
            owner = await sign_up(direct)  # type: ignore[arg-type]
            org = await make_org(direct, owner)  # type: ignore[arg-type]
            slug = await make_product(direct, owner, org)  # type: ignore[arg-type]
            await make_version(direct, owner, slug)  # type: ignore[arg-type]
            content = os.urandom(2000)
            spec = {"path": "a.bin", "size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
            uploads = f"/api/v1/products/{slug}/versions/1.0.0/uploads"
            planned = await direct.post(uploads, json={"files": [spec]}, headers=owner.headers)
            assert planned.status_code == 200, planned.text
            (item,) = planned.json()["items"]
            assert item["upload"]["kind"] == "direct"
            async with httpx.AsyncClient() as s3:
                put = await s3.put(item["upload"]["url"], content=content, headers=item["upload"]["headers"])
                assert put.status_code == 200, put.text
        done = {"files": [{"file_id": item["file_id"], "version_id": put.headers["x-amz-version-id"]}]}
        async with api(create_app(stalled)) as client:
            proxy.blackhole()
            seconds, response = await timed(client.post(f"{uploads}/complete", json=done, headers=owner.headers))
            assert response.status_code == 503, response.text
            assert int(response.headers["retry-after"]) > 0
            assert seconds < ANSWER_WITHIN
            proxy.start()
            completed = await client.post(f"{uploads}/complete", json=done, headers=owner.headers)
            assert completed.status_code == 200, completed.text
            assert [i["status"] for i in completed.json()["items"]] == ["verified"]
    finally:
        proxy.close()


async def test_a_proxied_stream_has_its_own_longer_idle_deadline(settings: Settings) -> None:
    """The store must start answering within CORPORA_S3_TIMEOUT_SECONDS; an open stream then waits
    CORPORA_S3_STREAM_TIMEOUT_SECONDS for each next piece."""
    store = ObjectStore(dataclasses.replace(settings, s3_timeout_seconds=2, s3_stream_timeout_seconds=42))
    await store.ensure_bucket()
    key = f"tests/stream-{time.monotonic_ns()}"
    await store.put_bytes(key, b"x" * 1000)
    reader = await store.open_range(key, 0, 1000)
    try:
        sock = getattr(reader._response.connection, "sock", None)
        assert sock is not None
        assert sock.gettimeout() == 42
        assert await reader.read(1000) == b"x" * 1000
    finally:
        reader.close()
    assert store.client._http.connection_pool_kw["timeout"].read_timeout == 2
