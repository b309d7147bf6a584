"""Shared fixtures: a real PostgreSQL and a real S3 server for the whole run, a fresh database and bucket.

With ``CORPORA_DATABASE_URL`` / ``CORPORA_S3_ENDPOINT`` set, those servers are used (a new database
and a new bucket are created on them); otherwise the embedded ones are started in a temporary dir.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.engine import make_url

from app.embedded import EmbeddedSeaweed, start_postgres, start_seaweedfs
from app.main import create_app
from app.migrate import upgrade
from app.settings import Settings

PASSWORD = "correct horse battery staple"


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def create_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``server_url``; return its URL."""
    connection = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


@dataclasses.dataclass(frozen=True)
class Servers:
    database_url: str  # a fresh, migrated database for this run
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    s3_bucket: str
    data_dir: Path


@pytest.fixture(scope="session")
def servers_dir() -> Path:
    # Not pytest's tmp_path: it prunes old numbered dirs, which would pull the data from under a server
    # that another test run (in parallel) still uses. Removed at exit, after the embedded servers stop.
    path = Path(tempfile.mkdtemp(prefix="corpora-test-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@pytest.fixture(scope="session")
def seaweed(servers_dir: Path) -> Iterator[EmbeddedSeaweed | None]:
    if os.environ.get("CORPORA_S3_ENDPOINT"):
        yield None
        return
    server = start_seaweedfs(servers_dir, "corpora-test", "corpora-test-secret")
    yield server
    server.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def servers(servers_dir: Path, seaweed: EmbeddedSeaweed | None) -> Servers:
    server_url = os.environ.get("CORPORA_DATABASE_URL") or start_postgres(servers_dir)
    database_url = await create_database(server_url, f"corpora_test_{secrets.token_hex(4)}")
    await asyncio.to_thread(upgrade, database_url)
    if seaweed is not None:
        endpoint, access, secret = seaweed.endpoint, "corpora-test", "corpora-test-secret"
    else:
        endpoint = os.environ["CORPORA_S3_ENDPOINT"]
        access = os.environ.get("CORPORA_S3_ACCESS_KEY", "")
        secret = os.environ.get("CORPORA_S3_SECRET_KEY", "")
    return Servers(
        database_url=database_url,
        s3_endpoint=endpoint,
        s3_access_key=access,
        s3_secret_key=secret,
        s3_bucket=f"corpora-test-{secrets.token_hex(4)}",
        data_dir=servers_dir,
    )


@pytest.fixture(scope="session")
def settings(servers: Servers) -> Settings:
    return Settings(
        database_url=servers.database_url,
        s3_endpoint=servers.s3_endpoint,
        s3_access_key=servers.s3_access_key,
        s3_secret_key=servers.s3_secret_key,
        s3_bucket=servers.s3_bucket,
        data_dir=servers.data_dir,
        login_max_failures=5,
        login_window_seconds=60,
        # Every test signs up from the test client's one address.
        signup_max_per_address=1_000_000,
        max_body_bytes=64 * 1024,
    )


@pytest.fixture(scope="session")
def app(settings: Settings) -> Litestar:
    return create_app(settings)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=app, base_url="http://testserver.local") as test_client:
        yield test_client


@pytest_asyncio.fixture(loop_scope="session")
async def db(servers: Servers) -> AsyncIterator[asyncpg.Connection]:
    """A direct superuser connection to the test database, for arranging and inspecting state."""
    connection = await asyncpg.connect(asyncpg_dsn(servers.database_url))
    yield connection
    await connection.close()


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


def unique_slug(prefix: str = "org") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclasses.dataclass
class Account:
    id: str
    email: str
    token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def sign_up(client: AsyncTestClient[Any], email: str | None = None) -> Account:
    email = email or unique_email()
    created = await client.post(
        "/api/v1/users", json={"email": email, "password": PASSWORD, "display_name": email.split("@")[0]}
    )
    assert created.status_code == 201, created.text
    token = await client.post(
        "/api/v1/auth/token", json={"grant_type": "password", "username": email, "password": PASSWORD}
    )
    assert token.status_code == 200, token.text
    body = token.json()
    return Account(created.json()["id"], email, body["access_token"], body["refresh_token"])


async def make_org(client: AsyncTestClient[Any], owner: Account, kind: str = "both") -> str:
    slug = unique_slug()
    response = await client.post(
        "/api/v1/orgs", json={"slug": slug, "name": f"Org {slug}", "kind": kind}, headers=owner.headers
    )
    assert response.status_code == 201, response.text
    return slug


async def grant_platform_role(
    client: AsyncTestClient[Any], db: asyncpg.Connection, account: Account, role: str
) -> Account:
    """Grant a platform role directly in the database and sign in again so the token carries it."""
    await db.execute("INSERT INTO platform_role_grants (user_id, role) VALUES ($1, $2)", uuid.UUID(account.id), role)
    token = await client.post(
        "/api/v1/auth/token", json={"grant_type": "password", "username": account.email, "password": PASSWORD}
    )
    assert token.status_code == 200, token.text
    body = token.json()
    return dataclasses.replace(account, token=body["access_token"], refresh_token=body["refresh_token"])
