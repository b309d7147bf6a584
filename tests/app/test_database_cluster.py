"""A database of more than one node: a multi-host URL reaches the writable node, and catalogue search reads a
streaming replica while it is within its staleness bound (and the primary once it is not)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from app.db import create_engine, libpq_url
from app.embedded import free_port_pairs
from app.main import create_app
from app.migrate import upgrade
from app.replica import ReadRouting
from app.settings import Settings
from tests.catalog.helpers import make_product
from tests.conftest import Servers, make_org, sign_up
from tests.pg_replica import Node, primary_and_replica

WAIT_SECONDS = 60  # a generous ceiling for a busy machine; the bound itself is the app's, not the test's


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Node, Node]]:
    root = Path(tempfile.mkdtemp(prefix="corpora-cluster-"))
    root.chmod(0o755)  # the server user enters it
    try:
        with primary_and_replica(root) as nodes:
            yield nodes
    finally:
        shutil.rmtree(root, ignore_errors=True)


def multi_host_url(*ports: int, database: str = "postgres", attrs: str = "read-write") -> str:
    hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
    return f"postgresql://postgres@{hosts}/{database}?target_session_attrs={attrs}"


async def test_a_multi_host_url_reaches_the_writable_node_with_every_driver(cluster: tuple[Node, Node]) -> None:
    primary, replica = cluster
    (nobody,) = free_port_pairs(1)  # a node that is down: skipped
    url = multi_host_url(replica.port, nobody, primary.port)
    which = "SELECT inet_server_port(), pg_is_in_recovery()"

    engine = create_engine(url, pool_size=1)  # requests (SQLAlchemy over asyncpg)
    try:
        async with engine.connect() as connection:
            assert tuple((await connection.execute(text(which))).one()) == (primary.port, False)
    finally:
        await engine.dispose()
    listener = await asyncpg.connect(libpq_url(url))  # the /me cache's listener
    try:
        assert tuple(await listener.fetchrow(which)) == (primary.port, False)
    finally:
        await listener.close()
    with psycopg.connect(libpq_url(url)) as jobs:  # the job workers (procrastinate over psycopg)
        assert jobs.execute(which).fetchone() == (primary.port, False)

    # Without the attribute the first node that answers is taken, replica or not: the attribute is what matters.
    anywhere = create_engine(multi_host_url(replica.port, primary.port, attrs="any"), pool_size=1)
    try:
        async with anywhere.connect() as connection:
            assert tuple((await connection.execute(text(which))).one()) == (replica.port, True)
    finally:
        await anywhere.dispose()


async def _search(client: AsyncTestClient[Any], headers: dict[str, str], org: str) -> set[str]:
    response = await client.get("/api/v1/products", params={"org": org}, headers=headers)
    assert response.status_code == 200, response.text
    return {item["slug"] for item in response.json()["items"]}


async def _until(predicate_coro: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(WAIT_SECONDS * 10):
        if await predicate_coro():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {WAIT_SECONDS}s: {what}")


async def test_catalogue_search_reads_the_replica_within_its_staleness_bound(
    cluster: tuple[Node, Node], servers: Servers, servers_dir: Path
) -> None:
    primary, replica = cluster
    admin = await asyncpg.connect(libpq_url(primary.url("postgres")))
    await admin.execute("CREATE DATABASE corpora_replicated")
    await admin.close()
    await asyncio.to_thread(upgrade, primary.url("corpora_replicated"))
    settings = Settings(
        database_url=multi_host_url(replica.port, primary.port, database="corpora_replicated"),
        database_read_url=replica.url("corpora_replicated"),
        database_read_max_lag_seconds=3,
        s3_endpoint=servers.s3_endpoint,
        s3_access_key=servers.s3_access_key,
        s3_secret_key=servers.s3_secret_key,
        s3_bucket=servers.s3_bucket + "-replica",
        data_dir=servers_dir,
        signup_max_per_address=1_000_000,
    )
    app = create_app(settings)
    routing: ReadRouting = app.state.read_routing
    on_replica = await asyncpg.connect(libpq_url(replica.url("corpora_replicated")))
    try:
        async with AsyncTestClient(app=app, base_url="http://testserver.local") as client:
            await _until(lambda: asyncio.sleep(0, routing.replica_fresh), "the replica counts as fresh")
            owner = await sign_up(client)
            org = await make_org(client, owner)

            # Replicating: the new product is listed, read from the replica (it never fell behind its bound).
            slug = await make_product(client, owner, org)
            fell_behind: list[bool] = []

            async def listed(wanted: str = slug) -> bool:
                fell_behind.append(not routing.replica_fresh)
                return wanted in await _search(client, owner.headers, org)

            await _until(listed, "a product committed on the primary is listed")
            assert not any(fell_behind)
            assert await on_replica.fetchval("SELECT count(*) FROM products WHERE slug = $1", slug) == 1

            # The replica stops replaying: once it is more than the bound behind, search reads the primary.
            await on_replica.execute("SELECT pg_wal_replay_pause()")
            stalled = await make_product(client, owner, org)
            await _until(lambda: listed(stalled), "a product is listed while the replica is stalled")
            assert not routing.replica_fresh
            assert await on_replica.fetchval("SELECT count(*) FROM products WHERE slug = $1", stalled) == 0

            # Replaying again, the replica catches up and serves the reads once more.
            await on_replica.execute("SELECT pg_wal_replay_resume()")
            await _until(lambda: asyncio.sleep(0, routing.replica_fresh), "the replica is fresh again")
            assert {slug, stalled} <= await _search(client, owner.headers, org)
    finally:
        await on_replica.close()


@pytest.mark.parametrize("down", [False, True], ids=["standby-only", "standby-and-a-node-down"])
async def test_no_writable_node_is_a_503_with_retry_after(
    cluster: tuple[Node, Node], servers: Servers, down: bool
) -> None:
    """Mid-failover every node may be read-only or down: the API answers 503 with Retry-After, never 500."""
    _, replica = cluster
    ports = [replica.port, *free_port_pairs(1)] if down else [replica.port]
    settings = Settings(
        database_url=multi_host_url(*ports),
        s3_endpoint=servers.s3_endpoint,
        s3_access_key=servers.s3_access_key,
        s3_secret_key=servers.s3_secret_key,
        s3_bucket=servers.s3_bucket,
        data_dir=servers.data_dir,
    )
    async with AsyncTestClient(app=create_app(settings), base_url="http://testserver.local") as client:
        body = {"grant_type": "password", "username": "someone@example.com", "password": "whatever it is"}
        for response in (await client.post("/api/v1/auth/token", json=body), await client.get("/readyz")):
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"]
